"""A model folder's weights, read without torch: does ``weights.safetensors`` load, is every weight finite.

The store refuses to register a model whose weights hold NaN or infinity, and ``diffseg check`` reports
every registered model whose weights do not load or are not finite. Both run in light processes (the
HTTP app, the CLI), so this reads the safetensors file with numpy: the library validates the file, then
each floating-point tensor is scanned in chunks of at most 16 MiB.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from napari_diffseg.base.errors import DataError

__all__ = ["WEIGHTS_FILE", "nonfinite_tensors"]

WEIGHTS_FILE = "weights.safetensors"
"""The weights of a model folder (``core.checkpoint.WEIGHTS_FILE``; this module loads no torch)."""

_CHUNK = 16 * 2**20
_FLOATS: dict[str, type[np.floating]] = {"F64": np.float64, "F32": np.float32, "F16": np.float16}
# formats numpy lacks: (bit container, mask, value): a value is NaN or infinite when bits & mask == value
_BITS: dict[str, tuple[type[np.unsignedinteger], int, int]] = {
    "BF16": (np.uint16, 0x7F80, 0x7F80),  # exponent all ones
    "F8_E5M2": (np.uint8, 0x7C, 0x7C),  # exponent all ones
    "F8_E4M3": (np.uint8, 0x7F, 0x7F),  # S.1111.111 is its only NaN; it has no infinity
}
_NOT_FLOAT = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64"}


def _validate(path: Path) -> None:
    """Let the safetensors library parse the file (header, dtypes, offsets)."""
    from safetensors import safe_open  # light (no torch), but only needed here

    try:
        with safe_open(str(path), framework="numpy") as f:
            list(f.keys())
    except Exception as exc:  # SafetensorError, OSError, ...
        raise DataError(f"{path.name} is not a readable safetensors file ({exc})") from exc


def _bad(chunk: bytes, dtype: str) -> bool:
    if dtype in _FLOATS:
        return not bool(
            np.isfinite(np.frombuffer(chunk, dtype=np.dtype(_FLOATS[dtype]).newbyteorder("<"))).all()
        )
    container, mask, value = _BITS[dtype]
    bits = np.frombuffer(chunk, dtype=np.dtype(container).newbyteorder("<"))
    return bool(np.any((bits & mask) == value))


def nonfinite_tensors(path: str | Path) -> list[str]:
    """Names of the floating-point tensors of the safetensors file ``path`` that hold NaN or infinity.

    Raises:
        DataError: The file is missing, not a safetensors file, or damaged (truncated, bad header), or
            holds a floating-point format this check does not know.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing")
    _validate(path)
    bad: list[str] = []
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
            base = 8 + n
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                dtype = str(info["dtype"])
                if dtype in _NOT_FLOAT:
                    continue
                if dtype not in _FLOATS and dtype not in _BITS:
                    raise DataError(
                        f"{path.name}: tensor {key!r} has dtype {dtype}, which this check cannot read"
                    )
                itemsize = np.dtype(_FLOATS[dtype] if dtype in _FLOATS else _BITS[dtype][0]).itemsize
                start, end = (int(x) for x in info["data_offsets"])
                step = max(itemsize, _CHUNK - _CHUNK % itemsize)
                fh.seek(base + start)
                for pos in range(start, end, step):
                    chunk = fh.read(min(step, end - pos))
                    if len(chunk) % itemsize or len(chunk) < min(step, end - pos):
                        raise DataError(f"{path.name} is truncated")
                    if _bad(chunk, dtype):
                        bad.append(key)
                        break
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise DataError(f"{path.name} cannot be read ({exc})") from exc
    return bad
