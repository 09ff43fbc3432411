"""Helpers the tests share for the synthetic sample datasets (``napari_diffseg.data.synthetic``)."""

from __future__ import annotations

from pathlib import Path


def move_to_val(dataset: Path, ids: tuple[str, ...] = ("train_000",)) -> Path:
    """Put ``ids`` of a sample dataset's ``split.csv`` in the ``val`` split (a project imported from it then
    has annotated validation images: checkpoint choice, gates, ``deploy_best``). Returns ``dataset``."""
    lines = (dataset / "split.csv").read_text().splitlines()
    moved = [ln.replace(",train", ",val") if ln.split(",", 1)[0] in ids else ln for ln in lines[1:]]
    (dataset / "split.csv").write_text("\n".join([lines[0], *moved]) + "\n")
    return dataset
