"""Export a model as a bioimage.io model package (``diffseg export --format bioimageio``).

What the package holds (model description format 0.5, built with ``bioimageio.spec.model.v0_5``):

* **weights**: the deployed students as one network, :class:`~napari_diffseg.core.deployed.DeployedStudents`,
  twice: TorchScript (for deepImageJ / Fiji, QuPath, bioimageio.core without our code) and a PyTorch state
  dict whose architecture is the self-contained source file ``deployed.py`` (torch + MONAI only). The network
  does exactly what ``diffseg predict`` does: normalisation, padding, sliding windows at the
  preset's window size, the mean softmax of the students.
* **input** ``raw``: ``(batch, channel, y, x)`` raw intensities, any size; the only preprocessing in the
  description is a cast to float32. The normalisation is part of the network, as ``diffseg predict`` does
  it: the model's fixed statistics (per channel, ``low → 0``, ``high → 1``, clipped to [-1, 3]; stored in
  ``config.napari_diffseg.normalization`` and passed to the architecture as ``norm_low`` / ``norm_high``),
  or, for a model saved before statistics existed, per image (clip to the 0.5 / 99.5 percentiles,
  standardise the clipped values), which the spec's operators cannot write: ``bioimageio.core`` computes
  every sample statistic on the unprocessed input, so a ``zero_mean_unit_variance`` after a percentile
  ``clip`` would use the unclipped mean and standard deviation.
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
it has them). Instance models (3 classes: background, interior, boundary) export their class probabilities
and labels the same way; the step from them to objects, a seeded watershed, has no operator in the
bioimage.io model format, so it is documented with its parameters in the package's README and in
``config.napari_diffseg.instance_postprocessing`` (:func:`instance_postprocessing`). A model of several object
classes (n + 2 classes) names each interior channel by its class and adds the class step after the watershed.
Any other task is refused.

Why one module of ~580 lines: the package's pieces (test tensors, weights, the rdf, the post-processing
record) are built in one pass over one loaded model and must agree with each other; the human-facing files
and the model's inputs are already in ``_files.py`` and ``_source.py``.
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
from ..base.errors import ConfigError, DiffsegError
from ..base.preprocessing import PER_IMAGE_CONFIG
from ..core.instances import Watershed
from ._files import METHOD_CITATION, METHOD_DOI, cover, environment_file, fmt, readme, safe_name
from ._source import Source, check_normalization, class_names, collect, object_class_names, task_of

__all__ = [
    "ExportError",
    "ExportReport",
    "deployed_network",
    "export_bioimageio",
    "instance_postprocessing",
    "package_prediction",
]

_WeightFormat = Literal["pytorch_state_dict", "torchscript"]
PROBABILITY_TOLERANCE = 1e-5
"""Largest absolute difference between the package's prediction and ``diffseg predict`` that is accepted."""


def input_channel_names(n: int, config: dict[str, Any]) -> list[str]:
    """The input's channel names: the model config's ``channel_names`` when it has ``n`` of them, else grey
    (1), red / green / blue (3) or ``channel_0`` … (any other count of fluorescence channels)."""
    names = config.get("channel_names")
    if isinstance(names, list) and len(names) == n and all(isinstance(c, str) and c for c in names):
        return [re.sub(r"[^A-Za-z0-9_]+", "_", c) or f"channel_{i}" for i, c in enumerate(names)]
    if n == 1:
        return ["grey"]
    if n == 3:
        return ["red", "green", "blue"]
    return [f"channel_{i}" for i in range(n)]


def _kind_of_input(n: int) -> str:
    return {1: "grey", 3: "RGB"}.get(n, f"{n}-channel")


def instance_postprocessing(
    object_classes: Sequence[str] = (), watershed: Watershed | None = None
) -> dict[str, Any]:
    """How an instance model's outputs become objects (``config.napari_diffseg.instance_postprocessing``):
    the seeded watershed of :func:`napari_diffseg.core.instances.probs_to_instances`, with the model's
    parameters (``watershed``, a :class:`~napari_diffseg.core.instances.Watershed`: the defaults when None).
    bioimage.io's model format has no operator for it, so the package carries the 3-class outputs exactly
    as ``diffseg predict`` computes them and documents the step here and in its README."""
    from ..core import instances as inst

    return {
        "name": "seeded watershed",
        "callable": "napari_diffseg.core.instances.probs_to_instances",
        "input": "probabilities (background, interior, boundary)",
        "parameters": (watershed if watershed is not None else Watershed()).to_config(),
        "training_target": {"boundary_width": inst.BOUNDARY_WIDTH},
        "output": "uint16 object ids (uint32 beyond 65,535 objects), 0 = background",
        **(
            {
                "input": "probabilities (background, boundary at channel 2, the interior of object class c at "
                "channel 1 for c = 1 and c + 1 beyond); the watershed runs on the summed interiors",
                "object_classes": {
                    "callable": "napari_diffseg.core.instances.classify_objects",
                    "classes": {str(c): name for c, name in enumerate(object_classes, start=1)},
                    "interior_channels": {
                        str(c): inst.interior_channel(c) for c in range(1, len(object_classes) + 1)
                    },
                    "rule": "each object takes the class whose interior probability, summed over its pixels, "
                    "is largest",
                },
            }
            if len(object_classes) > 1
            else {}
        ),
    }


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
    norm = bundle.normalization
    net = DeployedStudents(
        spec.in_channels,
        spec.num_classes,
        list(spec.student_channels),
        n_students=len(bundle.deploy),
        multiple=spec.multiple,
        roi=roi,
        sw_batch=sw_batch,
        norm_low=None if norm is None else list(norm.low),
        norm_high=None if norm is None else list(norm.high),
    )
    state = {
        f"students.{i}.{key}": value.detach().to("cpu", torch.float32)
        for i, name in enumerate(bundle.deploy)
        for key, value in bundle.nets[name].state_dict().items()
    }
    net.load_state_dict(state, strict=True)
    return net.eval()


