"""CPU GEMM shapes OpenBLAS handles badly, and how we call it instead.

OpenBLAS (NumPy's BLAS) has a "small matrix" path for sgemm/dgemm on AVX-512 CPUs
(``*gemm_small_kernel_permit_skylakex.c``: used when M*N*K <= 100^3, for the untransposed
operand layout whatever M and N are): it reads A and B where they lie, without packing them
into panels. Above that size every call packs B, and for a few rows of A (an LSTM's recurrent
``h (N, H) @ W (H, 4H)`` at batch 2-16) the packing costs more than the arithmetic. Splitting
B into column blocks that each fit the small path avoids it (measured, one BLAS thread,
2026-12-02, 2-core AMD EPYC with AVX-512, OpenBLAS 0.3.31, float32; microseconds per product):

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

float64 gains alike ((4, 1024) @ (1024, 256) 150 -> 53). The same holds for the skinny
products of small convolutions (the same day and machine, best of 10, ms): the small path
runs at ~105 GFLOP/s where the packed one gives 50-100, so

- a product at most 64 columns wide, a convolution's ``col (N*P, K) @ w^T (K, O)``, is split
  into row blocks: (4096, 144) @ (144, 16) 0.234 -> 0.179, (4096, 576) @ (576, 32) 1.77 ->
  1.44, (4096, 1152) @ (1152, 32) 5.17 -> 3.22, (4096, 288) @ (288, 64) 1.57 -> 1.42 (at
  128 columns the gain was 0.88-1.14x: not split);
- a product of at most 32 rows with a long reduction, a weight gradient's ``gy (O, N*P) @
  col (N*P, K)``, is split along the reduction and the partial products summed: (16, 4096)
  @ (4096, 144) 0.254 -> 0.200, (16, 8192) @ (8192, 27) 0.154 -> 0.102, (32, 4096) @
  (4096, 288) 0.935 -> 0.806 (64 rows: 0.8-1.0x, not split).

A B used for many products (an LSTM's W_hh, once per step) is better packed once into
contiguous 64-wide column blocks, the reduction cut into chunks where a block would leave the
small path (:class:`PackedColumns`, table at PACK_WIDTH): (4, 1024) @ (1024, 4096) 1299 ->
321 us, the LSTM H=1024 N=4 T=50 forward+backward 214 -> 72 ms. That one is taken only where
threadpoolctl reports a kernel set with the small path (:func:`small_path`): with others
(Haswell's) the blocks ran up to 23% slower than one GEMM.

One row (GEMV either way) and products already in the small path are left alone. Elsewhere
(no small path: another CPU or BLAS) the blocks are ordinary GEMMs, so the split costs
Python calls (about a microsecond each), not arithmetic; a reduction split changes the
order of the sums (float rounding only).
"""

from __future__ import annotations

import functools

import numpy as np

SMALL_MNK = 100 ** 3  # OpenBLAS's small-kernel limit on M*N*K
SPLIT_MAX_MK = 8192  # column blocks: above this M*K they get narrower than 112 columns
# ... and from half that M*K (blocks of 112-127 columns) only for at most 8 rows: on the
# 2-vCPU Intel Xeon VM (2026-12-03, one thread, best of 3x300, µs) 112-column blocks made
# (16, 512) @ (512, 2048) 1462-1713 against 762-873 as one GEMM (an LSTM's recurrent GEMM at
# H=512, N=16: the layer's forward+backward 223 -> 191 ms), (16, 512) @ (512, 1536) 644-817
# -> 559-598 and (32, 256) @ (256, 768) 226-238 -> 187-194, while 8 rows still gained
# ((8, 1024) @ (1024, 3072) 3216-3689 split against 3572-4278).
SPLIT_FULL_MAX_ROWS = 8
ROW_SPLIT_MAX_N = 64  # row blocks: for products at most this wide (B of at most 64 columns)
ROW_SPLIT_MIN_ROWS = 8  # ... whose blocks keep at least this many rows
INNER_SPLIT_MAX_M = 32  # reduction blocks: for at most this many rows of A
INNER_SPLIT_MIN_K = 100  # ... whose blocks keep at least this much of the reduction
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _row_major(x: np.ndarray) -> bool:
    """Unit steps along rows and a row stride of at least a row: what the small path's
    untransposed kernel reads (a transposed view would be its TN kernel, which only takes
    tiny outputs)."""
    return x.strides[1] == x.itemsize and x.strides[0] >= x.shape[1] * x.itemsize


