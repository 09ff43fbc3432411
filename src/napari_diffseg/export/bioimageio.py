"""Export a model as a bioimage.io model package (``diffseg export --format bioimageio``).

What the package holds (model description format 0.5, built with ``bioimageio.spec.model.v0_5``):

* **weights**: the deployed students as one network, :class:`~napari_diffseg.core.deployed.DeployedStudents`,
  twice: TorchScript (for deepImageJ / Fiji, QuPath, bioimageio.core without our code) and a PyTorch state
  dict whose architecture is the self-contained source file ``deployed.py`` (torch + MONAI only). The network
  does exactly what ``diffseg predict`` does: per-image normalisation, padding, sliding windows at the
  preset's window size, the mean softmax of the students.
* **input** ``raw``: ``(batch, channel, y, x)`` raw intensities, any size; the only preprocessing in the
  description is a cast to float32. The per-image normalisation (clip to the 0.5 / 99.5 percentiles,
  standardise the clipped values) cannot be written with the spec's operators: ``bioimageio.core`` computes
  every sample statistic on the unprocessed input, so a ``zero_mean_unit_variance`` after a percentile
  ``clip`` would use the unclipped mean and standard deviation. It is therefore part of the network.
* **outputs** ``probabilities`` ``(batch, channel=K, y, x)`` float32 and ``labels`` ``(batch, channel=1, y,
  x)`` uint8 (their argmax; what ``diffseg predict`` writes as the mask).
* **test tensors**: an image of the project (or ``--test-image``) and the outputs ``diffseg predict``
  computes for it, so the package's own test checks that the exported network reproduces ``predict``.
* a 2:1 **cover**, a **README.md** (training data, labels used, metrics with their validation split,
  limitations, licence, how to cite the method), ``environment.yaml`` for the state-dict weights, and the
  model's ``config.json`` / ``metrics.json`` as attachments.

The zip is written under a temporary name beside ``out``, validated (``bioimageio.spec``), tested
(``bioimageio.core.test_model``: reproduction of the test outputs with every weight format, and inference
at several sizes and batch sizes), and its prediction on the test input is compared with ``diffseg
predict`` once more at a tight tolerance; only then is it renamed to ``out``. A package that fails any of
this is deleted and never appears under the final name (an older file there is left untouched).

Tasks: binary and multi-class models export as above (K channels, class names from the model's config when
it has them). Instance models do not exist yet (issue 13); how they will be carried is in
:data:`INSTANCE_POSTPROCESSING_PLAN`, and a model whose config names another task is refused.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import __version__
from ..base.errors import ConfigError, DataError, DiffsegError

__all__ = [
    "INSTANCE_POSTPROCESSING_PLAN",
    "ExportError",
    "ExportReport",
    "deployed_network",
    "export_bioimageio",
    "package_prediction",
]

METHOD_DOI = "10.48550/arXiv.2504.01547"
METHOD_CITATION = (
    "Ciampi, L., Lagani, G., Amato, G. and Falchi, F. (2025). Semi-Supervised Biomedical Image Segmentation "
    "via Diffusion Models and Teacher-Student Co-Training. arXiv:2504.01547."
)
_WeightFormat = Literal["pytorch_state_dict", "torchscript"]
MAX_TEST_SIDE = 512
"""Test images larger than this are centre-cropped (keeps the package small and its test fast)."""
PROBABILITY_TOLERANCE = 1e-5
"""Largest absolute difference between the package's prediction and ``diffseg predict`` that is accepted."""

INSTANCE_POSTPROCESSING_PLAN = """\
Instance models (issue 13, not built yet) will be exported like semantic ones — the network's outputs
(foreground / boundary or distance maps) as the package's tensors, exactly as `diffseg predict` computes
them — plus the instance post-processing carried in the description: as a spec operator where one exists
for it (`stardist_postprocessing`, `cellpose_flow_dynamics`), otherwise as a `custom` postprocessing step
(source file + callable + kwargs, e.g. a seeded watershed with its thresholds) on an extra `instances`
output of dtype uint32, and always restated in config.napari_diffseg.instance_postprocessing (name and
parameters) and in the README. Until then a model whose config names any task but `binary` or
`multiclass` is refused."""


class ExportError(DiffsegError):
    """A package could not be built, or it failed validation or its test (nothing was written)."""


