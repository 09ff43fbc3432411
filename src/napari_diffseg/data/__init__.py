"""Image and mask I/O, dataset folders, normalisation, patches and augmentation (no Qt, no napari)."""
