"""bioimage.io export (``diffseg export``): the package passes bioimageio.core's own test, predicts what
``diffseg predict`` predicts, and a package that fails is never left under its final name."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from napari_diffseg.cli import main
from napari_diffseg.core.deployed import normalize_per_image, window_starts, window_weights

pytest.importorskip("bioimageio.core")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project with one co-trained model (seconds) and a val image with ground truth."""
    from napari_diffseg.data.synthetic import make_sample_dataset
    from sample_data import move_to_val

    root = tmp_path_factory.mktemp("export")
    ds = move_to_val(make_sample_dataset(root / "ds", n_train=6, n_test=2, size=(64, 64), seed=5))
    proj = root / "proj"
    assert main(["init", str(proj), "--images", str(ds), "--json"]) == 0
    assert main(["cotrain", str(proj), "--preset", "tiny", "-q", "--json", "--threads", "1"]) == 0
    return proj


@pytest.fixture(scope="module")
def exported(project: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The project's model exported with an image file as its test input (the file `predict` also reads)."""
    out_dir = tmp_path_factory.mktemp("pkg")
    image = out_dir / "probe.png"
    rng = np.random.default_rng(7)
    src = iio.imread(project.parent / "ds" / "images" / "test_000.png")
    # larger than the tiny preset's 64-pixel window: the package must tile as `predict` does
    iio.imwrite(
        image, np.tile(src, (2, 3, 1))[:100, :150] ^ rng.integers(0, 8, (100, 150, 3), dtype=np.uint8)
    )
    pkg = out_dir / "model.zip"
    rc = main(
        ["export", str(project), "--out", str(pkg), "--test-image", str(image), "--author", "Test Author"]
    )
    assert rc == 0 and pkg.is_file()
    return pkg, image


# ------------------------------------------------------------------------------ the network (no bioimageio)


def _random_bundle(k: int = 2, channels: int = 3, method: str = "diffseg"):
    from napari_diffseg.base.presets import get_preset
    from napari_diffseg.core.models import ModelBundle, ModelSpec

    pr = get_preset("tiny")
    spec = ModelSpec(method, channels, k, pr.student_channels, pr.teacher_channels, pr.emb_dim)
    bundle = ModelBundle(spec, seed=3)
    for net in bundle.nets.values():
        net.eval()
    return bundle, {"preset": pr.to_dict()}


@pytest.mark.parametrize(
    ("shape", "k", "method"),
    [
        ((3, 37, 50), 2, "diffseg"),
        ((3, 150, 230), 3, "diffseg"),
        ((1, 20, 300), 2, "supervised"),
        ((3, 1, 1), 2, "cps"),
    ],
)
def test_deployed_network_is_predict(shape, k, method) -> None:
    """The exported network (normalisation, padding, windows, mean softmax) equals `predict_image`."""
    from napari_diffseg.export.bioimageio import deployed_network
    from napari_diffseg.predict import predict_image

    bundle, config = _random_bundle(k, shape[0], method)
    img = (np.random.default_rng(1).random(shape) * 4000).astype(np.uint16)
    img[0, :3, :3] = 65535  # outliers the percentile clip must remove
    ref = predict_image(bundle, config, img)
    net = deployed_network(bundle, config)
    with torch.no_grad():
        probs, labels = net(torch.from_numpy(img[None].astype(np.float32)))
    assert probs.shape == (1, k, *shape[1:]) and labels.shape == (1, 1, *shape[1:])
    np.testing.assert_allclose(probs[0].numpy(), ref, atol=1e-6)
    assert (labels[0, 0].numpy() == ref.argmax(0)).mean() > 0.999


def test_normalisation_and_window_grid_match_the_package() -> None:
    from monai.data.utils import dense_patch_slices

    from napari_diffseg.base.preprocessing import normalize_image
    from napari_diffseg.core.inference import window_weights as inference_weights

    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 30.0, (2, 3, 41, 57)).astype(np.float32)
    x[1, 2] = 7.0  # a constant channel → zeros
    got = normalize_per_image(torch.from_numpy(x)).numpy()
    for b in range(2):
        np.testing.assert_allclose(got[b], normalize_image(x[b]), atol=2e-6)
    assert not got[1, 2].any()
    for roi in (64, 256):
        assert torch.equal(window_weights(roi, 0.25), inference_weights(roi, 0.25))
    for size in (64, 65, 100, 300, 1000):
        monai = sorted({s[0].start for s in dense_patch_slices((size, 64), (64, 64), (48, 48))})
        assert window_starts(size, 64, 0.25) == monai