@dataclass
class ExportReport:
    """What :func:`export_bioimageio` wrote and checked."""

    path: Path
    name: str
    model_id: str
    weight_formats: list[_WeightFormat]
    test_status: str
    max_abs_difference: float
    test_image: str
    size_bytes: int
    details: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


# ------------------------------------------------------------------------------------------- the network


def deployed_network(bundle: Any, config: dict) -> Any:
    """A model bundle's deployed networks as one :class:`DeployedStudents`, weights loaded, in eval mode
    (on the CPU). Tiling (window side and batch) follows ``diffseg predict``: the preset in ``config``."""
    import torch

    from ..core.deployed import DeployedStudents
    from ..predict import _roi

    spec = bundle.spec
    roi, sw_batch = _roi(config)
    net = DeployedStudents(
        spec.in_channels,
        spec.num_classes,
        list(spec.student_channels),
        n_students=len(bundle.deploy),
        multiple=spec.multiple,
        roi=roi,
        sw_batch=sw_batch,
    )
    state = {
        f"students.{i}.{key}": value.detach().to("cpu", torch.float32)
        for i, name in enumerate(bundle.deploy)
        for key, value in bundle.nets[name].state_dict().items()
    }
    net.load_state_dict(state, strict=True)
    return net.eval()


# ----------------------------------------------------------------------------------------- what to export


@dataclass
class _Source:
    model_dir: Path
    model_id: str
    config: dict
    metrics: dict
    project: Path | None
    project_name: str | None
    training: dict[str, Any]
    val_split: dict[str, Any]
    test_image: np.ndarray
    test_image_name: str


def _task(config: dict, num_classes: int) -> str:
    task = config.get("task") or ("binary" if num_classes == 2 else "multiclass")
    if task not in ("binary", "multiclass"):
        raise ConfigError(
            f"the model's task is {task!r}; only binary and multi-class models can be exported yet "
            "(instance models: see napari_diffseg.export.bioimageio.INSTANCE_POSTPROCESSING_PLAN)"
        )
    return str(task)


def _check_normalization(config: dict) -> None:
    """The exported network normalises each image as ``diffseg predict`` does today; a model whose config
    asks for another normalisation must not be exported with it."""
    norm = config.get("normalization", config.get("normalisation"))
    if norm in (None, "per_image") or (isinstance(norm, dict) and norm.get("mode") == "per_image"):
        return
    raise ConfigError(
        f"the model's config.json names the normalisation {norm!r}, which this export does not know how to "
        "reproduce; update napari_diffseg.export.bioimageio (and core/deployed.py) before exporting it"
    )


def _class_names(config: dict, k: int) -> list[str]:
    names = config.get("class_names")
    if isinstance(names, list) and len(names) == k and all(isinstance(n, str) and n for n in names):
        return [str(n) for n in names]
    return ["background", "foreground"] if k == 2 else ["background", *(f"class_{i}" for i in range(1, k))]