def plan(a: np.ndarray, b: np.ndarray) -> tuple[str, int]:
    """How to compute ``a @ b`` (2-D, one float dtype): ``("one", 0)`` for one GEMM, else
    the axis to split into small-path blocks and the block size: ``"cols"`` (of b and out;
    2-8192/K rows of a), ``"rows"`` (of a and out; b at most 64 columns) or ``"inner"`` (the
    reduction, partial products summed; at most 32 rows of a)."""
    if a.ndim != 2 or b.ndim != 2 or a.dtype not in FLOATS or b.dtype != a.dtype:
        return "one", 0
    m, k = a.shape
    n = b.shape[1]
    if m * k * n <= SMALL_MNK or not (_row_major(a) and _row_major(b)):
        return "one", 0
    if 2 <= m and m * k <= (SPLIT_MAX_MK if m <= SPLIT_FULL_MAX_ROWS else SPLIT_MAX_MK // 2):
        return "cols", SMALL_MNK // (m * k) // 16 * 16
    if n <= ROW_SPLIT_MAX_N and SMALL_MNK // (k * n) >= ROW_SPLIT_MIN_ROWS:
        return "rows", SMALL_MNK // (k * n)
    if m <= INNER_SPLIT_MAX_M and SMALL_MNK // (m * n) >= INNER_SPLIT_MIN_K:
        return "inner", SMALL_MNK // (m * n)
    return "one", 0


def split_columns(a: np.ndarray, b: np.ndarray) -> int:
    """The column block for ``a @ b``, or 0 where :func:`plan` does not split columns."""
    kind, block = plan(a, b)
    return block if kind == "cols" else 0


def matmul_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` in the blocks :func:`plan` chooses (``out`` must have unit
    steps along its rows for a split; otherwise one GEMM)."""
    kind, block = plan(a, b)
    if kind == "one" or out.strides[1] != out.itemsize:
        return np.matmul(a, b, out=out)
    if kind == "cols":
        for j in range(0, b.shape[1], block):
            np.matmul(a, b[:, j:j + block], out=out[:, j:j + block])
    elif kind == "rows":
        for i in range(0, a.shape[0], block):
            np.matmul(a[i:i + block], b, out=out[i:i + block])
    else:  # inner: NumPy's matmul has no beta, so partial products go through one buffer
        np.matmul(a[:, :block], b[:block], out=out)
        part = np.empty_like(out)
        for i in range(block, a.shape[1], block):
            np.matmul(a[:, i:i + block], b[i:i + block], out=part)
            out += part
    return out


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` through :func:`matmul_into` for 2-D float operands, else ``a @ b``."""
    if plan(a, b)[0] == "one":
        return a @ b
    return matmul_into(a, b, np.empty((a.shape[0], b.shape[1]), dtype=a.dtype))


# OpenBLAS kernel sets with the small path (x86-64: SkylakeX's kernels, which the Cooperlake
# and SapphireRapids sets include); threadpoolctl names the set NumPy's OpenBLAS runs
SMALL_PATH_KERNELS = frozenset({"skylakex", "cooperlake", "sapphirerapids"})
# Packed blocks (PackedColumns): B stored as contiguous column blocks, 64 wide, and where a
# block's m*k*64 would leave the small path, its reduction cut into chunks as well (partial
# products summed). Measured (2026-12-04, 2-core Zen 5 VM, OpenBLAS 0.3.31 SkylakeX kernels,
# one thread, float32, best of 3x30-40, us per product; "plan" is matmul_into on the plain
# C-ordered B; "big": a block's m*k*width above SMALL_MNK, off the small path):
#
# =========================  ====  =========  =========  ====================
# shape                      plan  64 wide    32 wide    64 wide, k in chunks
# =========================  ====  =========  =========  ====================
# (4, 1024) @ (1024, 4096)   1299        321        486
# (8, 1024) @ (1024, 4096)   2107        479        652
# (16, 1024) @ (1024, 4096)  1849  big: 1961        809  727 (2 chunks)
# (4, 4096) @ (4096, 1024)    913  big: 1196        471  (not needed: 32 wide)
# (16, 4096) @ (4096, 1024)  1459                   965  773 (8 chunks)
# (32, 1024) @ (1024, 4096)  2108                  1601  1484 (4 chunks)
# (32, 512) @ (512, 2048)     596                   307  322 (2 chunks)
# (16, 256) @ (256, 1024)      97         44         56
# (64, 256) @ (256, 1024)     176                   159  187 (2 chunks)
# (64, 1024) @ (1024, 4096)  3195                  3155  3370 (8 chunks)
# =========================  ====  =========  =========  ====================
#
# So: 64 wide, the fewest chunks that keep the small path, for at most PACK_MAX_ROWS rows; a
# 32-wide single chunk where that alone fits (above that many rows it is the one gain, up to
# 10%, and chunks lost); 16-wide blocks gained at most 8% and lost up to 20%, 128-wide ones
# lost to 64 (600 against 321 at the first shape).
PACK_WIDTH, PACK_NARROW = 64, 32
PACK_MAX_ROWS = 32
PACK_MIN_CHUNK = 64  # the shortest chunk of the reduction
PACK_MNK = SMALL_MNK  # a block's m*k*width at most this: on the small path


@functools.cache
def small_path() -> bool:
    """Whether NumPy's BLAS is an OpenBLAS running a kernel set with the small path."""
    from threadpoolctl import threadpool_info  # a core dependency (dlcore.threads)

    return any(info.get("internal_api") == "openblas"
               and str(info.get("architecture", "")).lower() in SMALL_PATH_KERNELS
               for info in threadpool_info() if info.get("user_api") == "blas")


def pack_plan(m: int, k: int, n: int, dtype: np.dtype) -> tuple[int, int] | None:
    """The blocks :class:`PackedColumns` takes for products ``(m, k) @ (k, n)`` with one B
    used many times (a recurrent weight): ``(width, chunks)``, or None where packing does not
    pay: no small path, one row (a GEMV), another dtype, or no blocks on the small path."""
    if m < 2 or np.dtype(dtype) not in FLOATS or not small_path():
        return None
    if n >= PACK_WIDTH and m <= PACK_MAX_ROWS:
        for chunks in range(1, max(1, k // PACK_MIN_CHUNK) + 1):  # chunks of >= 64
            if k % chunks == 0 and m * (k // chunks) * PACK_WIDTH <= PACK_MNK:
                return PACK_WIDTH, chunks
    if n >= PACK_NARROW and m * k * PACK_NARROW <= PACK_MNK:
        return PACK_NARROW, 1
    return None


class PackedColumns:
    """A matrix ``b`` (k, n) stored as contiguous blocks ``(chunks, n // width, k // chunks,
    width)`` (plus the remaining columns, if any, as one C-ordered block), for many products
    ``a @ b`` with a few rows of ``a``: each block is one small-path GEMM reading memory in
    order (see PACK_WIDTH), all of them one batched ``np.matmul`` call, and the chunks'
    partial products summed. The packing is one copy of ``b``; the products are those of
    ``a @ b`` up to the order of each dot product's sums (float rounding)."""

    def __init__(self, b: np.ndarray, plan: tuple[int, int]) -> None:
        k, n = b.shape
        width, chunks = plan
        self.dtype = b.dtype  # what rnn._matmul_into checks of a recurrent weight
        self.width, self.chunks, self.kc = width, chunks, k // chunks
        self.nfull = n // width * width
        self.blocks = np.ascontiguousarray(
            b[:, :self.nfull].reshape(chunks, self.kc, n // width, width).transpose(0, 2, 1, 3))
        self.tail = np.ascontiguousarray(b[:, self.nfull:]) if self.nfull < n else None
        self._parts: np.ndarray | None = None

    def matmul_into(self, a: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``a @ b`` into ``out`` (m, n), which must have unit steps along its rows."""
        if out.strides[1] != out.itemsize:
            raise ValueError(f"PackedColumns.matmul_into: out needs unit steps along its rows, "
                             f"got strides {out.strides} for shape {out.shape}")
        m, nb = a.shape[0], self.nfull // self.width
        # (blocks, m, width) over out's own memory: each block's rows at out's row stride,
        # which BLAS takes as its leading dimension (no buffer, no copy back)
        view = np.lib.stride_tricks.as_strided(
            out, (nb, m, self.width), (self.width * out.itemsize, out.strides[0], out.itemsize),
            writeable=True)
        if self.chunks == 1:
            np.matmul(a, self.blocks[0], out=view)
        else:
            parts = self._parts
            if parts is None or parts.shape[2] != m or parts.dtype != out.dtype:
                parts = self._parts = np.empty((self.chunks, nb, m, self.width), out.dtype)
            # a's chunks of the reduction, each against its blocks: (chunks, 1, m, kc)
            np.matmul(a.reshape(m, self.chunks, self.kc).transpose(1, 0, 2)[:, None],
                      self.blocks, out=parts)
            np.sum(parts, axis=0, out=view)
        if self.tail is not None:
            np.matmul(a, self.tail, out=out[:, self.nfull:])
        return out


# A transposing copy in square blocks: NumPy's own (np.ascontiguousarray(a.T)) walks the
# source by columns and ran at 0.5 GB/s on a 4096 x 1024 float32 weight (30 ms, 2-core Zen 5
# VM, 2026-12-04); 64 x 64 blocks, each read and written within cache, took 11.5 ms (1024 x 256:
# 334 -> 143 us). The recurrent layers copy W_hh^T so every step.
TRANSPOSE_BLOCK = 64
TRANSPOSE_MIN_ELEMENTS = 1 << 16  # below this the plain copy is as fast


def transposed(a: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
    """``np.ascontiguousarray(a.T, dtype)`` for a 2-D array: the same values, C-contiguous,
    copied block by block (see TRANSPOSE_BLOCK); a.T itself when that is already
    C-contiguous in ``dtype`` (no copy, as ``np.ascontiguousarray``)."""
    dt = a.dtype if dtype is None else np.dtype(dtype)
    t = a.T
    if a.ndim != 2 or t.flags.c_contiguous and t.dtype == dt or a.size < TRANSPOSE_MIN_ELEMENTS:
        return np.ascontiguousarray(t, dtype=dt)
    m, n = a.shape
    out = np.empty((n, m), dtype=dt)
    b = TRANSPOSE_BLOCK
    for i in range(0, m, b):
        rows = a[i:i + b]
        for j in range(0, n, b):
            out[j:j + b, i:i + b] = rows[:, j:j + b].T
    return out
