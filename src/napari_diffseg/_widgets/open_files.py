"""*File → IO Utilities → Open image with its axes and channels (napari-diffseg)…*

napari picks a reader by file name alone and asks the user whenever two plugins claim a name, and
``viewer.open`` in a script then raises instead of opening. So napari-diffseg's reader claims only OME-TIFF
and folders (napari.yaml), and plain TIFF, PNG and JPEG files open with napari's own reader: an ImageJ
hyperstack as one array (C and Z as sliders, no scale), a JPEG without its EXIF rotation. This menu item is
the other way in, for the files napari's reader shows wrongly: it reads the chosen files as a project import
does (``napari_diffseg.data.imagefile``: the file's axes, every series, EXIF orientation, CMYK and palette
converted) and adds them as napari expects — fluorescence channels as separate layers (``channel_axis``,
named from the metadata), RGB as RGB, Z and T as sliders, the scale in micrometres where the metadata gives
the pixel size. A file that cannot be read is reported (napari's notification, naming the file and what is
wrong) and the other files are still opened.
"""

from typing import Any

from napari.viewer import Viewer  # a real import: napari injects the viewer by this annotation

__all__ = ["add_image_files", "open_with_axes"]

FILE_FILTER = "Images (*.tif *.tiff *.png *.jpg *.jpeg *.bmp);;All files (*)"


def add_image_files(viewer: Any, paths: list[str]) -> tuple[list[Any], list[str]]:
    """Add every image of ``paths`` to ``viewer`` as :func:`napari_diffseg._reader.read_image_files` lays
    them out. Returns (the layers added, one message per file that could not be read)."""
    from napari_diffseg._reader import read_image_files
    from napari_diffseg.base.errors import DiffsegError

    added: list[Any] = []
    failed: list[str] = []
    for path in paths:
        try:
            layer_data = read_image_files(path)
        except (DiffsegError, OSError, ValueError) as exc:
            failed.append(f"{path}: {exc}")
            continue
        for data, kwargs, _kind in layer_data:
            layers = viewer.add_image(data, **kwargs)
            added.extend(layers if isinstance(layers, list) else [layers])
    return added, failed


def open_with_axes(viewer: Viewer) -> None:
    """Ask for image files and open them with their axes, channels, scale and orientation (module
    docstring); each file that cannot be read is shown as an error notification."""
    from napari.utils.notifications import show_error
    from qtpy.QtWidgets import QFileDialog

    paths, _ = QFileDialog.getOpenFileNames(
        None, "Open image with its axes and channels (napari-diffseg)", "", FILE_FILTER
    )
    if not paths:
        return
    _added, failed = add_image_files(viewer, list(paths))
    for message in failed:
        show_error(f"Not opened: {message}")
