"""Winograd F(2x2, 3x3) convolution on the CPU: 3x3 kernels, stride 1, dilation 1, groups 1
(forward, hence the stride-1 data gradient through the flipped forward, and the weight
gradient). :mod:`dlcore.ops.conv_cpu` decides where it is used (``_use_winograd``).

Lavin & Gray 2016. Each 2x2 output tile is ``Y = A^T [(G g G^T) * (B^T d B)] A`` over the
4x4 input tile d (stride 2 between tiles): 16 multiplies per tile and channel pair instead
of 36, so the 16 GEMMs ``M[k] (T, O) = V[k] (T, C) @ U[k] (C, O)`` over T tiles do 4/9 of
the im2col GEMM's flops, and the transformed input V is 4x the input, not 9x.

Layout and blocking (measured on a 2-core VM whose elementwise NumPy passes run at only
1-2 G elements/s, so passes over memory, not flops, decide):

* Bands. The image is processed a band of tile rows (or a few whole images) at a time:
  the input transform writes V for the band, the 16 GEMMs read it and write M, and the
  output transform reads M, while all three are still in L2. Band scratch arrays are
  allocated once per call (:class:`_Scratch`): a fresh ~1 MiB block per band is handed back
  to the system on free and faults its pages in again every band.
* Parity-split columns. The input band is copied channels-last into a buffer whose padded
  columns are split by parity, ``buf[n, row, q % 2, q // 2, C]``. The four columns of
  tile k (2k .. 2k+3) are then even[k], odd[k], even[k+1], odd[k+1]: for all tiles of a
  row at once, each is one contiguous run of ``tw * C`` values, so every transform step is
  an add or subtract of long runs (with C-long runs and a stride of 2C between them, the
  column pass took 48 of the forward's 75 ms at 64 channels 56x56).
* Output and gradient transforms as one GEMM each: ``Y (4, T*O) = kron(A^T, A^T) (4, 16)
  @ M (16, T*O)`` reads M once, where the two separable passes of adds wrote 7x the
  output (a 64-channel band: 229 -> 74 µs); likewise ``M = kron(A, A) (16, 4) @ gy
  tiles (4, T*O)`` for the weight gradient. The input transform stays two passes of
  adds: as a GEMM it needs its 4x4 tiles gathered first (16 copies), which measured no
  faster.

Measured against the previous formulation (C-long runs, whole images; 2026-12-03, one BLAS
thread, N=32, C = O, padding 1, float32, best of 4-6 interleaved runs on a noisy 2-vCPU
Intel Xeon VM, ms): forward 64 ch 56x56 214-251 -> 135-143, 128 ch 28x28 127-134 ->
98-116, 256 ch 14x14 70-78 -> 74-83 (equal within noise); weight gradient 64 ch 209-239
-> 184, 128 ch 129-137 -> 124-131, 256 ch 88-94 -> 87-98.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from ..tensor import is_channels_last

Pair = tuple[int, int]
Band = tuple[int, int, int, int]  # images b0 .. b1, tile rows r0 .. r1

# A band's V (16, T, C) is at least this big, so the transforms' passes are long and V, M
# and the scratch stay near one core's L2 (64 ch 56x56: 6 tile rows, 168 tiles) ...
BAND_BYTES = 768 * 2**10
# ... but holds at least width^2 / 64 tiles, width = max(C, O): each GEMM packs its (C, O)
# operand again, and short bands made 256 ch 14x14 slower (forward, ms: 98 tiles 96, 512
# tiles 83, 1024 tiles 74); 128 ch 28x28 was best at 256 tiles (98 against 108 at 84).
BAND_MIN_TILES_PER_WIDTH2 = 1 / 64
# ... and at most this big (a larger block is mmapped afresh and faults on first touch).
BAND_MAX_BYTES = 16 * 2**20

# F(2, 3): G (4, 3), B^T (4, 4), A^T (2, 4). kron(X, X) applies X along rows and columns of
# a tile flattened row-major (index a*4 + b).
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
_AT = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]])
_GG = np.kron(_G, _G)  # (16, 9): U[a*4+b] = sum_ij G[a, i] G[b, j] g[i, j]
_ATAT = np.kron(_AT, _AT)  # (4, 16): Y[a*2+b] = sum_ij A^T[a, i] A^T[b, j] M[i*4+j]
# The weight gradient: y = A^T [U * V] A is linear in U, so per tile dL/dU = (A gy A^T) * V
# and dL/dg = G^T dL/dU G, summed over tiles. The sign of A's last row, (0, -1), is folded
# into kron(G, G)^T's columns (_GG_BACK), so kron(A', A') has only 0/1/-1 rows of two terms.
_A_FOLDED = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, -1.0], [0.0, 1.0]])
_AA = np.kron(_A_FOLDED, _A_FOLDED)  # (16, 4)
_A_SIGN = np.array([1.0, 1.0, 1.0, -1.0])
_GG_BACK = (_GG * np.kron(_A_SIGN, _A_SIGN)[:, None]).T  # (9, 16)


class _Scratch:
    """Flat arrays reused by every band of one call, one per name, grown on demand."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        size = math.prod(shape)
        a = self.arrays.get(name)
        if a is None or a.size < size:
            a = self.arrays[name] = np.empty(size, dtype=self.dtype)
        return a[:size].reshape(shape)


