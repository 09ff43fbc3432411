"""napari_diffseg.backend"""
