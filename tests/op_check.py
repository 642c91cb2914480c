"""Helpers for op tests: build inputs on a device from NumPy, compare with NumPy
references (per-dtype tolerances) and run float64 gradient checks.

Kept outside conftest so test modules can import it (``tests/`` is on ``sys.path``
because pytest imports ``tests/conftest.py`` from there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import dlcore
from dlcore.testing import gradcheck, gradgradcheck

# (rtol, atol) per dtype: a few ulps of accumulated rounding for small shapes
TOLERANCES = {
    np.dtype(np.float16): (2e-3, 2e-3),
    np.dtype(np.float32): (2e-5, 1e-6),
    np.dtype(np.float64): (1e-10, 1e-12),
}


def rand(*shape: int, seed: int = 0, low: float = -2.0, high: float = 2.0,
         dtype: Any = np.float64) -> np.ndarray:
    """Uniform NumPy array (deterministic per seed)."""
    return np.random.default_rng(seed).uniform(low, high, shape).astype(dtype)


def away_from_zero(*shape: int, seed: int = 0, low: float = 0.2, high: float = 2.0,
                   dtype: Any = np.float64) -> np.ndarray:
    """Values with |x| in [low, high] and random sign: safe for kinks at 0 (abs, relu)."""
    rng = np.random.default_rng(seed)
    mag = rng.uniform(low, high, shape)
    return (mag * rng.choice([-1.0, 1.0], shape)).astype(dtype)


def on(device: str, arr: Any, requires_grad: bool = False) -> dlcore.Tensor:
    """A tensor on ``device`` holding a copy of ``arr`` (its dtype kept)."""
    return dlcore.tensor(np.asarray(arr), device=device, requires_grad=requires_grad)


def check(out: Any, expected: Any, rtol: float | None = None, atol: float | None = None,
          dtype: Any = None) -> None:
    """``out`` is a Tensor equal (within the tolerance of its dtype) to ``expected``,
    with the same shape, and with ``dtype`` when given (else the expected array's)."""
    assert isinstance(out, dlcore.Tensor), f"expected a Tensor, got {type(out).__name__}"
    got = out.numpy()
    exp = np.asarray(expected)
    assert got.shape == exp.shape, f"shape {got.shape} != expected {exp.shape}"
    want_dtype = np.dtype(dtype) if dtype is not None else exp.dtype
    assert got.dtype == want_dtype, f"dtype {got.dtype} != expected {want_dtype}"
    if got.dtype.kind in "biu":
        np.testing.assert_array_equal(got, exp)
        return
    r, a = TOLERANCES.get(got.dtype, (1e-10, 1e-12))
    np.testing.assert_allclose(got, exp.astype(got.dtype), rtol=r if rtol is None else rtol,
                               atol=a if atol is None else atol)


def grad_ok(fn: Callable, arrays: Sequence[Any], device: str, **kw: Any) -> bool:
    """float64 gradcheck of ``fn`` on ``device``: float arrays become float64 tensors that
    require grad; anything else is passed through unchanged."""
    return gradcheck(fn, _inputs(arrays, device), **kw)


def gradgrad_ok(fn: Callable, arrays: Sequence[Any], device: str, **kw: Any) -> bool:
    """float64 second-derivative check of ``fn`` on ``device``."""
    return gradgradcheck(fn, _inputs(arrays, device), **kw)


def _inputs(arrays: Sequence[Any], device: str) -> list[Any]:
    out = []
    for a in arrays:
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            out.append(on(device, a.astype(np.float64), requires_grad=True))
        else:
            out.append(a)
    return out


def direct_conv2d(x: np.ndarray, w: np.ndarray, stride: tuple[int, int] = (1, 1),
                  padding: tuple[int, int] = (0, 0), groups: int = 1) -> np.ndarray:
    """Grouped conv2d (cross-correlation) in float64 by direct loops over the output
    channels, input channels and kernel taps: the slow obvious reference."""
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    fg = f // groups
    y = np.zeros((n, f, oh, ow))
    for o in range(f):
        g = o // fg
        for ci in range(cg):
            for i in range(kh):
                for j in range(kw):
                    y[:, o] += float(w[o, ci, i, j]) * xp[:, g * cg + ci,
                                                          i:i + sh * (oh - 1) + 1:sh,
                                                          j:j + sw * (ow - 1) + 1:sw]
    return y