def _band_rows(tiles: Pair, c: int, o: int, itemsize: int) -> int:
    """Tile rows per band (more than the image's: whole images per band), see BAND_*."""
    th, tw = tiles
    width = max(c, o)
    per_tile = 16 * width * itemsize
    lo = BAND_BYTES // per_tile
    want = max(lo, int(width * width * BAND_MIN_TILES_PER_WIDTH2))
    return max(1, min(want, BAND_MAX_BYTES // per_tile) // tw)


def _bands(n0: int, n1: int, th: int, rows: int) -> Iterator[Band]:
    """Cover images n0 .. n1 in order: groups of whole images when a band holds at least
    one image's th tile rows, else ranges of ``rows`` tile rows of one image."""
    if rows >= th:
        step = rows // th
        for b in range(n0, n1, step):
            yield b, min(n1, b + step), 0, th
        return
    for b in range(n0, n1):
        for r in range(0, th, rows):
            yield b, b + 1, r, min(th, r + rows)


def _input_band(x: np.ndarray, padding: Pair, band: Band, tw: int, v: np.ndarray,
                scratch: _Scratch) -> None:
    """v (16, nb, rb, tw, C) = B^T d B over the band's 4x4 input tiles d of x (N, C, H, W,
    any layout), zero-padded by ``padding`` and on the bottom/right to whole tiles. B^T has
    the rows (1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)."""
    b0, b1, r0, r1 = band
    nb, rb = b1 - b0, r1 - r0
    c, h, wd = x.shape[1:]
    ph, pw = padding
    # padded rows 2*r0 .. 2*r1 + 1 of the band, columns split by parity (see module doc)
    buf = scratch.get("input", (nb, 2 * rb + 2, 2, tw + 1, c))
    i0 = max(0, ph - 2 * r0)
    i1 = max(i0, min(2 * rb + 2, h + ph - 2 * r0))
    buf[:, :i0] = 0
    buf[:, i1:] = 0
    src = x[b0:b1, :, 2 * r0 + i0 - ph:2 * r0 + i1 - ph].transpose(0, 2, 3, 1)  # NHWC view
    for p in (0, 1):
        k0 = -((p - pw) // 2)  # first k whose padded column 2k + p is an input column
        k1 = min(tw + 1, (wd - 1 + pw - p) // 2 + 1)
        dst = buf[:, i0:i1, p]
        if k1 <= k0:
            dst[...] = 0
            continue
        s0 = 2 * k0 + p - pw
        dst[:, :, k0:k1] = src[:, :, s0:s0 + 2 * (k1 - k0) - 1:2]
        dst[:, :, :k0] = 0
        dst[:, :, k1:] = 0
    r = [buf[:, i:i + 2 * rb:2] for i in range(4)]  # tile row offset i: (nb, rb, 2, tw+1, C)
    t = scratch.get("rows", (nb, rb, 2, tw + 1, c))
    for i, (a, b, op) in enumerate(((0, 2, np.subtract), (1, 2, np.add),
                                    (2, 1, np.subtract), (1, 3, np.subtract))):
        op(r[a], r[b], out=t)  # row i of B^T d
        even, odd = t[:, :, 0], t[:, :, 1]  # (nb, rb, tw+1, C)
        np.subtract(even[:, :, :tw], even[:, :, 1:], out=v[4 * i])
        np.add(odd[:, :, :tw], even[:, :, 1:], out=v[4 * i + 1])
        np.subtract(even[:, :, 1:], odd[:, :, :tw], out=v[4 * i + 2])
        np.subtract(odd[:, :, :tw], odd[:, :, 1:], out=v[4 * i + 3])


def _output_band(m: np.ndarray, band: Band, out_hw: Pair, y: np.ndarray, nhwc: bool,
                 scratch: _Scratch) -> None:
    """The band's output rows of y (N, O, OH, OW), or (N, OH, OW, O) memory when ``nhwc``,
    = A^T M A from m (16, nb*rb*tw*O): one GEMM, then the four tile positions scattered."""
    b0, b1, r0, r1 = band
    nb, rb = b1 - b0, r1 - r0
    oh, ow = out_hw
    o = y.shape[3] if nhwc else y.shape[1]
    tw = m.shape[1] // (nb * rb * o)
    y4 = scratch.get("output", (4, m.shape[1]))
    np.matmul(_ATAT.astype(m.dtype), m, out=y4)
    y4 = y4.reshape(2, 2, nb, rb, tw, o)
    rows = min(oh, 2 * r1) - 2 * r0
    for a in (0, 1):
        ra = (rows - a + 1) // 2
        for p in (0, 1):
            part = y4[a, p, :, :ra, :(ow - p + 1) // 2]
            if nhwc:
                y[b0:b1, 2 * r0 + a:2 * r0 + rows:2, p::2] = part
            else:
                y[b0:b1, :, 2 * r0 + a:2 * r0 + rows:2, p::2] = part.transpose(0, 3, 1, 2)


def _grad_output_band(gy: np.ndarray, band: Band, tw: int, m: np.ndarray,
                      scratch: _Scratch) -> None:
    """m (16, nb*rb*tw*O) = A' gy A'^T (A' the sign-folded A) over the band's 2x2 tiles of
    gy (N, O, OH, OW, any layout), zero-padded on the bottom/right to whole tiles."""
    b0, b1, r0, r1 = band
    nb, rb = b1 - b0, r1 - r0
    o, oh, ow = gy.shape[1:]
    g4 = scratch.get("grad", (2, 2, nb, rb, tw, o))  # [row parity, column parity]
    rows = min(oh, 2 * r1) - 2 * r0
    for a in (0, 1):
        ra = (rows - a + 1) // 2
        src = gy[b0:b1, :, 2 * r0 + a:2 * r0 + rows:2].transpose(0, 2, 3, 1)  # NHWC view
        for p in (0, 1):
            cnt = (ow - p + 1) // 2
            g4[a, p, :, :ra, :cnt] = src[:, :, p::2]
            g4[a, p, :, :ra, cnt:] = 0
            g4[a, p, :, ra:] = 0
    np.matmul(_AA.astype(gy.dtype), g4.reshape(4, -1), out=m)


def winograd_weight(w: np.ndarray) -> np.ndarray:
    """U (16, C, O) = G g G^T per (O, C) pair: one (16, 9) @ (9, C*O) GEMM in w's dtype on
    w's (C, O) order, so U comes out (16, C, O) row-major, the layout OpenBLAS's small-matrix
    path reads in place (reordering w copies 9 values per pair, reordering U would copy 16)."""
    o, c = w.shape[:2]
    wt = w.transpose(1, 0, 2, 3).reshape(c * o, 9)  # (C*O, 9): a copy in (C, O) order
    return (_GG.astype(w.dtype) @ wt.T).reshape(16, c, o)


def winograd_forward(x: np.ndarray, w: np.ndarray, out_hw: Pair, padding: Pair) -> np.ndarray:
    """y = conv2d(x, w) for a 3x3, stride-1, dilation-1, groups-1 kernel, band by band (see
    the module doc). A channels-last x gives a channels-last y, an NCHW x an NCHW y.

    Rounding (float32): max |y - y64| / max |y64| on random normal data (N=8, the ResNet
    shapes C = O = 16..512, padding 1) measured 2.1e-7 (16 ch) .. 6.5e-7 (512 ch) with the
    same transforms done as separate passes, against im2col's 4.9e-7 .. 6.8e-7: the GEMMs
    sum C products instead of 9*C. float64 agrees with direct loops to ~1e-14.
    """
    n, c = x.shape[:2]
    o = w.shape[0]
    oh, ow = out_hw
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    u = winograd_weight(w)
    nhwc = is_channels_last(x)
    y = np.empty((n, oh, ow, o) if nhwc else (n, o, oh, ow), dtype=x.dtype)
    scratch = _Scratch(x.dtype)
    for band in _bands(0, n, th, _band_rows((th, tw), c, o, x.itemsize)):
        tiles = (band[1] - band[0]) * (band[3] - band[2]) * tw
        v = scratch.get("v", (16, tiles, c))
        _input_band(x, padding, band, tw, v.reshape(16, band[1] - band[0], -1, tw, c),
                    scratch)
        m = scratch.get("m", (16, tiles, o))
        np.matmul(v, u, out=m)
        _output_band(m.reshape(16, -1), band, out_hw, y, nhwc, scratch)
    return y.transpose(0, 3, 1, 2) if nhwc else y


def winograd_backward_weight(x: np.ndarray, gy: np.ndarray, padding: Pair) -> np.ndarray:
    """gw (O, C, 3, 3) of y = conv2d(x, w) for a 3x3, stride-1, dilation-1, groups-1
    kernel: X[k] (C, O) = sum over tiles of V[k]^T M[k] (16 GEMMs per band, 4/9 of the
    im2col GEMM's flops), then gw = kron(G, G)^T X. Bands as the forward's (_band_rows): the
    input and gradient transforms write V and M for a band and its GEMMs read them while they
    are still in L2, the band's (16, C, O) product added to the sum. float64 agrees with the
    im2col gradient to ~1.5e-15 of max |gw|; float32 measured 6.5e-7 (im2col 5.0e-7) at
    64 ch 56x56.

    Bands replaced chunks of whole images (16 MiB of V and M: two images at 64 ch 56x56),
    whose V and M went out to memory and back (2026-12-04, 2-core Zen 5 VM, one BLAS thread,
    N=32, C = O, best of 4x2 interleaved, ms, SkylakeX / Haswell kernels): 64 ch 56x56
    75 / 82 -> 44 / 66, 128 ch 28x28 42 / 52 -> 32 / 45, 256 ch 14x14 35 / 44 -> 36 / 43
    (its bands already held ~1000 tiles)."""
    n, c = x.shape[:2]
    o, oh, ow = gy.shape[1:]
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    acc = np.zeros((16, c, o), dtype=x.dtype)
    part = np.empty_like(acc)
    scratch = _Scratch(x.dtype)
    for band in _bands(0, n, th, _band_rows((th, tw), c, o, x.itemsize)):
        b0, b1, r0, r1 = band
        tiles = (b1 - b0) * (r1 - r0) * tw
        v = scratch.get("v", (16, tiles, c))
        m = scratch.get("m", (16, tiles, o))
        _input_band(x, padding, band, tw, v.reshape(16, b1 - b0, r1 - r0, tw, c), scratch)
        _grad_output_band(gy, band, tw, m.reshape(16, -1), scratch)
        np.matmul(v.transpose(0, 2, 1), m, out=part)
        acc += part
    gw = _GG_BACK.astype(x.dtype) @ acc.reshape(16, c * o)  # (9, C*O)
    return np.ascontiguousarray(gw.reshape(3, 3, c, o).transpose(3, 2, 0, 1))
