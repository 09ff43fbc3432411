"""``diffseg predict`` over folders (issue 12, item 6): one output per input, never overwriting, a true
count, unreadable files listed with their reason while the rest are predicted, outputs a person can see.

The real case is ``../shared/cases/same_stem/`` (``a.png`` and ``a.tif``: different pictures, same stem;
``broken.tif``: a truncated TIFF); its README's outcome: 2 outputs with different names, 2 done,
``broken.tif`` listed with its reason. Synthetic copies of the same situation run where it is absent.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_diffseg.cli import main
from napari_diffseg.predict import output_names, overlay_rgb

_SHARED = os.environ.get("DIFFSEG_SHARED_DATA")
CASES = (
    Path(_SHARED) if _SHARED else Path(__file__).resolve().parents[2] / "shared" / "data"
).parent / "cases"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny supervised model (its predictions are arbitrary; the files are the subject)."""
    from napari_diffseg.base.preprocessing import Normalization
    from napari_diffseg.base.presets import get_preset
    from napari_diffseg.core.models import ModelBundle, ModelSpec, save_bundle

    pr = get_preset("tiny")
    spec = ModelSpec("supervised", 1, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim)
    bundle = ModelBundle(spec, seed=1, normalization=Normalization((10.0,), (200.0,)))
    return save_bundle(bundle, tmp_path_factory.mktemp("model") / "m", extra={"preset": pr.to_dict()})


