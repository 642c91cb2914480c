"""The NumPy twin of kernels/philox.cu: Philox4x64-10 blocks and the draws made from them.

The generator is NumPy's own ``numpy.random.Philox`` (which it is tested against); these
functions name the blocks by counter, as the kernels do, so a draw can be recomputed here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["normal", "philox4x64", "uniform"]

_TWO_M53 = 2.0 ** -53


def philox4x64(counters: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """The NumPy twin of kernels/philox.cu's generator: Philox4x64-10 of the counters
    ``(c, 0, 0, 0)`` for each ``c`` in ``counters`` under ``key``: a (len, 4) uint64 array."""
    m32 = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)

    def mulhilo(m: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = np.uint64(m)
        a_lo, a_hi, x_lo, x_hi = a & m32, a >> s32, x & m32, x >> s32
        lo_lo, hi_lo, lo_hi, hi_hi = a_lo * x_lo, a_hi * x_lo, a_lo * x_hi, a_hi * x_hi
        cross = (lo_lo >> s32) + (hi_lo & m32) + (lo_hi & m32)
        return hi_hi + (hi_lo >> s32) + (lo_hi >> s32) + (cross >> s32), a * x

    c = [np.asarray(counters, np.uint64).copy()] + [np.zeros(len(counters), np.uint64)] * 3
    k0, k1 = np.uint64(key[0] % 2**64), np.uint64(key[1] % 2**64)
    with np.errstate(over="ignore"):
        for r in range(10):
            if r:
                k0 = np.uint64((int(k0) + 0x9E3779B97F4A7C15) % 2**64)
                k1 = np.uint64((int(k1) + 0xBB67AE8584CAA73B) % 2**64)
            hi0, lo0 = mulhilo(0xD2E7470EE14C6C93, c[0])
            hi1, lo1 = mulhilo(0xCA5A826395121157, c[2])
            c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
    return np.stack(c, axis=1)


def uniform(start: int, n: int, key: tuple[int, int], low: float, span: float,
            dtype: np.dtype) -> np.ndarray:
    """What ``philox_uniform`` writes for a draw of ``n`` starting at block ``start``."""
    words = philox4x64(np.arange(start, start + (n + 3) // 4), key).reshape(-1)[:n]
    return (low + span * ((words >> np.uint64(11)).astype(np.float64) * _TWO_M53)).astype(dtype)


def normal(start: int, n: int, key: tuple[int, int], mean: float, std: float,
           dtype: np.dtype) -> np.ndarray:
    """What ``philox_normal`` writes (Box-Muller on word pairs), to a few ulps: the kernel's
    log, sin and cos are the device's."""
    blocks = (n + 3) // 4
    words = philox4x64(np.arange(start, start + blocks), key).reshape(-1)
    unit = (words >> np.uint64(11)).astype(np.float64) * _TWO_M53
    r = np.sqrt(-2.0 * np.log(unit[0::2] + _TWO_M53))
    z = np.empty(4 * blocks)
    z[0::2], z[1::2] = r * np.cos(2 * np.pi * unit[1::2]), r * np.sin(2 * np.pi * unit[1::2])
    return (mean + std * z[:n]).astype(dtype)
