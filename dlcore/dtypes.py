"""Data types and PyTorch-style type promotion.

dtypes are NumPy dtype objects (``dlcore.float32 == numpy.float32``), which CuPy shares.
Promotion follows PyTorch, not NumPy: a float tensor combined with an integer tensor keeps
the float dtype (int64 + float32 -> float32; NumPy says float64), and Python scalars are
"weak": ``float32_tensor * 2.5`` stays float32, ``int_tensor * 2.5`` becomes the default
float dtype (float32).
"""

from __future__ import annotations

import builtins
from functools import lru_cache
from typing import Any

import numpy as np

float16 = half = np.dtype(np.float16)
float32 = float = np.dtype(np.float32)  # PyTorch's alias
float64 = double = np.dtype(np.float64)
int8 = np.dtype(np.int8)
uint8 = np.dtype(np.uint8)
int16 = short = np.dtype(np.int16)
int32 = int = np.dtype(np.int32)
int64 = long = np.dtype(np.int64)
bool = np.dtype(np.bool_)


class _MissingDType:
    """A dtype the array modules do not provide (bfloat16: neither NumPy nor CuPy has it)."""

    def __init__(self, name: str, why: str) -> None:
        self.name, self.why = name, why

    def __repr__(self) -> str:
        return f"dlcore.{self.name}"


bfloat16 = _MissingDType(
    "bfloat16", "bfloat16 is not available: neither NumPy nor CuPy arrays support it; "
    "use float16 or float32")

# The dtypes a Tensor may hold (the documented ones; PyTorch's core set less bfloat16).
# Anything else -- complex, unsigned wider than 8 bits, strings, objects, datetimes --
# raises where data enters (dlcore.tensor, as_tensor, from_numpy, from_dlpack, dtype=).
SUPPORTED: frozenset[np.dtype] = frozenset(
    {float16, float32, float64, int8, int16, int32, int64, uint8, bool})


def check_supported(dtype: np.dtype, op: str) -> np.dtype:
    """``dtype`` itself, or a TypeError naming ``op`` when a Tensor cannot hold it."""
    if dtype not in SUPPORTED:
        raise TypeError(f"{op}: dtype {dtype} is not supported; dlcore tensors hold float16, "
                        "float32, float64, int8, int16, int32, int64, uint8 or bool")
    return dtype


# What ``dtype=`` arguments accept: a dtype (``dlcore.float32``), a NumPy scalar type
# (``numpy.float32``), a name (``"float32"``, ``"float"``), or None for the default.
DTypeLike = np.dtype | type | str | None

_default_float = float32


def get_default_dtype() -> np.dtype:
    return _default_float


def set_default_dtype(dtype: Any) -> None:
    global _default_float
    d = to_dtype(dtype)
    if d.kind != "f":
        raise TypeError(f"set_default_dtype: only floating dtypes are allowed, got {d}")
    _default_float = d


_ALIASES = {"float": float32, "double": float64, "half": float16, "long": int64, "int": int32,
            "bool": bool}


def to_dtype(dtype: Any) -> np.dtype:
    """Normalise a user-given dtype (np.dtype, type, string, ``dlcore.float32``)."""
    if isinstance(dtype, np.dtype):
        return check_supported(dtype, "dtype")
    if isinstance(dtype, _MissingDType):
        raise TypeError(dtype.why)
    if isinstance(dtype, str):
        if dtype == "bfloat16":
            raise TypeError(bfloat16.why)
        dtype = _ALIASES.get(dtype, dtype)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"not a dtype: {dtype!r}") from None
    return check_supported(dt, "dtype")


# NOTE: ``bool``, ``float`` and ``int`` below are the dtypes (PyTorch's aliases), so the
# builtin types are spelt ``builtins.bool`` here.
def is_floating(dtype: np.dtype) -> builtins.bool:
    return dtype.kind == "f"


@lru_cache(maxsize=256)
def promote(a: np.dtype, b: np.dtype) -> np.dtype:
    """Result dtype of a binary operation between two tensors (PyTorch's rules)."""
    if a == b:
        return a
    ka, kb = a.kind, b.kind
    if ka == "b":
        return b
    if kb == "b":
        return a
    fa, fb = ka == "f", kb == "f"
    if fa and not fb:
        return a
    if fb and not fa:
        return b
    return np.promote_types(a, b)


def scalar_result(tensor_dtype: np.dtype, scalar: Any) -> np.dtype:
    """Result dtype of ``tensor op python_scalar``: the scalar never widens the tensor's
    category, it only lifts it (bool -> int64 for an int, int/bool -> default float)."""
    kind = tensor_dtype.kind
    if isinstance(scalar, np.bool_ | type(True)):
        return tensor_dtype
    if isinstance(scalar, np.floating | type(1.0)):
        return tensor_dtype if kind == "f" else _default_float
    if isinstance(scalar, np.integer | type(1)):
        return int64 if kind == "b" else tensor_dtype
    raise TypeError(f"unsupported scalar type {type(scalar).__name__}")
