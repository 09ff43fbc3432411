"""Qt / napari dock widgets (the only Qt code in the package)."""
