"""The layer rules of docs/architecture.md §1, checked in fresh interpreters.

base ← core ← data ← project ← backend ← cli / widgets: each layer may import only the ones before it,
the compute layers never pull in Qt or napari, and the base imports no torch.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy")


def _loaded(module: str) -> set[str]:
    """Every module loaded by importing ``module`` (and its submodules) in a fresh interpreter."""
    code = (
        "import sys, importlib, pkgutil\n"
        f"m = importlib.import_module({module!r})\n"
        "for info in pkgutil.walk_packages(getattr(m, '__path__', []), m.__name__ + '.'):\n"
        "    importlib.import_module(info.name)\n"
        "print('\\n'.join(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def _ours(loaded: set[str]) -> set[str]:
    """Our layers among the loaded modules (``napari_diffseg.<layer>``)."""
    return {m.split(".")[1] for m in loaded if m.startswith("napari_diffseg.") and m.count(".") >= 1}


@pytest.mark.parametrize(
    ("layer", "allowed"),
    [
        ("napari_diffseg.base", {"base"}),
        ("napari_diffseg.core", {"base", "core"}),
        ("napari_diffseg.data", {"base", "core", "data"}),
        ("napari_diffseg.project", {"base", "core", "data", "project"}),
    ],
)
def test_layer_imports_only_layers_below(layer: str, allowed: set[str]) -> None:
    layers = _ours(_loaded(layer))
    assert layers <= allowed, f"{layer} (with every submodule) imported {sorted(layers - allowed)}"


@pytest.mark.parametrize(
    "module",
    [
        "napari_diffseg.base",
        "napari_diffseg.core",
        "napari_diffseg.data",
        "napari_diffseg.project",
        "napari_diffseg.backend",
        "napari_diffseg.cli",
        "napari_diffseg.experiment",
        "napari_diffseg.demo",
        "napari_diffseg.review",
    ],
)
def test_no_gui_imports(module: str) -> None:
    bad = sorted(m for m in _loaded(module) if m.split(".")[0] in GUI)
    assert not bad, f"{module} imported {bad}"


def test_base_imports_no_torch() -> None:
    loaded = _loaded("napari_diffseg.base")
    heavy = sorted(m for m in loaded if m.split(".")[0] in ("torch", "monai", "fastapi", "httpx"))
    assert not heavy, f"napari_diffseg.base imported {heavy}"


def test_project_never_imports_backend_and_core_nothing_above() -> None:
    # the narrowest rules again, named as docs/architecture.md states them
    assert "backend" not in _ours(_loaded("napari_diffseg.project"))
    assert _ours(_loaded("napari_diffseg.core")) <= {"base", "core"}
