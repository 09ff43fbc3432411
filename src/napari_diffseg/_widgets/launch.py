"""``diffseg demo --gui``: napari with a project open and the three DiffSeg widgets docked.

The project widget starts the project's backend (``diffseg serve`` on a free loopback port) and connects
the widgets to it; the backend stops when the viewer closes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["check_gui", "dock_widgets", "open_project"]

PLUGIN = "napari-diffseg"
WIDGETS = ("Project", "Annotate", "Train")


def check_gui() -> None:
    """Raise a :class:`~napari_diffseg.base.errors.DiffsegError` saying what to install when napari or a
    Qt binding is missing (call it before a long run that ends in the GUI)."""
    from napari_diffseg.base.errors import DiffsegError

    try:
        import napari  # noqa: F401
        import qtpy  # noqa: F401  (raises when no Qt binding is installed)
    except Exception as exc:  # ImportError, or qtpy's PythonQtError
        raise DiffsegError(
            f"--gui needs napari and a Qt binding ({type(exc).__name__}: {exc}); install them with "
            "`pip install 'napari[all]'`, or run without --gui"
        ) from None


def dock_widgets(viewer: Any, project: Path) -> tuple[Any, Any, Any]:
    """Dock the Project, Annotate and Train widgets and start + connect the project's local backend."""
    widgets = tuple(viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in WIDGETS)
    project_widget = widgets[0]
    project_widget.folder.setText(str(project))
    project_widget.start_local(project)
    return widgets


def open_project(project: Path, title: str = "diffseg demo") -> None:
    """Open napari with ``project`` and the widgets docked; returns when the viewer is closed."""
    import napari

    from napari_diffseg._widgets._session import session_for

    viewer = napari.Viewer(title=f"{title}: {project}")
    try:
        dock_widgets(viewer, Path(project))
        napari.run()
    finally:
        session_for(viewer).close()