@pytest.fixture
def same_stem(tmp_path: Path) -> Path:
    """The shared same_stem case, or a synthetic one like it (a.png, a.tif, broken.tif)."""
    folder = tmp_path / "same_stem"
    if (CASES / "same_stem" / "a.png").is_file():
        shutil.copytree(CASES / "same_stem", folder)
        for f in folder.iterdir():
            f.chmod(0o644)
        return folder
    folder.mkdir()
    rng = np.random.default_rng(0)
    iio.imwrite(folder / "a.png", rng.integers(0, 255, (128, 128), dtype=np.uint8))
    tifffile.imwrite(folder / "a.tif", rng.integers(1000, 50000, (128, 128)).astype(np.uint16))
    tifffile.imwrite(folder / "whole.tif", rng.integers(0, 255, (128, 128)).astype(np.uint8))
    data = (folder / "whole.tif").read_bytes()
    (folder / "broken.tif").write_bytes(data[: len(data) // 2])
    (folder / "whole.tif").unlink()
    return folder


def test_same_stem_folder_two_outputs_two_done_broken_listed(
    capsys, model: Path, same_stem: Path, tmp_path
) -> None:
    out = tmp_path / "out"
    rc, stdout, stderr = _run(capsys, "predict", str(model), str(same_stem), "--out", str(out), "-q")
    assert rc == 1, stderr  # some inputs could not be predicted: nonzero, the others are done
    assert "predicted 2 of 3 image(s)" in stdout and "wrote 2 mask(s)" in stdout
    # the unreadable file is listed at the end, with its reason
    tail = stderr.strip().splitlines()
    assert tail[0] == "could not predict 1 file(s):" and len(tail) == 2
    assert "broken.tif" in tail[1] and "truncated" in tail[1]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a.png.overlay.png", "a.png.tif", "a.tif.overlay.png", "a.tif.tif"]
    png_labels, tif_labels = tifffile.imread(out / "a.png.tif"), tifffile.imread(out / "a.tif.tif")
    assert png_labels.shape == tif_labels.shape == (128, 128) and png_labels.dtype == np.uint8
    assert set(np.unique(png_labels)) <= {0, 1} and set(np.unique(tif_labels)) <= {0, 1}
    # two different pictures gave two different overlays: neither output is the other's
    o_png, o_tif = iio.imread(out / "a.png.overlay.png"), iio.imread(out / "a.tif.overlay.png")
    assert o_png.shape == o_tif.shape == (128, 128, 3) and not np.array_equal(o_png, o_tif)
    assert o_png.max() > 100  # something to look at, not a black 0/1 image


def test_json_report_and_no_overwrite_without_asking(capsys, model: Path, same_stem: Path, tmp_path) -> None:
    out = tmp_path / "out"
    rc, stdout, _ = _run(capsys, "predict", str(model), str(same_stem), "--out", str(out), "-q", "--json")
    assert rc == 1
    report = json.loads(stdout)
    assert (report["inputs"], report["done"], report["failed"]) == (3, 2, 1)
    by_name = {Path(o["source"]).name: o for o in report["outcomes"]}
    assert by_name["broken.tif"]["labels"] is None and "truncated" in by_name["broken.tif"]["error"]
    assert Path(by_name["a.png"]["labels"]).name == "a.png.tif" and by_name["a.png"]["error"] is None
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # a second run into the same folder replaces nothing unless asked: nothing done → exit 2, one line
    rc, _, stderr = _run(capsys, "predict", str(model), str(same_stem), "--out", str(out), "-q")
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: none of the 3 image(s)")
    assert "already exists" in lines[0] and "--overwrite" in lines[0] and "broken.tif" in lines[0]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    rc, stdout, _ = _run(
        capsys, "predict", str(model), str(same_stem), "--out", str(out), "-q", "--overwrite"
    )
    assert rc == 1 and "predicted 2 of 3" in stdout


def test_every_input_predicted_exits_0_and_same_names_from_two_folders_do_not_collide(
    capsys, model: Path, same_stem: Path, tmp_path: Path
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    shutil.copy(same_stem / "a.png", one / "a.png")
    iio.imwrite(two / "a.png", np.flipud(iio.imread(same_stem / "a.png")))
    out = tmp_path / "out"
    rc, stdout, stderr = _run(
        capsys,
        "predict",
        str(model),
        str(one),
        str(two / "a.png"),
        "--out",
        str(out),
        "-q",
        "--probabilities",
    )
    assert rc == 0 and stderr == "" and "predicted 2 of 2 image(s)" in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "a-2.png.overlay.png",
        "a-2.png.prob.tif",
        "a-2.png.tif",
        "a.png.overlay.png",
        "a.png.prob.tif",
        "a.png.tif",
    ]
    assert tifffile.imread(out / "a.png.prob.tif").shape == (1, 128, 128)
    # only the broken file: nothing predicted → exit 2 with one line naming it
    rc, _, stderr = _run(capsys, "predict", str(model), str(same_stem / "broken.tif"), "--out", str(out))
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "broken.tif" in lines[0]


def test_output_names_keep_the_extension_and_are_unique() -> None:
    files = [
        Path("x/a.png"),
        Path("x/a.tif"),
        Path("y/a.png"),
        Path("z/A.PNG"),
        Path("x/a-2.png"),
        Path("b.ome.tif"),
    ]
    assert output_names(files) == ["a.png", "a.tif", "a-2.png", "A-3.PNG", "a-2-2.png", "b.ome.tif"]


def test_overlay_tints_each_class_and_shows_fluorescence_as_grey() -> None:
    img = np.zeros((2, 20, 20), np.float32)
    img[0, :, 10:] = 100.0
    labels = np.zeros((20, 20), np.int64)
    labels[2:8, 2:8], labels[12:18, 12:18] = 1, 2
    rgb = overlay_rgb(img, labels)
    assert rgb.shape == (20, 20, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (0, 0, 0) and rgb[0, 19, 0] == rgb[0, 19, 1] == rgb[0, 19, 2] > 0  # grey
    assert rgb[4, 4, 2] > rgb[4, 4, 0] and rgb[14, 14, 0] > rgb[14, 14, 2]  # class 1 blue, class 2 orange
    # an instance model's ids: touching objects keep a visible border between them
    ids = np.zeros((20, 20), np.uint16)
    ids[5:15, 2:10], ids[5:15, 10:18] = 7, 300
    inst = overlay_rgb(img, ids)
    assert not np.array_equal(inst[10, 9], inst[10, 7]) and not np.array_equal(inst[10, 10], inst[10, 12])
