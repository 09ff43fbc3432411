"""npe2 sample data: generated synthetic images (exact masks) and scikit-image's bundled IHC image.

None of these needs a network connection.
"""

from __future__ import annotations

from typing import Any

__all__ = ["immunohistochemistry", "synthetic_glands", "synthetic_nuclei"]

LayerData = list[tuple[Any, dict[str, Any], str]]


def _synthetic(kind: str) -> LayerData:
    from napari_diffseg.data.synthetic import make_sample

    image, mask = make_sample(seed=0, size=(256, 256), kind=kind)
    return [
        (image, {"name": f"synthetic {kind}", "rgb": True}, "image"),
        (mask.astype("int32"), {"name": f"synthetic {kind} mask", "opacity": 0.4}, "labels"),
    ]


def synthetic_glands() -> LayerData:
    """An H&E-like 256×256 image with glands and its exact mask."""
    return _synthetic("glands")


def synthetic_nuclei() -> LayerData:
    """A 256×256 image of nuclei and its exact mask."""
    return _synthetic("nuclei")


def immunohistochemistry() -> LayerData:
    """scikit-image's bundled immunohistochemistry image (RGB, 512×512; no download)."""
    from skimage import data

    return [(data.immunohistochemistry(), {"name": "immunohistochemistry", "rgb": True}, "image")]