# ----------------------------------------------------------------------------------------------- build


@contextlib.contextmanager
def _quiet_torchscript() -> Iterator[None]:
    # torch >= 2.9 marks TorchScript deprecated; it is still the format deepImageJ and QuPath load.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit.*")
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
        yield


def _descr(
    src: Source,
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
    task = task_of(cfg, k)
    check_normalization(cfg)
    norm = bundle.normalization
    names = class_names(cfg, k)
    net = deployed_network(bundle, cfg)
    roi = net.roi

    # the test tensors: the image, and what `diffseg predict` makes of it
    from ..predict import predict_image

    image = src.test_image.astype(np.float32)
    sampler, bundle.teacher_sampler = bundle.teacher_sampler, None  # the package holds the students
    try:
        probs = predict_image(bundle, cfg, src.test_image).astype(np.float32)
    finally:
        bundle.teacher_sampler = sampler
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
    environment_file(work / "environment.yaml")
    cover(src.test_image, labels, k, work / "cover.png")
    (work / "README.md").write_text(readme(src, bundle, names, task, roi, name, license))
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
    if norm is not None:
        kwargs["norm_low"] = list(norm.low)
        kwargs["norm_high"] = list(norm.high)
    torch_version = spec.Version(torch.__version__.split("+")[0])
    size = spec.ParameterizedSize(min=1, step=1)
    channel_names = input_channel_names(bundle.spec.in_channels, cfg)
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
        summary = f"validation Dice {fmt(m['val_dice'])} on {m.get('val_n', '?')} val images of the project"
    elif "dice_mean" in m:
        summary = f"test Dice {fmt(m['dice_mean'])} on {m.get('n', '?')} held-out test images"
    napari_diffseg = {
        "version": __version__,
        "model_id": src.model_id,
        "method": bundle.spec.method,
        "deploy": list(bundle.deploy),
        "task": task,
        "class_names": names,
        "normalization": norm.to_dict() if norm is not None else dict(PER_IMAGE_CONFIG),
        "tiling": {"roi": roi, "overlap": net.overlap, "sw_batch": net.sw_batch},
        "instance_postprocessing": instance_postprocessing(
            object_class_names(cfg, k), Watershed.from_config(cfg)
        )
        if task == "instances"
        else None,
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
            f"{task.capitalize()} segmentation ({k} classes) of 2D {_kind_of_input(bundle.spec.in_channels)} "
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
                f"{'fixed (training-set)' if norm is not None else 'per-image'} normalisation and sliding windows "
                "inside the network",
                task="semantic segmentation",
                training=spec.TrainingDetails(
                    training_preprocessing=_norm_text(norm),
                    training_batch_size=float(preset["batch_size"]) if "batch_size" in preset else None,
                    initial_learning_rate=float(preset["lr"]) if "lr" in preset else None,
                    optimizer="AdamW",
                ),
                model_parameter_count=int(sum(p.numel() for p in net.parameters())),
            ),
            **extra,
        ),
    )


def _norm_text(norm: Any) -> str:
    if norm is None:
        return "per image and channel: clip to the 0.5 / 99.5 percentiles, standardise"
    return (
        f"per channel, fixed: the {norm.percentiles[0]:g} / {norm.percentiles[1]:g} percentiles of the training "
        f"images' pooled pixels (low {[round(v, 4) for v in norm.low]}, high {[round(v, 4) for v in norm.high]}) "
        "map to 0 / 1, clipped to [-1, 3]"
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
    src, bundle = collect(Path(source), model_id, Path(test_image) if test_image else None, "cpu")
    if not authors:
        import getpass

        authors = [getpass.getuser() or "napari-diffseg user"]
    label = f"{src.project_name} {src.model_id}" if src.project_name else src.model_id
    pkg_name = safe_name(name or f"napari-diffseg {label}")
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
        details=[
            *notes,
            *(
                [
                    "the package holds the students: `diffseg predict` samples this model's teacher "
                    "(alone, or averaged with the students: deploy_mean), which scored its validation "
                    "images higher (deploy_best)"
                ]
                if bundle.deploys_teacher
                else []
            ),
            f"exported {date.today().isoformat()}",
        ],
    )
