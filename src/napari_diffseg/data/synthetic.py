"""Synthetic microscopy images with exact masks, for sample data, demos and quick tests (no network).

Two kinds:

- ``"glands"``: H&E-like colon histology. Irregular glands (some touching) with a purple epithelial rim of
  crowded nuclei, pale goblet cells and a light lumen, in pink fibrous stroma that has its own scattered nuclei
  and white gaps. The foreground is both the darkest (nuclei) and the lightest (lumen) tissue, so no global
  threshold separates it: a model has to use context.
- ``"nuclei"``: dark, round-ish, partly touching nuclei with chromatin texture on a bright textured background
  with darker cytoplasm haze and small debris; some nuclei are pale.

Objects of two classes (:func:`make_sample_classed`, ``make_sample_dataset(..., object_classes=2)``): on the
same kind of background, class 1 ("disc") objects are small, round and dark, class 2 ("rod") objects large,
elongated and pale — size, shape and stain all differ, so a small network tells them apart.

Images are built in optical-density space from stain concentration maps (Beer-Lambert), then blurred, lit by
a smooth uneven illumination field and given Poisson + Gaussian noise. Stain colours, contrast and noise vary
per image.

Why one module of ~500 lines: the image kinds (glands, nuclei, discs and rods) share the blob geometry,
the texture and noise model and the dataset-folder writer; each kind is one function over them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_diffseg.base.errors import ConfigError, DataError

__all__ = ["KINDS", "make_sample", "make_sample_classed", "make_sample_dataset", "make_sample_instances"]

KINDS: tuple[str, ...] = ("glands", "nuclei")
_MIN_SIDE = 32

# Optical-density stain vectors (Ruifrok & Johnston), rows: hematoxylin, eosin.
_HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
_EOSIN = np.array([0.10, 0.99, 0.16])


# ----------------------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------------------


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, float]
) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _low_freq_field(rng: np.random.Generator, shape: tuple[int, int], grid: int = 4) -> np.ndarray:
    """A very smooth random field (zero mean, unit std) from a coarse random grid, cubic-interpolated."""
    coarse = rng.standard_normal((grid, grid))
    zoom = (shape[0] / grid, shape[1] / grid)
    field = ndi.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-12)


def _stain_vectors(rng: np.random.Generator, jitter: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and eosin OD vectors, perturbed per image and renormalised."""
    out = []
    for vec in (_HEMATOXYLIN, _EOSIN):
        v = np.clip(vec + rng.normal(0.0, jitter, 3), 0.02, None)
        out.append(v / np.linalg.norm(v))
    return out[0], out[1]


