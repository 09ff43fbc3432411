"""The human-facing files of a bioimage.io package: README.md, the 2:1 cover, environment.yaml, the name."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ._source import Source

__all__ = ["METHOD_CITATION", "METHOD_DOI", "cover", "environment_file", "fmt", "readme", "safe_name"]

METHOD_DOI = "10.48550/arXiv.2504.01547"
METHOD_CITATION = (
    "Ciampi, L., Lagani, G., Amato, G. and Falchi, F. (2025). Semi-Supervised Biomedical Image Segmentation "
    "via Diffusion Models and Teacher-Student Co-Training. arXiv:2504.01547."
)


def _display_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) raw → (H, W, 3) uint8 stretched to its 1 / 99 percentiles: grey repeated, RGB as it is,
    any other channel count as the mean of its channels (each stretched first) in grey."""
    x = image.astype(np.float32)
    if x.shape[0] == 3:
        pass
    elif x.shape[0] == 1:
        x = np.repeat(x, 3, axis=0)
    else:
        lo_c, hi_c = np.percentile(x.reshape(x.shape[0], -1), (1, 99), axis=1)
        x = (x - lo_c[:, None, None]) / np.maximum(hi_c - lo_c, 1e-6)[:, None, None]
        x = np.repeat(x.mean(axis=0, keepdims=True), 3, axis=0)
    lo, hi = np.percentile(x, (1, 99))
    x = np.clip((x - lo) / max(float(hi - lo), 1e-6), 0, 1)
    return (np.moveaxis(x, 0, -1) * 255).astype(np.uint8)


def cover(image: np.ndarray, labels: np.ndarray, k: int, path: Path) -> None:
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


def fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _norm_line(norm: Any) -> str:
    """The README's line on the normalisation inside the network (fixed statistics, or per image)."""
    if norm is not None:
        low = ", ".join(f"{v:.6g}" for v in norm.low)
        high = ", ".join(f"{v:.6g}" for v in norm.high)
        return (
            "* **normalisation is inside the network** and fixed: per channel, the training images' pooled "
            f"{norm.percentiles[0]:g} / {norm.percentiles[1]:g} percentiles (low {low}; high {high}, in the raw "
            "intensities) map to 0 / 1, clipped to [-1, 3]. Every image, tile or whole, dark or bright, is "
            "scaled the same way, so an empty or sparse field stays dark. Give it raw intensities of the same "
            "kind (camera, bit depth, exposure) as the training images."
        )
    return (
        "* **normalisation is inside the network**: per image and per channel, clip to the 0.5 / 99.5 "
        "percentiles, then subtract the mean and divide by the standard deviation (floored at 1e-6) of the "
        "clipped values. Give the network **whole images**: a tile would be normalised on its own and can "
        "differ from the whole-image result (the spec's operators cannot express this normalisation, "
        "because bioimage.io computes every statistic on the unprocessed input)."
    )


