"""napari-diffseg: few-label biomedical segmentation with a diffusion teacher and twin students."""

__version__ = "0.1.0"
