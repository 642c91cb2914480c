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

import ml_dtypes
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


# bfloat16 is ml_dtypes' NumPy dtype (8 exponent bits, 8 significand bits): NumPy arrays on
# ``cpu``/``emu`` hold it directly. CuPy has no such dtype, so on ``cuda`` a bfloat16 tensor
# holds its 16-bit words in a uint16 array that our kernels read as ``__nv_bfloat16``; uint16
# is otherwise no tensor dtype, so those words cannot be mistaken for data (see
# :func:`bfloat16_bits`, :func:`bfloat16_value` and ``Tensor.dtype``).
# NOTE: its ``dtype.kind`` is "V", not "f": test floating point with :func:`is_floating`.
bfloat16 = np.dtype(ml_dtypes.bfloat16)
BF16_WORDS = np.dtype(np.uint16)  # bfloat16's storage on cuda

# The dtypes a Tensor may hold (the documented ones; PyTorch's core set).
# Anything else -- complex, unsigned wider than 8 bits, strings, objects, datetimes --
# raises where data enters (dlcore.tensor, as_tensor, from_numpy, from_dlpack, dtype=).
SUPPORTED: frozenset[np.dtype] = frozenset(
    {float16, bfloat16, float32, float64, int8, int16, int32, int64, uint8, bool})


def check_supported(dtype: np.dtype, op: str) -> np.dtype:
    """``dtype`` itself, or a TypeError naming ``op`` when a Tensor cannot hold it."""
    if dtype not in SUPPORTED:
        raise TypeError(f"{op}: dtype {dtype} is not supported; dlcore tensors hold float16, "
                        "bfloat16, float32, float64, int8, int16, int32, int64, uint8 or bool")
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
    if not is_floating(d):
        raise TypeError(f"set_default_dtype: only floating dtypes are allowed, got {d}")
    _default_float = d


_ALIASES = {"bfloat16": bfloat16, "float": float32, "double": float64, "half": float16,
            "long": int64, "int": int32,
            "bool": bool}


def to_dtype(dtype: Any) -> np.dtype:
    """Normalise a user-given dtype (np.dtype, type, string, ``dlcore.float32``)."""
    if isinstance(dtype, np.dtype):
        return check_supported(dtype, "dtype")
    if isinstance(dtype, str):
        dtype = _ALIASES.get(dtype, dtype)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"not a dtype: {dtype!r}") from None
    return check_supported(dt, "dtype")


# NOTE: ``bool``, ``float`` and ``int`` below are the dtypes (PyTorch's aliases), so the
# builtin types are spelt ``builtins.bool`` here.
def is_floating(dtype: np.dtype) -> builtins.bool:
    """Whether ``dtype`` is a floating dtype (bfloat16 included, whose ``kind`` is "V")."""
    return dtype.kind == "f" or dtype == bfloat16


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype NumPy should accumulate ``dtype`` in: float32 for bfloat16, whose ml_dtypes
    reductions round every partial sum (``ones(1000, bfloat16).sum()`` is 256), as PyTorch
    and the GPU accumulate bfloat16 in float; ``dtype`` itself otherwise."""
    return float32 if dtype == bfloat16 else dtype


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
    fa, fb = is_floating(a), is_floating(b)
    if fa and not fb:
        return a
    if fb and not fa:
        return b
    if a == bfloat16 or b == bfloat16:
        # PyTorch's: bfloat16 with float16 -> float32, with float32/float64 -> the wider.
        # Spelled out: ml_dtypes 0.7 registers these with NumPy, 0.6 has no bfloat16/float16
        # promotion at all (DTypePromotionError; seen on an H200 image's ml_dtypes 0.6.0)
        other = b if a == bfloat16 else a
        return float32 if other.itemsize <= 2 else other
    return np.promote_types(a, b)


def scalar_result(tensor_dtype: np.dtype, scalar: Any) -> np.dtype:
    """Result dtype of ``tensor op python_scalar``: the scalar never widens the tensor's
    category, it only lifts it (bool -> int64 for an int, int/bool -> default float)."""
    kind = tensor_dtype.kind
    if isinstance(scalar, np.bool_ | type(True)):
        return tensor_dtype
    if isinstance(scalar, np.floating | type(1.0)):
        return tensor_dtype if is_floating(tensor_dtype) else _default_float
    if isinstance(scalar, np.integer | type(1)):
        return int64 if kind == "b" else tensor_dtype
    raise TypeError(f"unsupported scalar type {type(scalar).__name__}")


# ---- bfloat16 <-> float32 on the bit pattern (any array module: cuda's bfloat16 casts) ----
# A bfloat16 is the upper half of a float32, so both directions are a few integer ops that
# CuPy runs as elementwise kernels, and the same code is tested here with NumPy against
# ml_dtypes on every bit pattern.

def bfloat16_value(xp: Any, words: Any) -> Any:
    """float32 array of the bfloat16 values whose 16-bit words are ``words`` (uint16); exact."""
    return (words.astype(xp.uint32) << 16).view(xp.float32)


def bfloat16_bits(xp: Any, x: Any) -> Any:
    """uint16 words of ``x`` (a float32 array) rounded to bfloat16 to nearest, ties to even,
    as ``__float2bfloat16_rn`` and ml_dtypes do: add 0x7FFF plus the lowest kept bit and
    truncate; overflow carries into the exponent and gives inf. A NaN becomes the quiet NaN
    0x7FC0 of its sign, as ml_dtypes (and our emulator) give it (the rounding add could
    otherwise carry a NaN into inf); a GPU's own conversion gives 0x7FFF, so nothing may
    depend on NaN payloads."""
    u = xp.ascontiguousarray(x, dtype=xp.float32).view(xp.uint32)
    rounded = (u + (xp.uint32(0x7FFF) + ((u >> 16) & xp.uint32(1)))) >> 16
    nan = (u & xp.uint32(0x7FFFFFFF)) > xp.uint32(0x7F800000)
    quiet = ((u >> 16) & xp.uint32(0x8000)) | xp.uint32(0x7FC0)
    return xp.where(nan, quiet, rounded).astype(xp.uint16)
