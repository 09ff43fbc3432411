"""Qt / magicgui / napari widgets (the only Qt code in the package)."""
