"""Training patches and augmentation.

The implementation lives in :mod:`napari_diffseg.core.augment` because the training loops in ``core``
need it and ``core`` imports nothing from the rest of the package; this module re-exports it for
data-side callers.
"""

from napari_diffseg.core.augment import intensity_jitter, sample_patches

__all__ = ["intensity_jitter", "sample_patches"]
