"""Objects of an image too large to post-process at once: the seeded watershed run block by block over
probabilities that arrive in row bands (an OME-Zarr slide predicted tile by tile, ``core/tiled.py``).

**How.** The image's rows are cut into blocks of ``block`` rows. Each block is post-processed
(:func:`~napari_diffseg.core.instances.probs_to_instances`, the model's own :class:`Watershed`) in a window
that adds ``context`` rows above and below it, and keeps the objects whose **top row** lies in the block:
every object belongs to exactly one block. The watershed is local — a seed is a smoothed, thresholded
piece of interior, and the flood stays inside its foreground piece — so when a window holds a kept object
*and the seeds of its neighbours* (``context`` about twice the tallest object: a neighbour cut off from
its seed at the window's edge is flooded by the kept object), both windows around the line between two
blocks make the same objects there, and an object is neither lost nor counted twice. The
kept objects are written with ids counted up over the whole image (uint32); where two windows' objects
claim the same pixel (the watershed of a window edge) the earlier block's object keeps it.

**When it is not exact.** An object (or a foreground piece, such as a tissue fold predicted as one blob)
that reaches the edge of its window may be cut there, or have taken a neighbour's piece:
:attr:`BandInstances.cut` counts the kept objects that reached a window's inner edge, so the caller can say
"raise the context". Within those limits the ids equal the whole-image post-processing's up to their
numbering (the tests check this on many touching objects, bands of every size). The default context, 256
rows, is four times a large nucleus (DSB's reach ~60 px) and about GlaS's largest gland at half resolution.

**Memory.** The probabilities of one window, ``K × (block + 2·context) × width`` float32, and the ids of
``block + context`` rows: about 600 MB for a 50,000-pixel-wide slide at the defaults (K = 3).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

from .instances import Watershed, classify_objects, probs_to_instances

__all__ = ["BLOCK_ROWS", "CONTEXT_ROWS", "BandInstances"]

#: Rows of a block (one OME-Zarr chunk row of the label image written).
BLOCK_ROWS = 1024
#: Rows of context above and below a block: the tallest object made whole (nuclei are 10–60 px, GlaS
#: glands at half resolution up to ~250).
CONTEXT_ROWS = 256


class BandInstances:
    """A sink for ``core.tiled.predict_rows``: ``(y0, (K, n, width))`` probability bands in, in order;
    ``sink(y0, ids, classes)`` out, in order, blocks of ``block`` rows (the last may be shorter) that
    together cover the image: ``ids`` (rows, width) uint32 object ids (0 = background); ``classes`` each
    pixel's object class (uint8, 0 = background) for a model of several object classes, else None.

    Args:
        height, width: The image's size.
        params: The model's watershed.
        sink: Receives the finished rows.
        block, context: Rows of a block and of the context on each side (module docstring).
        classed: Also classify the objects (``core.instances.classify_objects``) and fill ``classes``.
    """

    def __init__(
        self,
        height: int,
        width: int,
        params: Watershed,
        sink: Callable[[int, np.ndarray, np.ndarray | None], None],
        *,
        block: int = BLOCK_ROWS,
        context: int = CONTEXT_ROWS,
        classed: bool = False,
    ) -> None:
        if block < 1 or context < 0:
            raise ValueError(f"block ({block}) must be positive and context ({context}) not negative")
        self.height, self.width = int(height), int(width)
        self.params, self.sink = params, sink
        self.block, self.context, self.classed = int(block), int(context), classed
        self._probs: list[np.ndarray] = []  # bands received and still needed, from row _probs_y0 on
        self._probs_y0 = 0
        self._received = 0
        self._start = 0  # the next block's first row
        self._ids = np.zeros((0, self.width), np.uint32)  # rows from _start on, objects of earlier blocks
        self._cls = np.zeros((0, self.width), np.uint8)
        self.objects = 0
        """Objects written so far (the largest id)."""
        self.cut = 0
        """Objects that reached a window's inner edge: possibly cut (taller than ``context``)."""
        self.object_class: dict[int, int] = {}
        """``{id: class}`` of every object written (1 for all without ``classed``)."""

    def __call__(self, y0: int, probs: np.ndarray) -> None:
        probs = np.asarray(probs, dtype=np.float32)
        if y0 != self._received or probs.ndim != 3 or probs.shape[2] != self.width:
            raise ValueError(
                f"bands must come in order, (K, rows, {self.width}): got rows from {y0} (expected "
                f"{self._received}), shape {probs.shape}"
            )
        self._probs.append(probs)
        self._received += probs.shape[1]
        while self._start < self.height:
            end = min(self.height, self._start + self.block)
            if self._received < min(self.height, end + self.context):
                break
            self._do_block(end)

    def flush(self) -> None:
        """Process what is left (every row must have been received)."""
        if self._received != self.height:
            raise ValueError(f"{self._received} of {self.height} rows received")
        while self._start < self.height:
            self._do_block(min(self.height, self._start + self.block))

    def _window(self, lo: int, hi: int) -> np.ndarray:
        probs = np.concatenate(self._probs, axis=1) if len(self._probs) > 1 else self._probs[0]
        self._probs = [probs]
        return probs[:, lo - self._probs_y0 : hi - self._probs_y0]

    def _do_block(self, end: int) -> None:
        start = self._start
        lo, hi = max(0, start - self.context), min(self.height, end + self.context)
        window = self._window(lo, hi)
        local = probs_to_instances(window, self.params)
        slices = ndi.find_objects(local)
        n_local = len(slices)
        tops = np.array([s[0].start if s is not None else -1 for s in slices], np.int64) + lo
        bottoms = np.array([s[0].stop if s is not None else -1 for s in slices], np.int64) + lo
        keep = (tops >= start) & (tops < end)
        reach = (bottoms >= hi) & (hi < self.height)  # touches the window's lower edge, inside the image
        self.cut += int((keep & reach).sum())
        lut = np.zeros(n_local + 1, np.uint32)
        kept = np.flatnonzero(keep) + 1  # local ids
        lut[kept] = np.arange(self.objects + 1, self.objects + 1 + kept.size, dtype=np.uint32)
        classes = classify_objects(local, window) if self.classed and kept.size else {}  # else all class 1
        cls_lut = np.zeros(n_local + 1, np.uint8)
        for obj in kept:
            c = int(classes.get(int(obj), 1))
            cls_lut[obj] = c
            self.object_class[int(lut[obj])] = c
        self.objects += int(kept.size)

        # the ids of rows start .. hi: what earlier blocks wrote there, then this block's objects
        rows = hi - start
        ids = np.zeros((rows, self.width), np.uint32)
        cls = np.zeros((rows, self.width), np.uint8)
        carried = min(rows, self._ids.shape[0])
        ids[:carried] = self._ids[:carried]
        cls[:carried] = self._cls[:carried]
        mine = local[start - lo :]
        new_ids = lut[mine]
        free = (ids == 0) & (new_ids > 0)
        ids[free] = new_ids[free]
        if self.classed:
            cls[free] = cls_lut[mine][free]
        n = end - start
        self.sink(start, ids[:n], cls[:n] if self.classed else None)
        self._ids, self._cls = ids[n:], cls[n:]
        self._start = end
        keep_from = max(0, end - self.context)  # the next window's first row
        probs = self._probs[0]
        self._probs = [probs[:, keep_from - self._probs_y0 :]]
        self._probs_y0 = keep_from