def test_deployed_network_scripts() -> None:
    bundle, config = _random_bundle()
    from napari_diffseg.export.bioimageio import _quiet_torchscript, deployed_network

    net = deployed_network(bundle, config)
    with _quiet_torchscript():
        scripted = torch.jit.script(net)
    x = torch.rand(2, 3, 70, 90) * 255
    with torch.no_grad():
        a, b = net(x), scripted(x)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.equal(a[1], b[1])


# ------------------------------------------------------------------------------ the package


@pytest.mark.slow
def test_package_passes_bioimageio_core_and_matches_predict(exported, project: Path, tmp_path: Path) -> None:
    from bioimageio.core import load_model_description, test_model

    from napari_diffseg.export.bioimageio import package_prediction

    pkg, image = exported
    summary = test_model(pkg, devices=["cpu"])
    assert summary.status == "passed", summary.display() or summary
    descr = load_model_description(str(pkg))
    assert descr.format_version.startswith("0.5")
    assert {w for w, e in descr.weights if e is not None} == {"torchscript", "pytorch_state_dict"}
    assert [t.id for t in descr.outputs] == ["probabilities", "labels"]
    assert descr.authors[0].name == "Test Author" and str(descr.license) == "CC-BY-4.0"

    # `diffseg predict` on the same file, against bioimageio.core running the package
    assert (
        main(["predict", str(project), str(image), "--out", str(tmp_path / "pred"), "--probabilities"]) == 0
    )
    fg = tifffile.imread(tmp_path / "pred" / "probe.png.prob.tif")
    mask = tifffile.imread(tmp_path / "pred" / "probe.png.tif")
    raw = np.moveaxis(iio.imread(image), -1, 0)
    for wf in ("torchscript", "pytorch_state_dict"):
        got = package_prediction(pkg, raw, wf)
        assert got["probabilities"].shape == (2, 100, 150)
        np.testing.assert_allclose(got["probabilities"][1], np.squeeze(fg), atol=1e-5)
        assert (got["labels"] == (mask > 0)).mean() > 0.999

    with zipfile.ZipFile(pkg) as zf:
        names = set(zf.namelist())
        readme = zf.read("README.md").decode()
    assert {"rdf.yaml", "cover.png", "README.md", "deployed.py", "environment.yaml"} <= names
    assert "## Validation" in readme and "arXiv:2504.01547" in readme and "CC-BY-4.0" in readme


@pytest.mark.slow
def test_readme_reports_training_data_and_validation(project: Path, tmp_path: Path) -> None:
    """Exported from the project without --test-image: the test input is the val image, and the README says
    how many images trained the model and the validation Dice with its split."""
    pkg = tmp_path / "m.zip"
    from napari_diffseg.export.bioimageio import export_bioimageio

    report = export_bioimageio(project, pkg, authors=["X Y"])
    assert report.test_status == "passed" and report.max_abs_difference <= 1e-5
    assert "split val" in report.test_image
    readme = zipfile.ZipFile(pkg).read("README.md").decode()
    metrics = json.loads((project / "models" / report.model_id / "metrics.json").read_text())
    assert f"{metrics['val_dice']:.3f}" in readme and "`val` split" in readme
    assert "trained on 5 training images: 5 with labels (5 ground truth)" in readme