class _Blob:
    """A star-shaped blob: a rotated ellipse whose radius is modulated by a few angular harmonics."""

    def __init__(
        self, rng: np.random.Generator, cy: float, cx: float, radius: float, elong: float, wobble: float
    ) -> None:
        self.cy, self.cx, self.radius = cy, cx, radius
        e = rng.uniform(0.0, elong)
        self.a, self.b = radius * (1 + e), radius * (1 - e)
        self.angle = rng.uniform(0, np.pi)
        orders = np.arange(2, 7)
        self.amp = rng.normal(0.0, wobble, orders.size) / orders
        self.phase = rng.uniform(0, 2 * np.pi, orders.size)
        self.orders = orders

    def _modulation(self, theta: np.ndarray) -> np.ndarray:
        mod = 1.0 + np.sum(
            self.amp[:, None] * np.cos(self.orders[:, None] * theta.ravel() + self.phase[:, None]), 0
        )
        return np.clip(mod, 0.6, 1.4).reshape(theta.shape)

    def bbox(self, shape: tuple[int, int], margin: float = 2.0) -> tuple[slice, slice]:
        r = max(self.a, self.b) * 1.45 + margin
        y0, x0 = max(0, int(self.cy - r)), max(0, int(self.cx - r))
        y1, x1 = max(y0, min(shape[0], int(self.cy + r) + 1)), max(x0, min(shape[1], int(self.cx + r) + 1))
        return slice(y0, y1), slice(x0, x1)

    @staticmethod
    def is_empty(sl: tuple[slice, slice]) -> bool:
        return sl[0].stop <= sl[0].start or sl[1].stop <= sl[1].start

    def depth(self, sl: tuple[slice, slice]) -> np.ndarray:
        """Approximate distance inside the boundary, in pixels (negative outside), on the window ``sl``."""
        yy, xx = np.mgrid[sl]
        dy, dx = yy - self.cy, xx - self.cx
        c, s = np.cos(self.angle), np.sin(self.angle)
        u = (dx * c + dy * s) / self.a
        v = (-dx * s + dy * c) / self.b
        q = np.hypot(u, v) / self._modulation(np.arctan2(v, u))
        return (1.0 - q) * self.radius

    def points_at_depth(self, depth: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image coordinates of points at ``depth`` pixels inside the boundary, at ellipse angles ``theta``."""
        rho = self._modulation(theta) * (1.0 - depth / self.radius)
        u, v = rho * np.cos(theta) * self.a, rho * np.sin(theta) * self.b
        c, s = np.cos(self.angle), np.sin(self.angle)
        return self.cy + u * s + v * c, self.cx + u * c - v * s


def _scatter(shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Add ``weights`` at the (rounded) points into a zero image; points outside are dropped."""
    img = np.zeros(shape)
    yi, xi = np.rint(ys).astype(int), np.rint(xs).astype(int)
    keep = (yi >= 0) & (yi < shape[0]) & (xi >= 0) & (xi < shape[1])
    np.add.at(img, (yi[keep], xi[keep]), weights[keep])
    return img


def _place(
    rng: np.random.Generator, shape: tuple[int, int], radii: np.ndarray, overlap: float, tries: int = 60
) -> list[tuple[float, float, float]]:
    """Dart throwing: centres for blobs of ``radii`` whose discs overlap by at most ``overlap`` of a radius."""
    placed: list[tuple[float, float, float]] = []
    for r in radii:
        for _ in range(tries):
            cy, cx = rng.uniform(-0.3 * r, shape[0] + 0.3 * r), rng.uniform(-0.3 * r, shape[1] + 0.3 * r)
            if all(np.hypot(cy - py, cx - px) > (1.0 - overlap) * (r + pr) for py, px, pr in placed):
                placed.append((cy, cx, float(r)))
                break
    return placed


def _oriented_stroma(
    rng: np.random.Generator, shape: tuple[int, int], angle: float, density: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fibre texture (zero mean, unit std) and elongated nuclei, both aligned with ``angle`` degrees.

    Built axis-aligned on a square canvas that covers the image at any rotation, then rotated and cropped.
    ``density`` is the stroma area (in pixels) per nucleus.
    """
    side = int(np.ceil(np.hypot(*shape))) + 4
    canvas = (side, side)
    fib = ndi.gaussian_filter(rng.standard_normal(canvas), (0.8, 4.0), mode="wrap")
    n = rng.poisson(side * side / density / 2)
    nuc = _scatter(canvas, rng.uniform(0, side, n), rng.uniform(0, side, n), rng.uniform(0.5, 1.0, n))
    nuc = ndi.gaussian_filter(nuc, (0.8, 2.2))
    both = ndi.rotate(np.stack([fib, nuc], -1), angle, axes=(0, 1), reshape=False, order=1, mode="reflect")
    y0, x0 = (side - shape[0]) // 2, (side - shape[1]) // 2
    crop = both[y0 : y0 + shape[0], x0 : x0 + shape[1]]
    fib = crop[..., 0]
    return (fib - fib.mean()) / (fib.std() + 1e-12), crop[..., 1]


def _render(
    rng: np.random.Generator,
    h_conc: np.ndarray,
    e_conc: np.ndarray,
    *,
    blur: float,
    od_scale: float,
) -> np.ndarray:
    """Stain concentrations → uint8 RGB through Beer-Lambert, blur, uneven illumination and noise."""
    shape = h_conc.shape
    hvec, evec = _stain_vectors(rng)
    od = h_conc[..., None] * hvec + e_conc[..., None] * evec
    od = ndi.gaussian_filter(od * od_scale, (blur, blur, 0))
    white = rng.uniform(225, 250) * (1 + rng.normal(0, 0.02, 3))
    illumination = 1.0 + rng.uniform(0.04, 0.12) * _low_freq_field(rng, shape, grid=3)
    rgb = white * illumination[..., None] * np.exp(-od)
    photons = rng.uniform(60, 250)
    rgb = rng.poisson(np.clip(rgb, 0, None) * (photons / 255.0)) * (255.0 / photons)
    rgb += rng.normal(0.0, rng.uniform(1.0, 4.0), rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# kinds
# ----------------------------------------------------------------------------------------------------------


def _glands(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    scale = np.sqrt(h * w) / 256.0
    n_glands = max(1, round(rng.integers(4, 9) * (h * w) / 256.0**2))
    radii = np.sort(rng.uniform(22, 48, n_glands) * max(scale, 0.5) ** 0.5)[::-1]
    centres = _place(rng, shape, radii, overlap=0.12)

    # stroma: pink fibres and elongated fibroblast nuclei along two local fibre directions, slow density
    # changes, white gaps
    angle = rng.uniform(0, 180)
    fibres = np.zeros(shape)
    stroma_nuc = np.zeros(shape)
    for weight, theta in ((0.8, angle), (0.5, angle + rng.uniform(40, 90))):
        fib, nuc = _oriented_stroma(rng, shape, theta, density=rng.uniform(120, 300))
        fibres += weight * fib
        stroma_nuc += nuc
    density = _smooth_noise(rng, shape, 10.0)
    e_conc = np.clip(0.45 + 0.12 * fibres + 0.12 * density, 0.05, None)
    h_conc = np.clip(0.10 + 0.04 * fibres, 0.0, None)
    gaps = ndi.gaussian_filter(_smooth_noise(rng, shape, 5.0), 1.0) > rng.uniform(1.3, 1.9)
    e_conc[gaps] *= 0.15
    h_conc[gaps] *= 0.15
    h_conc += stroma_nuc * 18.0

    mask = np.zeros(shape, dtype=bool)
    rim_nuclei = np.zeros(shape)
    goblets = np.zeros(shape)
    for cy, cx, r in centres:
        blob = _Blob(rng, cy, cx, r, elong=0.5, wobble=0.35)
        sl = blob.bbox(shape)
        if blob.is_empty(sl):
            continue
        depth = blob.depth(sl)
        inside = depth > 0
        if not inside.any():
            continue
        rim = rng.uniform(9.0, 15.0) * (0.6 + 0.4 * scale)
        solid = rng.random() < 0.2  # a crowded (malignant-looking) gland with a small lumen
        lumen_start = rim * (1.7 if solid else 1.0)
        epith = inside & (depth <= lumen_start)
        lumen = depth > lumen_start
        mask[sl] |= inside
        # epithelium: lilac cytoplasm; lumen: light with pink secretions
        tex = _smooth_noise(rng, depth.shape, 1.5)
        e_epi = rng.uniform(0.2, 0.32) * (1 + 0.25 * tex)
        h_epi = rng.uniform(0.3, 0.45) * (1 + 0.25 * tex)
        secretion = np.clip(_smooth_noise(rng, depth.shape, 2.5), 0, None) * rng.uniform(0.05, 0.3)
        e_conc[sl] = np.where(epith, e_epi, np.where(lumen, 0.03 + secretion, e_conc[sl]))
        h_conc[sl] = np.where(epith, h_epi, np.where(lumen, 0.03 + 0.2 * secretion, h_conc[sl]))
        # basal nuclei crowded along the rim, goblet cells (pale mucin) further in
        perimeter = 2 * np.pi * r
        n_nuc = int(perimeter / rng.uniform(1.2, 2.0) * (1.8 if solid else 1.0))
        angles = rng.uniform(0, 2 * np.pi, n_nuc)
        nuc_depths = rng.uniform(1.5, rim * (1.3 if solid else 0.8), n_nuc)
        ny, nx = blob.points_at_depth(nuc_depths, angles)
        rim_nuclei += _scatter(shape, ny, nx, rng.uniform(0.5, 1.0, n_nuc))
        n_gob = rng.poisson(perimeter / rng.uniform(8.0, 25.0))
        angles = rng.uniform(0, 2 * np.pi, n_gob)
        gy, gx = blob.points_at_depth(rng.uniform(rim * 0.55, rim * 0.9, n_gob), angles)
        goblets += _scatter(shape, gy, gx, np.ones(n_gob))

    goblet_map = np.clip(ndi.gaussian_filter(goblets, 1.8 * scale**0.5) * 25.0, 0, 0.85) * mask
    e_conc *= 1.0 - goblet_map
    h_conc *= 1.0 - goblet_map
    h_conc += ndi.gaussian_filter(rim_nuclei, 1.2) * rng.uniform(11.0, 16.0) * mask
    h_conc *= rng.uniform(0.8, 1.25)
    e_conc *= rng.uniform(0.7, 1.3)
    image = _render(rng, h_conc, e_conc, blur=rng.uniform(0.6, 1.2), od_scale=rng.uniform(1.0, 1.4))
    return image, mask.astype(np.uint8)


def _nuclei(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    image, ids = _nuclei_ids(rng, shape)
    return image, (ids > 0).astype(np.uint8)


def _nuclei_ids(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The nuclei image and each nucleus's own id (uint16; where two overlap, the later one's)."""
    h, w = shape
    scale = np.sqrt(h * w) / 256.0
    # clustered nuclei: cluster centres, then nuclei packed around them
    n_clusters = max(1, round(rng.integers(3, 7) * (h * w) / 256.0**2))
    target = max(4, round(rng.integers(25, 45) * (h * w) / 256.0**2))
    cy0, cx0 = rng.uniform(0, h, n_clusters), rng.uniform(0, w, n_clusters)
    pick = rng.integers(0, n_clusters, target)
    spread = rng.uniform(18, 40) * scale**0.5
    radii = rng.uniform(6.0, 11.0, target) * scale**0.25
    blobs_at: list[tuple[float, float, float]] = []
    for k, r in zip(pick, radii, strict=True):
        for _ in range(40):
            cy, cx = cy0[k] + rng.normal(0, spread), cx0[k] + rng.normal(0, spread)
            if all(np.hypot(cy - py, cx - px) > 0.9 * (r + pr) for py, px, pr in blobs_at):
                blobs_at.append((cy, cx, float(r)))
                break

    # background: bright, textured, with darker cytoplasm haze around nuclear clusters and small debris
    texture = 0.5 * _smooth_noise(rng, shape, 1.5) + _smooth_noise(rng, shape, 6.0)
    h_conc = np.clip(0.08 + 0.04 * texture, 0.0, None)
    haze = np.zeros(shape)
    ids = np.zeros(shape, dtype=np.uint16)
    nuclei = np.zeros(shape)
    for cy, cx, r in blobs_at:
        blob = _Blob(rng, cy, cx, r, elong=0.3, wobble=0.12)
        sl = blob.bbox(shape, margin=3.0 * r)
        if blob.is_empty(sl):
            continue
        depth = blob.depth(sl)
        inside = depth > 0
        ids[sl][inside] = ids.max() + 1
        haze[sl] = np.maximum(haze[sl], np.clip(1.0 + depth / (2.5 * r), 0, 1))
        pale = rng.random() < 0.25
        strength = rng.uniform(0.25, 0.4) if pale else rng.uniform(0.55, 1.0)
        edge = 1.0 / (1.0 + np.exp(-depth / 0.7))
        chromatin = 1.0 + 0.3 * _smooth_noise(rng, depth.shape, 1.0)
        nuclei[sl] = np.maximum(nuclei[sl], strength * edge * chromatin)
    h_conc += haze * rng.uniform(0.1, 0.22) * (1.0 + 0.3 * _smooth_noise(rng, shape, 3.0))
    n_debris = rng.poisson(h * w / rng.uniform(700, 1500))
    dy, dx = rng.uniform(0, h, n_debris), rng.uniform(0, w, n_debris)
    debris = ndi.gaussian_filter(_scatter(shape, dy, dx, rng.uniform(0.5, 1.0, n_debris)), 1.5) * 9.0
    h_conc = np.maximum(h_conc, nuclei) + debris
    e_conc = 0.12 * h_conc + 0.04
    image = _render(rng, h_conc, e_conc, blur=rng.uniform(0.7, 1.4), od_scale=rng.uniform(1.1, 1.6))
    return image, ids


def _one_piece(ids: np.ndarray) -> np.ndarray:
    """Keep each id's largest 4-connected piece (a later object drawn over an earlier one may cut it)."""
    out = ids.copy()
    for obj, sl in enumerate(ndi.find_objects(ids), start=1):
        if sl is None:
            continue
        pieces, n = ndi.label(ids[sl] == obj)
        if n > 1:
            sizes = np.bincount(pieces.ravel())
            sizes[0] = 0
            out[sl][(pieces > 0) & (pieces != sizes.argmax())] = 0
    return out


def _classed_ids(
    rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, object ids and class map of objects of two classes (module docstring): 1 small round dark
    discs, 2 large elongated pale rods, on the nuclei kind's background."""
    h, w = shape
    scale = np.sqrt(h * w) / 256.0
    n = max(6, round(rng.integers(22, 34) * (h * w) / 256.0**2))
    kinds = rng.permutation(1 + (np.arange(n) + rng.integers(0, 2)) % 2)  # as many of each class (±1)
    placed: list[tuple[float, float, float, int]] = []
    for k in kinds:
        r = (rng.uniform(4.5, 6.5) if k == 1 else rng.uniform(8.0, 10.5)) * max(scale, 0.25) ** 0.25
        reach = r * (1.15 if k == 1 else 1.7)  # the elongated rods reach further along their axis
        for _ in range(40):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            if all(np.hypot(cy - py, cx - px) > 0.95 * (reach + pr) for py, px, pr, _k in placed):
                placed.append((cy, cx, reach, int(k)))
                break
    texture = 0.5 * _smooth_noise(rng, shape, 1.5) + _smooth_noise(rng, shape, 6.0)
    h_conc = np.clip(0.08 + 0.04 * texture, 0.0, None)
    ids = np.zeros(shape, dtype=np.uint16)
    class_of = [0]
    objects = np.zeros(shape)
    for cy, cx, reach, k in placed:
        r = reach / (1.15 if k == 1 else 1.7)
        blob = _Blob(rng, cy, cx, r, elong=0.05 if k == 1 else 0.0, wobble=0.08)
        if k == 2:  # a rod: a fixed strong elongation, not a random one up to it
            blob.a, blob.b = r * 1.6, r * 0.55
        sl = blob.bbox(shape, margin=2.0)
        if blob.is_empty(sl):
            continue
        depth = blob.depth(sl)
        inside = depth > 0
        if not inside.any():
            continue
        ids[sl][inside] = len(class_of)
        class_of.append(k)
        strength = rng.uniform(0.8, 1.05) if k == 1 else rng.uniform(0.28, 0.4)
        edge = 1.0 / (1.0 + np.exp(-depth / 0.7))
        grain = 1.0 + (0.3 if k == 1 else 0.1) * _smooth_noise(rng, depth.shape, 1.0)
        objects[sl] = np.maximum(objects[sl], strength * edge * grain)
    h_conc = np.maximum(h_conc, objects)
    e_conc = 0.12 * h_conc + 0.04
    image = _render(rng, h_conc, e_conc, blur=rng.uniform(0.7, 1.2), od_scale=rng.uniform(1.2, 1.5))
    ids = _one_piece(ids)
    classes = np.asarray(class_of, dtype=np.uint8)[ids]
    return image, ids, classes


# ----------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------


def make_sample(
    seed: int, size: tuple[int, int] = (256, 256), kind: str = "glands"
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its exact binary mask.

    Args:
        seed: Random seed; the same seed, size and kind give the same arrays.
        size: ``(H, W)``, each at least 32.
        kind: ``"glands"`` (H&E-like histology) or ``"nuclei"`` (dark nuclei on a bright background).

    Returns:
        ``(image, mask)``: uint8 RGB ``(H, W, 3)`` and uint8 ``(H, W)`` with 0 = background, 1 = foreground.

    Raises:
        ConfigError: Unknown ``kind`` or a size under 32 pixels.
    """
    if kind not in KINDS:
        raise ConfigError(f"Unknown synthetic sample kind {kind!r}; choose one of {', '.join(KINDS)}.")
    h, w = (int(s) for s in size)
    if h < _MIN_SIDE or w < _MIN_SIDE:
        raise ConfigError(f"Synthetic sample size must be at least {_MIN_SIDE}x{_MIN_SIDE}, got {h}x{w}.")
    rng = np.random.default_rng(seed)
    return _glands(rng, (h, w)) if kind == "glands" else _nuclei(rng, (h, w))


def make_sample_instances(
    seed: int, size: tuple[int, int] = (256, 256), kind: str = "nuclei"
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`make_sample`'s image (the same for the same arguments) with uint16 object ids instead of
    the binary mask: each nucleus its own id, or each gland's connected piece (``ids > 0`` is the mask)."""
    if kind == "glands":
        from skimage.measure import label

        image, mask = make_sample(seed, size, kind)
        return image, label(mask > 0, connectivity=1).astype(np.uint16)
    make_sample(seed, size, kind)  # the same checks
    return _nuclei_ids(np.random.default_rng(seed), (int(size[0]), int(size[1])))


def make_sample_classed(
    seed: int, size: tuple[int, int] = (256, 256)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic image of objects of two classes (module docstring) with its object ids and class map.

    Returns:
        ``(image, ids, classes)``: uint8 RGB ``(H, W, 3)``, uint16 object ids ``(H, W)`` (0 = background)
        and the uint8 class map ``(H, W)``: 0 background, 1 disc (small, round, dark), 2 rod (large,
        elongated, pale); every object has one class over all its pixels.

    Raises:
        ConfigError: A size under 32 pixels.
    """
    h, w = (int(s) for s in size)
    if h < _MIN_SIDE or w < _MIN_SIDE:
        raise ConfigError(f"Synthetic sample size must be at least {_MIN_SIDE}x{_MIN_SIDE}, got {h}x{w}.")
    return _classed_ids(np.random.default_rng(seed), (h, w))


def make_sample_dataset(
    out_dir: str | os.PathLike[str],
    *,
    n_train: int = 24,
    n_test: int = 8,
    size: tuple[int, int] = (256, 256),
    kind: str = "glands",
    seed: int = 0,
    instances: bool = False,
    object_classes: int = 1,
) -> Path:
    """Write a synthetic dataset folder: ``images/<id>.png``, ``masks/<id>.png`` and ``split.csv`` (and
    with ``instances``, ``instances/<id>.tif``: uint16 object ids, see :func:`make_sample_instances`).

    With ``object_classes=2`` the images hold objects of two classes (:func:`make_sample_classed`; ``kind``
    is not used): ``instances/<id>.tif`` their ids and ``masks/<id>.png`` the class map (0 background,
    1 disc, 2 rod), the layout an instance project of several object classes imports.

    Ids are ``train_000``, ``train_001``... and ``test_000``...; their splits are ``train`` and ``test``.

    Returns:
        The dataset folder.

    Raises:
        DataError: ``out_dir`` exists and is not an empty folder.
        ConfigError: Negative counts, no images at all, or a bad ``kind`` / ``size``.
    """
    import imageio.v3 as iio

    from napari_diffseg.base.fileio import atomic_write_bytes
    from napari_diffseg.data.io import write_mask, write_tiff

    root = Path(out_dir)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(
            f"Cannot write a sample dataset to {root}: it already exists and is not an empty folder. "
            "Choose a new or empty folder."
        )
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ConfigError(f"n_train and n_test must be >= 0 and not both 0, got {n_train} and {n_test}.")
    if kind not in KINDS:
        raise ConfigError(f"Unknown synthetic sample kind {kind!r}; choose one of {', '.join(KINDS)}.")
    if object_classes not in (1, 2):
        raise ConfigError(f"object_classes must be 1 or 2 (discs and rods), got {object_classes}.")
    rows = ["id,split"]
    for split_no, (split, count) in enumerate((("train", n_train), ("test", n_test))):
        for i in range(count):
            image_id = f"{split}_{i:03d}"
            sub_seed = int(np.random.SeedSequence([seed, split_no, i]).generate_state(1)[0])
            if object_classes == 2:
                image, ids, mask = make_sample_classed(sub_seed, size=size)
                write_tiff(root / "instances" / f"{image_id}.tif", ids)
            elif instances:
                image, ids = make_sample_instances(sub_seed, size=size, kind=kind)
                mask = (ids > 0).astype(np.uint8)
                write_tiff(root / "instances" / f"{image_id}.tif", ids)
            else:
                image, mask = make_sample(sub_seed, size=size, kind=kind)
            atomic_write_bytes(
                root / "images" / f"{image_id}.png", iio.imwrite("<bytes>", image, extension=".png")
            )
            write_mask(root / "masks" / f"{image_id}.png", mask)
            rows.append(f"{image_id},{split}")
    atomic_write_bytes(root / "split.csv", ("\n".join(rows) + "\n").encode())
    return root
