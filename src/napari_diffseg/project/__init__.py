"""napari_diffseg.project"""