@pytest.mark.slow
def test_multiclass_model_exports(tmp_path: Path) -> None:
    from napari_diffseg.core.models import save_bundle
    from napari_diffseg.export.bioimageio import export_bioimageio, package_prediction
    from napari_diffseg.predict import load_model, predict_image

    bundle, config = _random_bundle(k=3, channels=1)
    model = save_bundle(
        bundle, tmp_path / "m3", extra={**config, "class_names": ["bg", "nucleus", "membrane"]}
    )
    img = (np.random.default_rng(2).random((40, 72)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "grey.png", img)
    report = export_bioimageio(model, tmp_path / "m3.zip", test_image=tmp_path / "grey.png", authors=["Z"])
    assert report.test_status == "passed"
    got = package_prediction(tmp_path / "m3.zip", img[None], "torchscript")
    b2, cfg2 = load_model(model, "cpu")
    np.testing.assert_allclose(got["probabilities"], predict_image(b2, cfg2, img[None]), atol=1e-5)
    from bioimageio.core import load_model_description

    descr = load_model_description(str(tmp_path / "m3.zip"))
    assert [str(c) for c in descr.outputs[0].axes[1].channel_names] == ["bg", "nucleus", "membrane"]


def test_a_model_that_deploys_its_teacher_exports_its_students_and_says_so(tmp_path: Path) -> None:
    """deploy_best: `diffseg predict` samples the teacher, but a bioimage.io package holds one feed-forward
    network: the students, tested against the students' own prediction, with a note in its README and in
    the report."""
    from napari_diffseg.base.presets import get_preset
    from napari_diffseg.core.models import save_bundle
    from napari_diffseg.core.training import teacher_check_config
    from napari_diffseg.export.bioimageio import export_bioimageio, package_prediction
    from napari_diffseg.predict import load_model, predict_image

    bundle, config = _random_bundle(k=2, channels=1)
    bundle.teacher_sampler = teacher_check_config(get_preset("tiny"))
    model = save_bundle(bundle, tmp_path / "mt", extra=config)
    img = (np.random.default_rng(4).random((40, 72)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "grey.png", img)
    report = export_bioimageio(model, tmp_path / "mt.zip", test_image=tmp_path / "grey.png", authors=["Z"])
    assert report.test_status == "passed"
    assert any("the package holds the students" in d for d in report.details)
    got = package_prediction(tmp_path / "mt.zip", img[None], "torchscript")
    b2, cfg2 = load_model(model, "cpu")
    assert b2.deploys_teacher  # the model folder is left as it was
    b2.teacher_sampler = None
    np.testing.assert_allclose(got["probabilities"], predict_image(b2, cfg2, img[None]), atol=1e-5)
    with zipfile.ZipFile(tmp_path / "mt.zip") as zf:
        assert "Not what napari-diffseg predicts with" in zf.read("README.md").decode()


def test_two_channel_fluorescence_model_exports(tmp_path: Path) -> None:
    """A model of a 2-channel project: the package's input has 2 named channels and reproduces predict."""
    from napari_diffseg.core.models import save_bundle
    from napari_diffseg.export.bioimageio import export_bioimageio, package_prediction
    from napari_diffseg.predict import load_model, predict_image

    bundle, config = _random_bundle(k=2, channels=2)
    model = save_bundle(bundle, tmp_path / "m2c", extra=config)
    img = (np.random.default_rng(3).random((2, 48, 56)) * 4000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "two.tif", img, metadata={"axes": "CYX"}, imagej=True)
    report = export_bioimageio(model, tmp_path / "m2c.zip", test_image=tmp_path / "two.tif", authors=["Z"])
    assert report.test_status == "passed"
    got = package_prediction(tmp_path / "m2c.zip", img, "torchscript")
    b2, cfg2 = load_model(model, "cpu")
    np.testing.assert_allclose(got["probabilities"], predict_image(b2, cfg2, img), atol=1e-5)
    from bioimageio.core import load_model_description

    descr = load_model_description(str(tmp_path / "m2c.zip"))
    assert [str(c) for c in descr.inputs[0].axes[1].channel_names] == ["channel_0", "channel_1"]


# ------------------------------------------------------------------------------ bad input


@pytest.mark.slow
def test_failing_package_is_never_written(project: Path, tmp_path: Path, monkeypatch) -> None:
    """If the package does not reproduce `predict` (here: test outputs that are off), bioimageio.core's test
    fails, nothing appears under the final name, an older file there is untouched, and no partial file stays."""
    import napari_diffseg.predict as predict_mod
    from napari_diffseg.export.bioimageio import ExportError, export_bioimageio

    real = predict_mod.predict_image

    def off(bundle, config, image):
        p = real(bundle, config, image)
        return np.roll(p, 5, axis=-1)

    monkeypatch.setattr(predict_mod, "predict_image", off)
    out = tmp_path / "pkg.zip"
    with pytest.raises(ExportError, match=r"failed bioimageio\.core's test"):
        export_bioimageio(project, out, authors=["A"])
    assert not out.exists()
    out.write_bytes(b"an older package")
    with pytest.raises(ExportError):
        export_bioimageio(project, out, authors=["A"], overwrite=True)
    assert out.read_bytes() == b"an older package"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg.zip"]


def test_export_refuses_what_it_cannot_reproduce(tmp_path: Path, capsys) -> None:
    from napari_diffseg.core.models import save_bundle

    bundle, config = _random_bundle()
    iio.imwrite(tmp_path / "x.png", np.zeros((16, 16, 3), np.uint8))
    inst = save_bundle(bundle, tmp_path / "inst", extra={**config, "task": "instances"})
    rc, _, err = _run(
        capsys, "export", str(inst), "--out", str(tmp_path / "a.zip"), "--test-image", str(tmp_path / "x.png")
    )
    # an "instance" model whose head is not the 3-class target
    assert rc == 2 and "an instance model has at least 3 classes" in err and err.count("\n") == 1
    other = save_bundle(bundle, tmp_path / "other", extra={**config, "task": "tracking"})
    rc, _, err = _run(
        capsys,
        "export",
        str(other),
        "--out",
        str(tmp_path / "b.zip"),
        "--test-image",
        str(tmp_path / "x.png"),
    )
    assert rc == 2 and "'tracking'" in err and err.count("\n") == 1
    norm = save_bundle(bundle, tmp_path / "norm", extra={**config, "normalization": {"mode": "dataset"}})
    rc, _, err = _run(
        capsys, "export", str(norm), "--out", str(tmp_path / "b.zip"), "--test-image", str(tmp_path / "x.png")
    )
    assert rc == 2 and "normalisation" in err
    rc, _, err = _run(capsys, "export", str(norm), "--out", str(tmp_path / "c.zip"))
    assert rc == 2 and "--test-image" in err
    rc, _, err = _run(
        capsys, "export", str(norm), "--out", str(tmp_path / "c.tar"), "--test-image", str(tmp_path / "x.png")
    )
    assert rc == 2 and ".zip" in err
    rc, _, err = _run(capsys, "export", str(norm), "--out", str(tmp_path / "c.zip"), "--format", "onnx")
    assert rc == 2 and "bioimageio" in err
    assert not any(p.suffix in (".zip", ".partial") for p in tmp_path.iterdir())
    shutil.rmtree(tmp_path / "inst")


def test_instance_model_exports_with_its_post_processing(tmp_path: Path) -> None:
    """An instance model (3 classes) passes bioimage.io's test; its README and config give the watershed
    that makes objects of the outputs, and following it reproduces `probs_to_instances`."""
    from napari_diffseg.core.instances import probs_to_instances
    from napari_diffseg.data.synthetic import make_sample_dataset
    from napari_diffseg.experiment import run_experiment
    from napari_diffseg.export.bioimageio import export_bioimageio, package_prediction

    ds = make_sample_dataset(
        tmp_path / "ds", n_train=6, n_test=2, size=(64, 64), kind="nuclei", seed=1, instances=True
    )
    model = tmp_path / "model"
    run_experiment(
        ds,
        labeled_fraction=0.5,
        method="diffseg",
        preset="tiny",
        seed=0,
        device="cpu",
        task="instances",
        model_out=model,
    )
    pkg = tmp_path / "inst.zip"
    report = export_bioimageio(model, pkg, test_image=ds / "images" / "test_000.png", authors=["A B"])
    assert report.test_status == "passed"
    with zipfile.ZipFile(pkg) as zf:
        readme = zf.read("README.md").decode()
        rdf = zf.read("rdf.yaml").decode()
    assert "From the outputs to objects" in readme and "skimage.segmentation.watershed" in readme
    assert "interior" in rdf and "instance_postprocessing" in rdf and "seeded watershed" in rdf

    raw = np.moveaxis(iio.imread(ds / "images" / "test_000.png"), -1, 0)
    got = package_prediction(pkg, raw, "torchscript")
    assert got["probabilities"].shape == (3, 64, 64)
    ids = probs_to_instances(got["probabilities"])
    assert ids.dtype == np.uint16 and ids.shape == (64, 64)


def test_a_model_of_several_object_classes_exports_with_its_class_step(tmp_path: Path) -> None:
    """An instance model of two object classes (4 outputs) passes bioimage.io's test; its channels are named
    per class, and its README and config give the class step after the watershed."""
    from napari_diffseg.core.instances import classify_objects, probs_to_instances
    from napari_diffseg.data.synthetic import make_sample_dataset
    from napari_diffseg.experiment import run_experiment
    from napari_diffseg.export.bioimageio import export_bioimageio, package_prediction

    ds = make_sample_dataset(tmp_path / "ds", n_train=4, n_test=1, size=(64, 64), seed=1, object_classes=2)
    model = tmp_path / "model"
    run_experiment(
        ds,
        labeled_fraction=1.0,
        method="supervised",
        preset="tiny",
        seed=0,
        device="cpu",
        task="instances",
        classes="background,disc,rod",
        model_out=model,
    )
    pkg = tmp_path / "classed.zip"
    test_image = next((ds / "images").glob("test_*"))
    report = export_bioimageio(model, pkg, test_image=test_image, authors=["A B"])
    assert report.test_status == "passed"
    with zipfile.ZipFile(pkg) as zf:
        readme = zf.read("README.md").decode()
        config = json.loads(zf.read("napari_diffseg_config.json"))
        rdf = zf.read("rdf.yaml").decode()
    assert "channel 1 is the interior of disc, 3 is the interior of rod" in readme
    assert "classify_objects" in readme and "classify_objects" in rdf
    assert config["task"] == "instances"
    raw = np.moveaxis(iio.imread(test_image), -1, 0)
    got = package_prediction(pkg, raw, "torchscript")
    assert got["probabilities"].shape == (4, 64, 64)
    ids = probs_to_instances(got["probabilities"])
    assert set(classify_objects(ids, got["probabilities"]).values()) <= {1, 2}
