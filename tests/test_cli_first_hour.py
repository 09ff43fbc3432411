"""Issue 17, "the first hour", on the command line: readable usage lines, errors before torch loads,
advice that works, a warning for an odd import, the cost of a job before it runs, and a warning when a
label-free model segments."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from napari_diffseg.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter (nothing imported yet) and return its stdout."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("init", "Usage: diffseg init [OPTIONS] PROJECT\n"),
        ("import", "Usage: diffseg import [OPTIONS] PROJECT PATHS...\n"),
        ("correct", "Usage: diffseg correct [OPTIONS] PROJECT IMAGE MASK_FILE\n"),
        ("predict", "Usage: diffseg predict [OPTIONS] MODEL IMAGES...\n"),
        ("demo", "Usage: diffseg demo [OPTIONS]\n"),
    ],
)
def test_usage_lines_name_arguments_in_capitals(capsys, command: str, usage: str) -> None:
    rc, out, _err = _run(capsys, command, "--help")
    assert rc == 0 and out.startswith(usage), out
    assert "{" not in out.split("\n", 1)[0] and "<bool>" not in out and "<path>" not in out
    if command == "init":
        assert "--images IMAGES" in out and "--multiclass " in out


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "no-such-model", "x.png", "--out", "o"],
        ["predict", "{project}", "no-such-image.png", "--out", "o"],
        ["evaluate", "{project}", "no-such-dataset"],
        ["pretrain", "no-such-project", "--threads", "1"],
        ["cotrain", "{project}", "--threads", "1"],  # nothing annotated: the pre-flight refuses
        ["propose", "{project}", "--ids", "nosuchimage"],
        ["experiment", "no-such-dataset", "-f", "0.1", "--threads", "1"],
    ],
)
def test_user_errors_come_before_torch_is_imported(tmp_path: Path, argv: list[str]) -> None:
    from napari_diffseg.project import Project

    project = tmp_path / "proj"
    with Project.create(project) as proj:
        proj.import_array(np.zeros((32, 32), np.uint8), "a")
    argv = [a.replace("{project}", str(project)) for a in argv]
    out = _fresh(
        "import sys\n"
        "from napari_diffseg.cli import main\n"
        f"rc = main({argv!r})\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    assert out.split()[-2:] == ["2", "False"], out


def test_advice_for_a_folder_of_images_works_when_followed(capsys, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "my images"
    folder.mkdir()
    for k in range(2):
        iio.imwrite(folder / f"cell{k}.png", np.full((24, 24), 40 * k, np.uint8))
    monkeypatch.chdir(tmp_path)
    rc, _out, err = _run(capsys, "images", str(folder))
    assert rc == 2 and "--images" in err
    suggested = shlex.split(err.split("`")[1])  # diffseg init NEW --images FOLDER, quoted for the shell
    assert suggested[:2] == ["diffseg", "init"] and suggested[3] == "--images"
    rc, _out, err = _run(capsys, "init", str(folder))  # what a person tries first: refused, same advice
    assert rc == 2 and "--images" in err
    rc, out, err = _run(capsys, "init", suggested[2], "--images", str(folder))
    assert rc == 0, err
    rc, out, err = _run(capsys, "images", suggested[2])
    assert rc == 0 and "cell0" in out and "cell1" in out
    assert sorted(p.name for p in folder.iterdir()) == ["cell0.png", "cell1.png"]  # left as it was


def test_an_import_unlike_the_project_is_warned_about(capsys, tmp_path: Path) -> None:
    project = tmp_path / "em"
    assert _run(capsys, "init", str(project))[0] == 0
    grey, rgb, huge = tmp_path / "em0.png", tmp_path / "fundus.png", tmp_path / "slide.png"
    iio.imwrite(grey, np.zeros((64, 64), np.uint8))
    iio.imwrite(rgb, np.zeros((64, 64, 3), np.uint8))
    iio.imwrite(huge, np.zeros((300, 300), np.uint8))
    rc, _out, err = _run(capsys, "import", str(project), str(grey))
    assert rc == 0 and "warning" not in err
    rc, out, err = _run(capsys, "import", str(project), str(rgb), str(huge))
    assert rc == 0 and "2 new image(s)" in out
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, err
    assert "fundus is RGB but the project's 1 image(s) are grey" in warnings[0]
    assert "slide (300×300)" in warnings[1] and "typical size" in warnings[1]


def test_a_job_says_its_cost_and_a_label_free_model_warns_when_it_predicts(capsys, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    assert _run(capsys, "init", str(project))[0] == 0
    image = tmp_path / "a.png"
    iio.imwrite(image, (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    assert _run(capsys, "import", str(project), str(image))[0] == 0
    rc, _out, err = _run(capsys, "pretrain", str(project), "--preset", "tiny", "--threads", "1")
    assert rc == 0, err
    assert "pretrain (preset tiny): about " in err and "for 1 image(s) of 64×64" in err
    rc, out, err = _run(capsys, "predict", str(project), str(image), "--out", str(tmp_path / "masks"), "-q")
    assert rc == 0 and "wrote 1 mask(s)" in out and "0 = background, 1 = foreground" in out
    assert err.startswith("warning: model pretrained-job") and "never seen a label" in err
    # the mask keeps its label values; an overlay beside it shows it to a person
    mask = iio.imread(tmp_path / "masks" / "a.png.tif")
    overlay = iio.imread(tmp_path / "masks" / "a.png.overlay.png")
    assert set(np.unique(mask)) <= {0, 1} and overlay.shape == (64, 64, 3)
    if mask.any():
        assert (overlay[mask > 0][:, 2] >= overlay[mask > 0][:, 0]).all()  # tinted blue
    rc, _out, _err = _run(
        capsys, "predict", str(project), str(image), "--out", str(tmp_path / "m2"), "--no-overlays"
    )
    assert rc == 0 and not (tmp_path / "m2" / "a.png.overlay.png").exists()
