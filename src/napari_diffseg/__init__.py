"""napari-diffseg: few-label biomedical segmentation with a diffusion teacher and twin students."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

if _sys.platform == "darwin":
    # Apple GPUs: torch reads this when it loads, so it is set here, before any of our modules imports torch.
    # Operations MPS lacks then run on the CPU instead of stopping a job (core/device.py; a user's value is kept).
    _os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
