"""The compute layers must never pull in Qt or napari (DESIGN.md §1)."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "fastapi")


@pytest.mark.parametrize(
    "module",
    [
        "napari_diffseg.core",
        "napari_diffseg.core.training",
        "napari_diffseg.core.inference",
        "napari_diffseg.data",
        "napari_diffseg.data.dataset",
        "napari_diffseg.project",
        "napari_diffseg.experiment",
        "napari_diffseg.cli",
    ],
)
def test_no_gui_imports(module: str) -> None:
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imported {out.stdout.strip()}"


def test_core_imports_nothing_else_of_the_package() -> None:
    code = (
        "import sys, napari_diffseg.core.training, napari_diffseg.core.inference, napari_diffseg.core.models; "
        "print(','.join(m for m in sys.modules if m.startswith('napari_diffseg.') "
        "and not m.startswith('napari_diffseg.core')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