def _instance_lines(names: Sequence[str] = (), config: dict | None = None) -> list[str]:
    """The README's section on turning an instance model's outputs into objects (``names``: the channel
    names of a model of several object classes), with the watershed parameters the model keeps in its
    ``config`` (the defaults when it has none)."""
    from ..core import instances as inst

    w = inst.Watershed.from_config(config)
    tuned = w != inst.Watershed()

    interiors = [i for i, n in enumerate(names) if n.startswith("interior of ")]
    classed = len(interiors) > 1
    several = (
        [
            "This model finds objects of several classes: channel "
            + ", ".join(f"{i} is the {names[i]}" for i in interiors)
            + "; P(interior) below is their sum (objects are found whatever their class).",
            "",
        ]
        if classed
        else []
    )
    step6 = (
        [
            "6. each object takes **one class**: the one whose interior probability, summed over the object's "
            "pixels, is largest (`napari_diffseg.core.instances.classify_objects(ids, probabilities[0])`).",
        ]
        if classed
        else []
    )
    return [
        "## From the outputs to objects (instance model)",
        "",
        "The network predicts, per pixel, background / object interior / object boundary (the training target "
        f"marks each object's inner rim, {inst.BOUNDARY_WIDTH} px wide, as boundary). `diffseg predict` turns "
        "the probabilities into objects with a seeded watershed; the bioimage.io format has no operator for "
        "it, so run it after the package (`config.napari_diffseg.instance_postprocessing` holds the same "
        "parameters):",
        "",
        *several,
        f"1. foreground = P(interior) + P(boundary) > {w.threshold:g};",
        "2. seeds = 4-connected pieces of "
        + (
            f"P(interior) smoothed by a Gaussian of σ = {w.seed_sigma:g} px, "
            if w.seed_sigma
            else "P(interior) "
        )
        + f"> {w.seed_threshold:g} inside the foreground, pieces under {w.min_seed_size} px dropped;",
        "3. `skimage.segmentation.watershed(1 - P(interior), markers=seeds, mask=foreground, connectivity=1)`;",
        "4. foreground no seed reached becomes objects of its own (4-connected pieces);",
        f"5. objects under {w.min_size} px are removed and the rest numbered 1…N (uint16; uint32 "
        "beyond 65,535 objects).",
        *step6,
        "",
        *(
            [
                "These parameters were chosen for this model on its validation images (the best mean AP@0.5 "
                "over a small grid), not fixed by hand.",
                "",
            ]
            if tuned
            else []
        ),
        "With napari-diffseg installed: `napari_diffseg.core.instances.probs_to_instances(probabilities[0]"
        + (", Watershed(**parameters))` (`Watershed` from the same module)." if tuned else ")`."),
        "",
    ]


def readme(src: Source, bundle: Any, names: list[str], task: str, roi: int, name: str, license: str) -> str:
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
        *(
            [
                "",
                "**Not what napari-diffseg predicts with**: on its validation images this model's diffusion "
                "teacher scored above its students (`deploy_best`), so `diffseg predict` samples the teacher "
                "(alone, or averaged with the students: `deploy_mean`); "
                "a bioimage.io package holds one feed-forward network, the students, which validated lower.",
            ]
            if bundle.deploys_teacher
            else []
        ),
        "",
        "## Inputs and outputs",
        "",
        f"* **input `raw`**: `(batch, channel, y, x)`, {spec.in_channels} channel(s) "
        f"({ {1: 'grey', 3: 'RGB'}.get(spec.in_channels, 'fluorescence channels, in the order trained') }), "
        "raw intensities of any dtype and any size. Convert "
        "grey to RGB (or RGB to grey) first if the channel count differs.",
        _norm_line(bundle.normalization),
        f"* **large images are tiled inside the network**: images larger than {roi} × {roi} pixels are "
        f"predicted on overlapping {roi}-pixel windows (25 % overlap, smooth blending), the window size the "
        "model was trained for.",
        f"* **output `probabilities`**: `(batch, channel={k}, y, x)` float32, the mean softmax of the students "
        "(channels in the class order above).",
        "* **output `labels`**: `(batch, 1, y, x)` uint8, the argmax of the probabilities"
        + (
            (
                " (0 background, 1 interior, 2 boundary of an object)."
                if k == 3
                else " (0 background, 2 boundary, the others each object class's interior, as named above)."
            )
            if task == "instances"
            else ": the mask `diffseg predict` writes."
        ),
        "",
        *(_instance_lines(names, src.config) if task == "instances" else []),
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
            f"Validation Dice {fmt(m['val_dice'])}, IoU {fmt(m.get('val_iou', '?'))} on {m.get('val_n', '?')} "
            "annotated images of the project's `val` split (never trained on), measured when the model was "
            "saved, with the same students and tiling as this package."
        )
    elif "dice_mean" in m:
        lines.append(
            f"Test Dice {fmt(m['dice_mean'])} ± {fmt(m.get('dice_std', '?'))}, IoU {fmt(m.get('iou_mean', '?'))} "
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


def environment_file(path: Path) -> None:
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


def safe_name(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", text).strip()
    cleaned = re.sub(r"-{2,}", "-", cleaned)
    return (cleaned or "napari-diffseg model")[:64].rstrip()
