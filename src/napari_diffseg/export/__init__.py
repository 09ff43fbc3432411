"""Models in formats the rest of the ecosystem opens: bioimage.io model packages (``diffseg export``).

:mod:`napari_diffseg.export.bioimageio` builds, validates and tests a bioimage.io model package from a
model folder or a project's model. Its heavy dependencies (``bioimageio.spec``, ``bioimageio.core``; the
``export`` extra) are imported only when a package is built.
"""

from __future__ import annotations

__all__: list[str] = []