def _crop(image: np.ndarray) -> np.ndarray:
    _, h, w = image.shape
    top, left = max(0, (h - MAX_TEST_SIDE) // 2), max(0, (w - MAX_TEST_SIDE) // 2)
    return image[:, top : top + MAX_TEST_SIDE, left : left + MAX_TEST_SIDE]


def _training_from_job(project: Any, model_id: str) -> dict[str, Any] | None:
    """The training images and annotations of a co-training model, from its job's data manifest."""
    m = re.fullmatch(r"round\d+-job(\d+)", model_id)
    if m is None:
        return None
    manifest = project.job_dir(int(m.group(1))) / "data.json"
    if not manifest.is_file():
        return None
    entries = json.loads(manifest.read_text())["images"]
    kinds: dict[str, int] = {}
    for image_id, version in entries:
        if version is None:
            continue
        ann = project.annotation(str(image_id), int(version))
        kind = getattr(ann, "kind", "annotation") if ann is not None else "annotation"
        kinds[kind] = kinds.get(kind, 0) + 1
    labeled = sum(kinds.values())
    return {
        "train_images": len(entries),
        "labeled": labeled,
        "unlabeled": len(entries) - labeled,
        "labels_by_kind": kinds,
        "from": f"jobs/{m.group(1)}/data.json",
    }


def _collect(source: Path, model_id: str | None, test_image: Path | None, device: str) -> tuple[_Source, Any]:
    from ..core.models import load_bundle
    from ..data.io import read_image_raw
    from ..project import Project

    project_root: Path | None = None
    project_name = None
    training: dict[str, Any] = {}
    val_split: dict[str, Any] = {}
    image: np.ndarray | None = None
    image_name = ""
    if (source / "project.db").exists():
        project_root = source
        with Project.open(source) as proj:
            rec = proj.model(model_id) if model_id else proj.active_model()
            if rec is None:
                raise ConfigError(
                    f"project {source} has no model yet; run `diffseg pretrain` and `diffseg cotrain` first"
                )
            model_id = rec.id
            model_dir = proj.model_dir(rec.id)
            project_name = source.resolve().name
            training = _training_from_job(proj, rec.id) or {}
            records = [r for r in proj.images() if r.state != "excluded"]
            vals = [r for r in records if r.split == "val" and proj.annotation(r.id) is not None]
            val_split = {"images": len(vals), "split": "val"}
            splits: dict[str, int] = {}
            for r in records:
                splits[r.split] = splits.get(r.split, 0) + 1
            training["images_by_split"] = splits
            if test_image is None:
                pick = vals[0] if vals else next((r for r in records if r.split == "train"), None)
                pick = pick or (records[0] if records else None)
                if pick is None:
                    raise DataError(
                        f"project {source} has no images to take a test input from; pass --test-image"
                    )
                image, image_name = (
                    proj.load_image(pick.id),
                    f"{pick.name} (split {pick.split}, id {pick.id})",
                )
    else:
        if model_id is not None:
            raise ConfigError("--model picks a model of a project; give a project folder, or drop --model")
        model_dir = source
        model_id = source.resolve().name
        if not (model_dir / "config.json").is_file():
            raise ConfigError(f"{source} is neither a project nor a model folder (no config.json)")
        if test_image is None:
            raise DataError(
                f"{source} is a model folder without a project: pass --test-image FILE (an image like those "
                "the model was trained on) for the package's test input"
            )
    if test_image is not None:
        image, image_name = read_image_raw(test_image), Path(test_image).name
    assert image is not None
    from ..core.device import choose_device

    bundle, config, metrics = load_bundle(model_dir, choose_device(device))
    if not training and isinstance(metrics, dict):
        training = {k: metrics[k] for k in ("labeled", "unlabeled") if k in metrics}
    if "labeled_ids" in config:
        training["labeled_ids"] = list(config["labeled_ids"])
    src = _Source(
        model_dir=model_dir,
        model_id=str(model_id),
        config=config,
        metrics=dict(metrics or {}),
        project=project_root,
        project_name=project_name,
        training=training,
        val_split=val_split,
        test_image=_crop(np.asarray(image)),
        test_image_name=image_name,
    )
    return src, bundle


# ------------------------------------------------------------------------------------------- package files


def _display_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) raw → (H, W, 3) uint8 stretched to its 1 / 99 percentiles."""
    x = image.astype(np.float32)
    x = np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x[:3]
    lo, hi = np.percentile(x, (1, 99))
    x = np.clip((x - lo) / max(float(hi - lo), 1e-6), 0, 1)
    return (np.moveaxis(x, 0, -1) * 255).astype(np.uint8)


def _cover(image: np.ndarray, labels: np.ndarray, k: int, path: Path) -> None:
    """A 2:1 cover: the test image, and the same with its predicted classes tinted."""
    import imageio.v3 as iio
    from skimage.transform import resize

    rgb = _display_rgb(image)
    side = 256
    left = (resize(rgb, (side, side), order=1, preserve_range=True, anti_aliasing=True)).astype(np.uint8)
    lab = resize(labels, (side, side), order=0, preserve_range=True, anti_aliasing=False).astype(np.int64)
    palette = np.array([[0, 0, 0], [255, 200, 0], [0, 200, 255], [255, 0, 160], [80, 255, 80]], np.float32)
    colours = palette[np.where(lab == 0, 0, (lab - 1) % (len(palette) - 1) + 1)]
    tint = np.where((lab > 0)[..., None], 0.55 * left + 0.45 * colours, left).astype(np.uint8)
    iio.imwrite(path, np.concatenate([left, tint], axis=1))


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _readme(src: _Source, bundle: Any, names: list[str], task: str, roi: int, name: str, license: str) -> str:
    spec = bundle.spec
    k = spec.num_classes
    tr = src.training
    lines = [
        f"# {name}",
        "",
        f"A {task} segmentation model (K = {k} classes: {', '.join(names)}) trained with "
        f"napari-diffseg {__version__} (the method of arXiv:2504.01547 with a human in the loop): a diffusion-model teacher proposes "
        "masks with a per-pixel uncertainty, an annotator corrects the most uncertain ones, and twin student "
        "networks are co-trained on the corrections, the unlabeled images and the teacher's pseudo-labels. "
        "This package holds the **deployed students**: the mean softmax of "
        f"{len(bundle.deploy)} MONAI UNet(s) (channels {list(spec.student_channels)}, instance norm), as "
        "`diffseg predict` runs them.",
        "",
        "## Inputs and outputs",
        "",
        f"* **input `raw`**: `(batch, channel, y, x)`, {spec.in_channels} channel(s) "
        f"({'RGB' if spec.in_channels == 3 else 'grey'}), raw intensities of any dtype and any size. Convert "
        "grey to RGB (or RGB to grey) first if the channel count differs.",
        "* **normalisation is inside the network**: per image and per channel, clip to the 0.5 / 99.5 "
        "percentiles, then subtract the mean and divide by the standard deviation (floored at 1e-6) of the "
        "clipped values. Give the network **whole images**: a tile would be normalised on its own and can "
        "differ from the whole-image result (the spec's operators cannot express this normalisation, "
        "because bioimage.io computes every statistic on the unprocessed input).",
        f"* **large images are tiled inside the network**: images larger than {roi} × {roi} pixels are "
        f"predicted on overlapping {roi}-pixel windows (25 % overlap, smooth blending), the window size the "
        "model was trained for.",
        f"* **output `probabilities`**: `(batch, channel={k}, y, x)` float32, the mean softmax of the students "
        "(channels in the class order above).",
        "* **output `labels`**: `(batch, 1, y, x)` uint8, the argmax of the probabilities: the mask `diffseg "
        "predict` writes.",
        "",
        "## Training data",
        "",
    ]
    if src.project_name is not None:
        lines.append(f"* project `{src.project_name}`, model `{src.model_id}`")
    if "train_images" in tr:
        kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(tr["labels_by_kind"].items()))
        lines.append(
            f"* trained on {tr['train_images']} training images: {tr['labeled']} with labels ({kinds or 'none'}) "
            f"and {tr['unlabeled']} unlabeled (read from the project's `{tr['from']}`)"
        )
    elif "labeled" in tr:
        lines.append(f"* {tr['labeled']} labeled and {tr.get('unlabeled', '?')} unlabeled training images")
    if "labeled_ids" in tr:
        ids = tr["labeled_ids"]
        lines.append(
            f"* labeled image ids ({len(ids)}): {', '.join(map(str, ids[:20]))}{' …' if len(ids) > 20 else ''}"
        )
    if "images_by_split" in tr:
        split_text = ", ".join(f"{n} {s}" for s, n in sorted(tr["images_by_split"].items()))
        lines.append(f"* images in the project at export time, by split: {split_text}")
    preset = src.config.get("preset", {})
    if isinstance(preset, dict) and preset:
        lines.append(
            f"* preset `{preset.get('name', '?')}` (patch {preset.get('patch_size', '?')}, batch "
            f"{preset.get('batch_size', '?')}, {preset.get('cotrain_steps', '?')} co-training steps per round)"
        )
    weight = preset.get("correction_weight") if isinstance(preset, dict) else None
    lines += [
        "* labels: ground truth imported with the images, and corrections an annotator made to the teacher's "
        "proposals in napari"
        + (
            f" (a correction is drawn {weight:g}× as often as ground truth in the labeled batches)"
            if weight
            else ""
        ),
        "",
        "## Validation",
        "",
    ]
    m = src.metrics
    if "val_dice" in m:
        lines.append(
            f"Validation Dice {_fmt(m['val_dice'])}, IoU {_fmt(m.get('val_iou', '?'))} on {m.get('val_n', '?')} "
            "annotated images of the project's `val` split (never trained on), measured when the model was "
            "saved, with the same students and tiling as this package."
        )
    elif "dice_mean" in m:
        lines.append(
            f"Test Dice {_fmt(m['dice_mean'])} ± {_fmt(m.get('dice_std', '?'))}, IoU {_fmt(m.get('iou_mean', '?'))} "
            f"on {m.get('n', '?')} held-out test images (`diffseg experiment`; test images were never trained "
            "or selected on)."
        )
    else:
        lines.append(
            "No validation figures were recorded with this model (the project had no annotated `val` images "
            "when it was trained). Validate it on annotated images it has not seen: `diffseg evaluate MODEL "
            "DATASET --split val`, or compare its `labels` with your ground truth (Dice / IoU)."
        )
    lines += [
        "",
        f"The package's test input is {src.test_image_name}; its test outputs were computed by `diffseg "
        "predict`, and the package was tested with `bioimageio.core.test_model` before it was written.",
        "",
        "## Limitations",
        "",
        "* Trained on few labels from one project: expect it to work on images like those, not on other "
        "stains, modalities or magnifications. Check its output before using it for measurements.",
        "* 2D images only; the channel count must match.",
        "",
        "## How to use it",
        "",
        "* Python (`pip install bioimageio.core torch`): `bioimageio.core.predict(model='PACKAGE.zip', "
        "inputs=image[None])` with `image` as `(C, Y, X)`; the result's members `probabilities` and `labels`.",
        "* Command line: `bioimageio test PACKAGE.zip` reruns the package's own test.",
        "* napari-diffseg: `diffseg predict` on the original model folder gives the same result.",
        "* Tools that import bioimage.io model packages (deepImageJ in Fiji, QuPath, ilastik, BiaPy) read "
        "format 0.5 descriptions with TorchScript or PyTorch weights; this package was tested with "
        "bioimageio.core only. Tools that tile large images themselves normalise each tile on its own.",
        "",
        "## Licence and citation",
        "",
        f"The weights are licensed under {license} (chosen when the package was exported).",
        "",
        "Cite the method: " + METHOD_CITATION + f" https://doi.org/{METHOD_DOI}",
        "",
    ]
    return "\n".join(lines)


def _environment(path: Path) -> None:
    import monai
    import torch

    torch_v = torch.__version__.split("+")[0]
    path.write_text(
        "name: napari-diffseg-students\n"
        "channels:\n  - conda-forge\n  - nodefaults\n"
        "dependencies:\n"
        "  - python>=3.10\n"
        f"  - pytorch>={'.'.join(torch_v.split('.')[:2])}\n"
        f"  - monai>={'.'.join(monai.__version__.split('.')[:2])}\n"
        "  - numpy\n"
    )


def _safe_name(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", text).strip()
    cleaned = re.sub(r"-{2,}", "-", cleaned)
    return (cleaned or "napari-diffseg model")[:64].rstrip()


# ----------------------------------------------------------------------------------------------- build


@contextlib.contextmanager
def _quiet_torchscript() -> Iterator[None]:
    # torch >= 2.9 marks TorchScript deprecated; it is still the format deepImageJ and QuPath load.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit.*")
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
        yield


def _descr(
    src: _Source,
    bundle: Any,
    work: Path,
    *,
    name: str,
    description: str | None,
    authors: Sequence[str],
    license: str,
) -> Any:
    import torch
    from bioimageio.spec.model import v0_5 as spec

    from ..core import deployed as deployed_module

    cfg = src.config
    k = bundle.spec.num_classes
    task = _task(cfg, k)
    _check_normalization(cfg)
    names = _class_names(cfg, k)
    net = deployed_network(bundle, cfg)
    roi = net.roi

    # the test tensors: the image, and what `diffseg predict` makes of it
    from ..predict import predict_image

    image = src.test_image.astype(np.float32)
    probs = predict_image(bundle, cfg, src.test_image).astype(np.float32)
    labels = probs.argmax(0).astype(np.uint8)
    np.save(work / "test_input.npy", image[None])
    np.save(work / "test_output_probabilities.npy", probs[None])
    np.save(work / "test_output_labels.npy", labels[None, None])

    # weights
    with _quiet_torchscript():
        scripted = torch.jit.script(net)
        torch.jit.save(scripted, str(work / "weights_torchscript.pt"))
    torch.save(net.state_dict(), work / "weights.pt")
    shutil.copyfile(inspect.getsourcefile(deployed_module) or "", work / "deployed.py")
    _environment(work / "environment.yaml")
    _cover(src.test_image, labels, k, work / "cover.png")
    (work / "README.md").write_text(_readme(src, bundle, names, task, roi, name, license))
    (work / "napari_diffseg_config.json").write_text(json.dumps(cfg, indent=2))
    (work / "napari_diffseg_metrics.json").write_text(json.dumps(src.metrics, indent=2))

    kwargs = {
        "in_channels": bundle.spec.in_channels,
        "num_classes": k,
        "channels": list(bundle.spec.student_channels),
        "n_students": len(bundle.deploy),
        "multiple": bundle.spec.multiple,
        "roi": roi,
        "sw_batch": net.sw_batch,
        "overlap": net.overlap,
    }
    torch_version = spec.Version(torch.__version__.split("+")[0])
    size = spec.ParameterizedSize(min=1, step=1)
    channel_names = ["grey"] if bundle.spec.in_channels == 1 else ["red", "green", "blue"]
    inp = spec.InputTensorDescr(
        id=spec.TensorId("raw"),
        description="raw image; normalised inside the network (see README)",
        axes=[
            spec.BatchAxis(),
            spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in channel_names]),
            spec.SpaceInputAxis(id=spec.AxisId("y"), size=size),
            spec.SpaceInputAxis(id=spec.AxisId("x"), size=size),
        ],
        test_tensor=spec.FileDescr(source=work / "test_input.npy"),
        data=spec.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))],
    )

    def same_size(axis: str) -> Any:
        return spec.SpaceOutputAxis(
            id=spec.AxisId(axis),
            size=spec.SizeReference(tensor_id=spec.TensorId("raw"), axis_id=spec.AxisId(axis)),
        )

    out_probs = spec.OutputTensorDescr(
        id=spec.TensorId("probabilities"),
        description="mean softmax of the students, one channel per class",
        axes=[
            spec.BatchAxis(),
            spec.ChannelAxis(channel_names=[spec.Identifier(re.sub(r"\W", "_", n)) for n in names]),
            same_size("y"),
            same_size("x"),
        ],
        test_tensor=spec.FileDescr(source=work / "test_output_probabilities.npy"),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    out_labels = spec.OutputTensorDescr(
        id=spec.TensorId("labels"),
        description="argmax of the probabilities (0 = background)",
        axes=[
            spec.BatchAxis(),
            spec.ChannelAxis(channel_names=[spec.Identifier("labels")]),
            same_size("y"),
            same_size("x"),
        ],
        test_tensor=spec.FileDescr(source=work / "test_output_labels.npy"),
        data=spec.NominalOrOrdinalDataDescr(values=list(range(k)), type="uint8"),
        postprocessing=[spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="uint8"))],
    )
    state_dict = spec.PytorchStateDictWeightsDescr(
        source=work / "weights.pt",
        architecture=spec.ArchitectureFromFileDescr(
            source=work / "deployed.py", callable=spec.Identifier("DeployedStudents"), kwargs=kwargs
        ),
        pytorch_version=torch_version,
        dependencies=spec.FileDescr(source=work / "environment.yaml"),
    )
    torchscript = spec.TorchscriptWeightsDescr(
        source=work / "weights_torchscript.pt", pytorch_version=torch_version, parent="pytorch_state_dict"
    )
    m = src.metrics
    summary = None
    if "val_dice" in m:
        summary = f"validation Dice {_fmt(m['val_dice'])} on {m.get('val_n', '?')} val images of the project"
    elif "dice_mean" in m:
        summary = f"test Dice {_fmt(m['dice_mean'])} on {m.get('n', '?')} held-out test images"
    napari_diffseg = {
        "version": __version__,
        "model_id": src.model_id,
        "method": bundle.spec.method,
        "deploy": list(bundle.deploy),
        "task": task,
        "class_names": names,
        "normalization": {"mode": "per_image", "percentiles": [0.5, 99.5], "std_floor": 1e-6},
        "tiling": {"roi": roi, "overlap": net.overlap, "sw_batch": net.sw_batch},
        "instance_postprocessing": None,
        "validation": summary,
    }
    extra: dict[str, Any] = {"napari_diffseg": napari_diffseg}  # our own section of `config`
    tolerance = [
        spec.ReproducibilityTolerance(
            relative_tolerance=1e-4,
            absolute_tolerance=PROBABILITY_TOLERANCE,
            mismatched_elements_per_million=0,
            output_ids=[spec.TensorId("probabilities")],
        ),
        spec.ReproducibilityTolerance(
            relative_tolerance=0.0,
            absolute_tolerance=0.0,
            mismatched_elements_per_million=1000,
            output_ids=[spec.TensorId("labels")],
        ),
    ]
    preset = cfg.get("preset", {}) if isinstance(cfg.get("preset"), dict) else {}
    return spec.ModelDescr(
        name=name,
        description=description
        or (
            f"{task.capitalize()} segmentation ({k} classes) of 2D {'RGB' if bundle.spec.in_channels == 3 else 'grey'} "
            "images by the twin students of a napari-diffseg model (diffusion teacher, few labels, human in the "
            "loop). Normalisation and tiling are inside the network: give it whole raw images."
        )[:512],
        authors=[spec.Author(name=a) for a in authors],
        cite=[spec.CiteEntry(text=METHOD_CITATION, doi=spec.Doi(METHOD_DOI))],
        license=spec.LicenseId(license),
        documentation=spec.FileDescr(source=work / "README.md"),
        covers=[spec.FileDescr(source=work / "cover.png")],
        tags=[
            "segmentation",
            "2d",
            "pytorch",
            "unet",
            "semi-supervised",
            "diffusion",
            "napari-diffseg",
            task,
        ],
        attachments=[
            spec.FileDescr(source=work / "napari_diffseg_config.json"),
            spec.FileDescr(source=work / "napari_diffseg_metrics.json"),
        ],
        inputs=[inp],
        outputs=[out_probs, out_labels],
        weights=spec.WeightsDescr(pytorch_state_dict=state_dict, torchscript=torchscript),
        config=spec.Config(
            bioimageio=spec.BioimageioConfig(
                reproducibility_tolerance=tolerance,
                architecture_type="UNet",
                architecture_description="mean softmax of twin MONAI UNets (residual units, instance norm), "
                "per-image normalisation and sliding windows inside the network",
                task="semantic segmentation",
                training=spec.TrainingDetails(
                    training_preprocessing="per image and channel: clip to the 0.5 / 99.5 percentiles, standardise",
                    training_batch_size=float(preset["batch_size"]) if "batch_size" in preset else None,
                    initial_learning_rate=float(preset["lr"]) if "lr" in preset else None,
                    optimizer="AdamW",
                ),
                model_parameter_count=int(sum(p.numel() for p in net.parameters())),
            ),
            **extra,
        ),
    )


# ------------------------------------------------------------------------------------------------ check


def package_prediction(
    package: str | os.PathLike[str],
    image: np.ndarray,
    weight_format: _WeightFormat | None = None,
) -> dict[str, np.ndarray]:
    """Run a bioimage.io package on one raw ``(C, H, W)`` image with ``bioimageio.core``; returns
    ``{"probabilities": (K, H, W), "labels": (H, W)}``."""
    from bioimageio.core import create_prediction_pipeline, load_model_description
    from bioimageio.core.digest_spec import create_sample_for_model

    descr = load_model_description(str(package), perform_io_checks=False)
    sample = create_sample_for_model(descr, inputs={"raw": image[None].astype(np.float32)}, sample_id="check")
    with (
        _quiet_torchscript(),
        create_prediction_pipeline(
            descr,
            weight_format=weight_format,
            devices=["cpu"],
        ) as pipeline,
    ):
        out = pipeline.predict_sample_without_blocking(sample)
    probs = np.asarray(out.members["probabilities"].data)[0]
    labels = np.asarray(out.members["labels"].data)[0, 0]
    return {"probabilities": probs, "labels": labels}


def _failures(summary: Any) -> list[str]:
    out = []
    for d in summary.details:
        if d.status != "passed":
            msgs = [f"{e.loc}: {e.msg}" for e in d.errors] or [d.name]
            out.append(f"{d.name}: " + "; ".join(msgs))
    return out


def _check(
    tmp_zip: Path, image: np.ndarray, expected: np.ndarray, formats: Sequence[_WeightFormat]
) -> tuple[str, float, list[str]]:
    from bioimageio.core import test_model

    with _quiet_torchscript():
        summary = test_model(tmp_zip, devices=["cpu"])
    if summary.status != "passed":
        problems = _failures(summary)
        raise ExportError(
            "the package failed bioimageio.core's test, so it was not written: " + " | ".join(problems[:5])
        )
    worst = 0.0
    for wf in formats:
        got = package_prediction(tmp_zip, image, wf)
        if got["probabilities"].shape != expected.shape:
            raise ExportError(
                f"the package ({wf}) predicts shape {got['probabilities'].shape}, `diffseg predict` "
                f"{expected.shape}; it was not written"
            )
        diff = float(np.abs(got["probabilities"] - expected).max())
        worst = max(worst, diff)
        if diff > PROBABILITY_TOLERANCE:
            raise ExportError(
                f"the package's {wf} prediction differs from `diffseg predict` by up to {diff:.2e} "
                f"(> {PROBABILITY_TOLERANCE:g}); it was not written"
            )
    notes = [f"{d.name}: {d.status}" for d in summary.details]
    return str(summary.status), worst, notes


def export_bioimageio(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model_id: str | None = None,
    test_image: str | os.PathLike[str] | None = None,
    authors: Sequence[str] = (),
    license: str = "CC-BY-4.0",
    name: str | None = None,
    description: str | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Build, validate and test a bioimage.io model package; write it to ``out`` only if all passes.

    Args:
        source: A model folder, or a project folder (its active model, or ``model_id``).
        out: The ``.zip`` to write.
        model_id: A project's model to export instead of the active one.
        test_image: An image file for the test input (default: a `val` image of the project, else a
            `train` one; required for a bare model folder).
        authors: Names of the people who made the model (default: the current user).
        license: SPDX licence id of the package (default CC-BY-4.0).
        name: The package's name (default: derived from the project and the model id).
        description: One paragraph (default: a generated one).
        overwrite: Replace an existing ``out`` (only after the new package passed).

    Raises:
        ConfigError / DataError: Bad arguments, an unknown model, a task or normalisation the export cannot
            reproduce. ExportError: the package failed validation, its test or the comparison with
            ``diffseg predict`` (nothing is left at ``out``).
    """
    try:
        import bioimageio.core
        import bioimageio.spec  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "exporting to bioimage.io needs bioimageio.core and bioimageio.spec: "
            'pip install "napari-diffseg[export]"'
        ) from exc
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise ConfigError(f"{out}: a bioimage.io package is a .zip file; give --out NAME.zip")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another name or pass --overwrite")
    if not out.parent.is_dir():
        raise ConfigError(f"folder {out.parent} does not exist")
    src, bundle = _collect(Path(source), model_id, Path(test_image) if test_image else None, "cpu")
    if not authors:
        import getpass

        authors = [getpass.getuser() or "napari-diffseg user"]
    label = f"{src.project_name} {src.model_id}" if src.project_name else src.model_id
    pkg_name = _safe_name(name or f"napari-diffseg {label}")
    formats: list[_WeightFormat] = ["pytorch_state_dict", "torchscript"]
    tmp_zip = out.parent / f".{out.name}.{os.getpid()}.partial"
    work = Path(tempfile.mkdtemp(prefix="diffseg-export-"))
    try:
        from bioimageio.spec import ValidationContext, save_bioimageio_package

        with ValidationContext(perform_io_checks=True), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                descr = _descr(
                    src,
                    bundle,
                    work,
                    name=pkg_name,
                    description=description,
                    authors=authors,
                    license=license,
                )
            except ValueError as exc:  # pydantic's ValidationError
                raise ExportError(f"the package description is not valid bioimage.io: {exc}") from exc
            save_bioimageio_package(descr, output_path=tmp_zip)
        expected = np.load(work / "test_output_probabilities.npy")[0]
        image = np.load(work / "test_input.npy")[0]
        status, worst, notes = _check(tmp_zip, image, expected, formats)
        with zipfile.ZipFile(tmp_zip) as zf:
            bad = zf.testzip()
        if bad is not None:
            raise ExportError(f"the zip is corrupt ({bad}); it was not written")
        os.replace(tmp_zip, out)
    finally:
        tmp_zip.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return ExportReport(
        path=out,
        name=pkg_name,
        model_id=src.model_id,
        weight_formats=formats,
        test_status=status,
        max_abs_difference=worst,
        test_image=src.test_image_name,
        size_bytes=out.stat().st_size,
        details=[*notes, f"exported {date.today().isoformat()}"],
    )
