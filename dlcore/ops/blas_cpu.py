"""CPU GEMM shapes OpenBLAS handles badly, and how we call it instead.

OpenBLAS (NumPy's BLAS) has a "small matrix" path for sgemm/dgemm on AVX-512 CPUs
(``*gemm_small_kernel_permit_skylakex.c``: used when M*N*K <= 100^3, for the untransposed
operand layout whatever M and N are): it reads A and B where they lie, without packing them
into panels. Above that size every call packs B, and for a few rows of A (an LSTM's recurrent
``h (N, H) @ W (H, 4H)`` at batch 2-16) the packing costs more than the arithmetic. Splitting
B into column blocks that each fit the small path avoids it (measured, one BLAS thread,
2026-12-02, 2-core Xeon with AVX-512, OpenBLAS 0.3.31, float32; microseconds per product):

=========================  =======  =====
shape                      one GEMM  split
=========================  =======  =====
(4, 256) @ (256, 1024)         116     38
(8, 256) @ (256, 1024)         138     61
(16, 256) @ (256, 1024)        185    118
(4, 512) @ (512, 2048)         487    140
(2, 1024) @ (1024, 4096)      2051   1244
(8, 1024) @ (1024, 4096)      2388   2516  (M*K 8192 at the limit: blocks of 112 columns)
(64, 256) @ (256, 1024)        417    687  (not split: M*K above SPLIT_MAX_MK)
(8, 1024) @ (1024, 256)         88     50  (an LSTM backward's dxg @ W_hh)
=========================  =======  =====

float64 gains alike ((4, 1024) @ (1024, 256) 150 -> 53). One row (GEMV either way) and
products already in the small path are left alone. Elsewhere (no small path: another CPU
or BLAS) the blocks are ordinary GEMMs of at least 112 columns, each packing its own part of
B once, so the split costs a few Python calls, not arithmetic.
"""

from __future__ import annotations

import numpy as np

SMALL_MNK = 100 ** 3  # OpenBLAS's small-kernel limit on M*N*K
SPLIT_MAX_MK = 8192  # above this M*K the blocks get narrower than 112 columns: no gain
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def split_columns(a: np.ndarray, b: np.ndarray) -> int:
    """The column block for ``a @ b`` (2-D, one float dtype), or 0 for one GEMM."""
    if a.ndim != 2 or b.ndim != 2 or a.dtype not in _FLOATS or b.dtype != a.dtype:
        return 0
    m, k = a.shape
    n = b.shape[1]
    if m < 2 or m * k > SPLIT_MAX_MK or m * k * n <= SMALL_MNK:
        return 0
    # the small path wants each operand row-major with unit steps (a transposed view would
    # be its TN kernel, which only takes tiny outputs)
    if a.strides[1] != a.itemsize or b.strides[1] != b.itemsize:
        return 0
    if a.strides[0] < k * a.itemsize or b.strides[0] < n * b.itemsize:
        return 0
    return SMALL_MNK // (m * k) // 16 * 16


def matmul_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``np.matmul(a, b, out=out)``, in column blocks where :func:`split_columns` says so
    (``out`` C-contiguous rows of ``b.shape[1]``)."""
    cs = split_columns(a, b)
    if cs == 0 or out.strides[1] != out.itemsize:
        return np.matmul(a, b, out=out)
    for j in range(0, b.shape[1], cs):
        np.matmul(a, b[:, j:j + cs], out=out[:, j:j + cs])
    return out


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` through :func:`matmul_into` for 2-D float operands, else ``a @ b``."""
    if split_columns(a, b) == 0:
        return a @ b
    return matmul_into(a, b, np.empty((a.shape[0], b.shape[1]), dtype=a.dtype))
