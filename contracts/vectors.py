"""Compact wire form of embedding vectors: base64 of little-endian float32 (384 dims ≈ 2 KB of JSON).

Pure stdlib so contracts stay free of numpy; adapters convert to arrays with `numpy.frombuffer`.
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Iterable


def pack_vector(values: Iterable[float]) -> str:
    """Encode floats as base64 float32 (little-endian)."""
    arr = array("f", values)
    if sys.byteorder != "little":  # pragma: no cover - every platform we ship on is little-endian
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode("ascii")


def unpack_vector(data: str) -> list[float]:
    """Decode `pack_vector` output back to floats."""
    raw = base64.b64decode(data, validate=True)
    if len(raw) % 4:
        raise ValueError(f"vector payload of {len(raw)} bytes is not a whole number of float32 values")
    arr = array("f")
    arr.frombytes(raw)
    if sys.byteorder != "little":  # pragma: no cover
        arr.byteswap()
    return arr.tolist()
