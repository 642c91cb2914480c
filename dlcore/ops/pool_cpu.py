"""Pooling on the CPU: the NumPy implementation of the array-level contract in
:mod:`dlcore.ops.pool` (and the oracle the CUDA kernels are validated against).

Every function takes the tensors' ``device`` first (unused here) so that both paths share
one signature. Shapes: x (N, C, H, W), y (N, C, OH, OW). Arguments arrive validated, as int
pairs, with output sizes from :func:`dlcore.ops.pool.pool2d_out_size` (PyTorch's arithmetic,
ceil_mode included).

Formulation: a reduction over the kernel offsets of slices of the (padded) input, one ufunc
per offset and never a loop over pixels, run block by block of planes so that each block
stays in cache, on the phase-split layout of :class:`WindowLayout` where every slice is
contiguous along W. Max pooling takes the first maximum in row-major scan order (a NaN wins,
the last one where there are several, as PyTorch); padding is -inf, so it never wins over a
number. Average pooling is separable (window sums over columns, then rows) and scaled by
:func:`avg_scale`, the table the kernels multiply by too. The autograd path saves a byte per
max pooling window (:class:`MaxCodes`) and computes the flat indices only when asked.
Indices follow ``return_indices``: the flat position h*W + w inside each (n, c) plane, as
int32 (a plane holds fewer than 2^31 elements; dlcore.ops.pool widens them for the user).

float16 is computed in float32 and each result rounded to float16 once, as the kernels do
(NumPy's float16 ufuncs would round after every addition).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

Pair = tuple[int, int]

INDEX_DTYPE = np.dtype(np.int32)
_HALVES = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.uint16))


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype an op on ``dtype`` arrays computes in: float32 for float16 and bfloat16
    (ml_dtypes', or its uint16 words on cuda), else itself."""
    return np.dtype(np.float32) if dtype in _HALVES else np.dtype(dtype)


def _widened(a: np.ndarray) -> np.ndarray:
    return a.astype(compute_dtype(a.dtype), copy=False)


def _span(out: int, k: int, s: int, d: int) -> int:
    """Padded-input extent that ``out`` windows read."""
    return (out - 1) * s + d * (k - 1) + 1


# Planes per block of the blocked max pooling loops: a block's padded input, output, codes and
# scratch stay in L2 (2 MiB a core here), so each of the kh*kw passes reads cache, not DRAM.
BLOCK_BYTES = 1 << 20


class WindowLayout:
    """The geometry of one pooling call, laid out for blocked, contiguous passes.

    The padded input's columns are split by their phase modulo the column stride (sw arrays,
    each contiguous), so kernel offset k = (i, j) of every window is a slice with unit
    inner stride of one phase array: rows i*dh::sh, columns from (j*dw) // sw, of phase
    (j*dw) % sw. NumPy runs contiguous inner loops vectorised and strided ones element by
    element, so the de-interleaving copy, which also does the padding, pays for itself
    (with the blocking, the stem's 3x3/2 forward measured 5x faster than whole-tensor passes
    over strided views). With unit column stride
    and no padding the input planes are the (only) phase array, uncopied.

    Average pooling uses the same layout (dilation 1), separably. A max pooling window's
    winner is saved as its code: k, the offset in row-major scan order (uint8
    where kh*kw <= 256), a quarter of the int32 flat index; :meth:`flat` turns codes into the
    public flat indices when they are asked for.
    """

    def __init__(self, x_shape: tuple[int, ...], out_hw: Pair, kernel: Pair, stride: Pair,
                 padding: Pair, dilation: Pair) -> None:
        self.x_shape, self.out_hw = tuple(x_shape), out_hw
        self.kernel, self.stride, self.padding, self.dilation = kernel, stride, padding, dilation
        n, c, h, w = self.x_shape
        (oh, ow), (kh, kw), (sh, sw), (ph, pw), (dh, dw) = out_hw, kernel, stride, padding, \
            dilation
        self.planes = n * c
        self.extent = eh, ew = _span(oh, kh, sh, dh), _span(ow, kw, sw, dw)
        self.rows = min(h, eh - ph)  # input rows inside the extent, from padded row ph
        self.direct = sw == 1 and ph == 0 and pw == 0 and eh <= h and ew <= w
        self.code_dtype = np.dtype(np.uint8 if kh * kw <= 256 else np.int32)
        # per used phase p: (p, padded width, first column q inside the input, count, the
        # input column at q)
        self.phases = []
        for p in sorted({(j * dw) % sw for j in range(kw)}):
            width = (ew - p + sw - 1) // sw
            first = max(0, -((p - pw) // sw))  # ceil((pw - p) / sw), at least 0
            last = min(width, (min(w, ew - pw) + pw - p + sw - 1) // sw)
            self.phases.append((p, width, first, max(0, last - first), first * sw + p - pw))
        self.taps = [(i * dh, [q for q, (p, *_) in enumerate(self.phases)
                               if p == (j * dw) % sw][0], (j * dw) // sw)
                     for i in range(kh) for j in range(kw)]
        # windows never share an input position: a gradient can be stored, not added
        self.disjoint = sh >= dh * (kh - 1) + 1 and sw >= dw * (kw - 1) + 1

    def block(self, itemsize: int) -> int:
        """Planes per block."""
        eh, ew = self.extent
        return max(1, min(self.planes, BLOCK_BYTES // max(1, eh * ew * itemsize)))

    def buffers(self, planes: int, dtype: np.dtype, fill: float) -> list[np.ndarray]:
        """One array per used phase, for ``planes`` planes, filled with ``fill`` (padding
        stays so: blocks only rewrite the input's positions)."""
        return [np.full((planes, self.extent[0], width), fill, dtype)
                for _, width, *_ in self.phases]

    def load(self, buffers: list[np.ndarray], x: np.ndarray) -> list[np.ndarray]:
        """The phase arrays of the planes ``x`` (B, H, W): ``buffers`` filled, or x itself."""
        if self.direct:
            return [x]
        ph, rows, sw = self.padding[0], self.rows, self.stride[1]
        out = []
        for buf, (_, _, first, count, col) in zip(buffers, self.phases):
            buf = buf[:len(x)]
            if count:
                np.copyto(buf[:, ph:ph + rows, first:first + count],
                          x[:, :rows, col:col + sw * (count - 1) + 1:sw])
            out.append(buf)
        return out

    def store(self, buffers: list[np.ndarray], gx: np.ndarray) -> None:
        """The inverse of :meth:`load`: the input's positions of ``buffers`` into gx (B, H, W),
        cast to gx's dtype."""
        ph, rows, sw = self.padding[0], self.rows, self.stride[1]
        for buf, (_, _, first, count, col) in zip(buffers, self.phases):
            if count:
                gx[:, :rows, col:col + sw * (count - 1) + 1:sw] = \
                    buf[:len(gx), ph:ph + rows, first:first + count]

    def views(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """The kh*kw offset views (B, OH, OW) of the phase arrays, in row-major scan order."""
        (oh, ow), sh = self.out_hw, self.stride[0]
        return [arrays[q][:, r:r + sh * (oh - 1) + 1:sh, col:col + ow]
                for r, q, col in self.taps]

    def positions(self, shape: tuple[int, int, int],
                  origin: Pair) -> tuple[np.ndarray, np.ndarray]:
        """(offset, base) in a C-ordered block of ``shape`` (B, rows, cols) whose position
        (0, 0) is padded position ``origin``: offset k's place inside a window, and each
        window's first tap (B, OH, OW) plus its plane's start, as intp (``np.add.at``'s index
        type, measured 1.5x faster than int32)."""
        planes, rows, cols = shape
        (oh, ow), (kh, kw), (sh, sw), (dh, dw) = self.out_hw, self.kernel, self.stride, \
            self.dilation
        offset = np.array([(k // kw) * dh * cols + (k % kw) * dw for k in range(kh * kw)],
                          np.intp)
        base = (np.arange(planes, dtype=np.intp)[:, None, None] * (rows * cols)
                + (np.arange(oh, dtype=np.intp) * sh - origin[0])[:, None] * cols
                + np.arange(ow, dtype=np.intp) * sw - origin[1])
        return offset, base

    def flat(self, codes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Flat indices h*W + w inside each plane (int32, -1 for a dilated window without an
        input tap) of the codes (..., OH, OW)."""
        n, c, h, w = self.x_shape
        (oh, ow), (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.out_hw, self.kernel, \
            self.stride, self.padding, self.dilation
        offset = np.array([(k // kw) * dh * w + (k % kw) * dw for k in range(kh * kw)],
                          INDEX_DTYPE)
        origin = ((np.arange(oh, dtype=INDEX_DTYPE) * sh - ph)[:, None] * w
                  + (np.arange(ow, dtype=INDEX_DTYPE) * sw - pw)[None, :])
        indices = np.take(offset, codes, out=out)
        indices += origin
        if dh > 1 or dw > 1:  # a dilated window may have no tap inside the input: index -1
            inside = np.outer(_has_tap(h, oh, kh, sh, ph, dh), _has_tap(w, ow, kw, sw, pw, dw))
            indices[..., ~inside] = -1
        return indices


class MaxCodes(NamedTuple):
    """What the CPU autograd path saves of a max pooling: each window's code (N, C, OH, OW)
    and the geometry that reads them."""

    codes: np.ndarray
    windows: WindowLayout
    # whether some winner may be a padding tap (a window of -inf, or none inside the input)
    padding_wins: bool

    def flat(self) -> np.ndarray:
        """The flat int32 indices of the contract, computed from the codes."""
        return self.windows.flat(self.codes)


def max_pool2d_forward(device: Any, x: np.ndarray, out_hw: Pair, kernel: Pair, stride: Pair,
                       padding: Pair, dilation: Pair) -> tuple[np.ndarray, np.ndarray]:
    """(y, indices int32): :func:`max_pool2d_forward_codes` with its flat indices."""
    y, _, indices = max_pool2d_forward_codes(x, out_hw, kernel, stride, padding, dilation,
                                             flat=True)
    assert indices is not None
    return y, indices


def _has_tap(size: int, out: int, k: int, s: int, p: int, d: int) -> np.ndarray:
    """Per output along one dim: whether any of its window's taps lands in [0, size)."""
    taps = np.arange(out)[:, None] * s - p + np.arange(k)[None, :] * d
    return np.asarray(((taps >= 0) & (taps < size)).any(axis=1))


def max_pool2d_backward(device: Any, gy: np.ndarray, indices: np.ndarray,
                        x_shape: tuple[int, ...], kernel: Pair, stride: Pair, padding: Pair,
                        dilation: Pair) -> np.ndarray:
    """gx: each output gradient added at its argmax (windows may overlap, so an unbuffered
    ``np.add.at`` scatter, in output order; it measured 2.3x faster than ``bincount`` here).
    The window geometry is not needed on the CPU; a window without an input tap (index -1,
    only with dilation) adds nothing. The kernels' oracle; autograd on the cpu runs
    :func:`max_pool2d_backward_codes`, which sums in the same order."""
    n, c, h, w = x_shape
    plane = (np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1, 1)
    at = (indices + plane).ravel()
    g = _widened(gy).ravel()
    if indices.size and indices.min() < 0:
        keep = indices.ravel() >= 0
        at, g = at[keep], g[keep]
    gx = np.zeros(n * c * h * w, dtype=compute_dtype(gy.dtype))  # the scatter's identity
    np.add.at(gx, at, g)
    return gx.reshape(x_shape).astype(gy.dtype, copy=False)


def max_pool2d_forward_codes(x: np.ndarray, out_hw: Pair, kernel: Pair, stride: Pair,
                             padding: Pair, dilation: Pair, flat: bool = False
                             ) -> tuple[np.ndarray, MaxCodes, np.ndarray | None]:
    """(y, codes, flat indices or None): the CPU autograd path's forward, which saves the
    codes (see :class:`WindowLayout`) and computes flat indices only when asked.

    Block by block of planes, a running maximum over the offset views, tracking the last
    offset that strictly raised it: that is the first maximum in scan order (an offset only
    equal to the maximum never raises it). The code update is arithmetic on bytes,
    code = max(code, k * (v > y)), as later offsets have larger k; measured over 30x faster
    than a masked store (putmask, copyto(where=)). A NaN never compares greater, so a block whose
    maximum holds a NaN then sets the code of each NaN offset in scan order: the last NaN
    wins, as in PyTorch. float16 needs no widening: a maximum is one of its inputs, exactly.
    """
    n, c, h, w = x.shape
    win = WindowLayout(x.shape, out_hw, kernel, stride, padding, dilation)
    planes = np.ascontiguousarray(x).reshape(win.planes, h, w)
    shape = (n, c, *out_hw)
    if _planes_last(win):
        y, codes, padding_wins = _max_pool_planes_last(planes, win)
        indices = win.flat(codes) if flat else None
        return (y.reshape(shape), MaxCodes(codes.reshape(shape), win, padding_wins),
                None if indices is None else indices.reshape(shape))
    y = np.empty((win.planes, *out_hw), x.dtype)
    codes = np.empty((win.planes, *out_hw), win.code_dtype)
    indices = np.empty((win.planes, *out_hw), INDEX_DTYPE) if flat else None
    size = win.block(x.dtype.itemsize)
    buffers = [] if win.direct else win.buffers(size, x.dtype, -np.inf)
    # the comparisons' bools, read as bytes: a byte multiply is vectorised, bool * uint8 not
    raised = np.empty((size, *out_hw), np.uint8)
    step = np.empty((size, *out_hw), win.code_dtype)
    padding_wins = False
    for lo in range(0, win.planes, size):
        hi = min(lo + size, win.planes)
        views = win.views(win.load(buffers, planes[lo:hi]))
        yb, cb = y[lo:hi], codes[lo:hi]
        padding_wins |= _running_max(views, yb, cb, step[:hi - lo], raised[:hi - lo])
        if indices is not None:
            win.flat(cb, out=indices[lo:hi])
    return (y.reshape(shape), MaxCodes(codes.reshape(shape), win, padding_wins),
            None if indices is None else indices.reshape(shape))


def _running_max(views: list[np.ndarray], yb: np.ndarray, cb: np.ndarray, kb: np.ndarray,
                 raised: np.ndarray) -> bool:
    """yb = the maximum over the offset ``views`` and cb its code (the first maximum in scan
    order, the last NaN where there is one), with the scratch kb (codes) and raised (bytes)
    of yb's shape; returns whether some window's maximum is -inf (a padding tap may win)."""
    gt = raised.view(bool)
    code = cb.dtype.type
    if len(views) == 1:
        np.copyto(yb, views[0])
        cb.fill(0)
    for k in range(1, len(views)):
        before = views[0] if k == 1 else yb
        np.greater(views[k], before, out=gt)
        np.maximum(before, views[k], out=yb)
        if k == 1:
            np.copyto(cb, raised)
            continue
        np.multiply(raised, code(k), out=kb)
        np.maximum(cb, kb, out=cb)
    if np.isfinite(yb).all():
        return False
    # rare: a NaN or -inf wins some window
    if np.isnan(yb).any():  # the last NaN of the window is the winner
        for k, v in enumerate(views):
            np.copyto(cb, k, where=np.isnan(v))
    return bool(np.isneginf(yb).any())


# Small planes with tiling windows (kernel == stride, no padding or dilation: LeNet's 2x2/2 on
# 8x8 and 4x4 digits) run planes-last: one transposing copy to (H, W, planes), so each offset
# view is (OH, OW, planes) with the planes contiguous innermost, instead of the phase layout
# whose inner runs are OW values long (4 or 2 here: NumPy's per-run overhead dominated).
# Measured (2026-12-03, one thread, 2-core Intel VM shared with other jobs, min of 200-300,
# 2x2/2 forward, N=64 C=32): 4x4 262 -> 92 µs, 8x8 717-807 -> 285-357 µs; slower from 16x16
# (1.8 -> 3.1 ms: the two transposing copies cost more than the long runs save).
PLANES_LAST_MAX_PIXELS = 64


def _planes_last(win: WindowLayout) -> bool:
    _, _, h, w = win.x_shape
    (kh, kw), (oh, ow) = win.kernel, win.out_hw
    return (win.kernel == win.stride and win.padding == (0, 0) and win.dilation == (1, 1)
            and h * w <= PLANES_LAST_MAX_PIXELS and oh * kh <= h and ow * kw <= w)


def _max_pool_planes_last(planes: np.ndarray, win: WindowLayout
                          ) -> tuple[np.ndarray, np.ndarray, bool]:
    """(y, codes) (planes, OH, OW) and the -inf flag of :func:`_running_max`, computed in the
    planes-last layout (see PLANES_LAST_MAX_PIXELS) and transposed back."""
    (oh, ow), (kh, kw) = win.out_hw, win.kernel
    xt = np.ascontiguousarray(planes[:, :oh * kh, :ow * kw].transpose(1, 2, 0))
    views = [xt[i::kh, j::kw] for i in range(kh) for j in range(kw)]  # (OH, OW, planes)
    yt = np.empty((oh, ow, len(planes)), planes.dtype)
    ct = np.empty(yt.shape, win.code_dtype)
    minus_inf = _running_max(views, yt, ct, np.empty(yt.shape, win.code_dtype),
                             np.empty(yt.shape, np.uint8))
    return (np.ascontiguousarray(yt.transpose(2, 0, 1)),
            np.ascontiguousarray(ct.transpose(2, 0, 1)), minus_inf)


def max_pool2d_backward_codes(gy: np.ndarray, saved: MaxCodes) -> np.ndarray:
    """gx of the CPU autograd path: block by block of planes, each output gradient added at
    its winner's position (``np.add.at``, in output order, the order of
    :func:`max_pool2d_backward`'s scatter, so both give the same sums to the bit). In cache,
    the block's scatter measured 5x faster than one masked add per kernel offset. Where a
    winner may be a padding tap (see :class:`MaxCodes`) the block is padded and cropped
    into gx, so such a gradient reaches no input; float16 and bfloat16 are summed in a
    float32 block and rounded once, on its copy into gx."""
    win = saved.windows
    n, c, h, w = win.x_shape
    (ph, pw), (eh, ew) = win.padding, win.extent
    dtype = compute_dtype(gy.dtype)
    grads = np.ascontiguousarray(gy).reshape(win.planes, *win.out_hw)
    codes = saved.codes.reshape(win.planes, *win.out_hw)
    gx = np.zeros((win.planes, h, w), gy.dtype)  # input positions no window reads stay 0
    rows, cols = win.rows, min(w, ew - pw)
    size = win.block(dtype.itemsize)
    padded = saved.padding_wins
    if padded:
        shape = (size, max(eh, ph + rows), max(ew, pw + cols))
        offset, base = win.positions(shape, (0, 0))
    else:
        shape = (size, h, w)
        offset, base = win.positions(shape, win.padding)
    buf = np.empty(shape, dtype) if padded or dtype != gx.dtype else None
    at = np.empty((size, *win.out_hw), np.intp)
    for lo in range(0, win.planes, size):
        hi = min(lo + size, win.planes)
        target = gx[lo:hi] if buf is None else buf[:hi - lo]
        if buf is not None:
            target.fill(0.0)
        np.take(offset, codes[lo:hi], out=at[:hi - lo], mode="clip")  # codes are in range
        at_b = np.add(at[:hi - lo], base[:hi - lo], out=at[:hi - lo])
        np.add.at(target.reshape(-1), at_b.reshape(-1), _widened(grads[lo:hi]).reshape(-1))
        if padded:
            gx[lo:hi, :rows, :cols] = target[:, ph:ph + rows, pw:pw + cols]
        elif buf is not None:
            gx[lo:hi] = target
    return gx.reshape(win.x_shape)


def avg_divisor(size: int, out: int, k: int, s: int, p: int,
                count_include_pad: bool) -> np.ndarray:
    """Per-output window sizes along one dim, PyTorch's rule: the window is clipped to the
    padded input, and (count_include_pad=False) further to the input itself."""
    start = np.arange(out) * s - p
    end = np.minimum(start + k, size + p)
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


def avg_scale(x_hw: Pair, out_hw: Pair, kernel: Pair, stride: Pair, padding: Pair,
              count_include_pad: bool, divisor_override: int | None,
              dtype: np.dtype) -> np.ndarray:
    """The (OH, OW) factors 1/divisor each window sum is multiplied by, in ``dtype`` (the
    kernels multiply by the same table, see :mod:`dlcore.ops.pool_cuda`)."""
    if divisor_override:
        return np.full(out_hw, 1.0 / divisor_override, dtype=dtype)
    dh = avg_divisor(x_hw[0], out_hw[0], kernel[0], stride[0], padding[0], count_include_pad)
    dw = avg_divisor(x_hw[1], out_hw[1], kernel[1], stride[1], padding[1], count_include_pad)
    return (1.0 / np.outer(dh, dw)).astype(dtype)


def avg_pool2d_forward(device: Any, x: np.ndarray, out_hw: Pair, kernel: Pair, stride: Pair,
                       padding: Pair, count_include_pad: bool,
                       divisor_override: int | None) -> np.ndarray:
    """y: separable window sums (columns, then rows) times 1/divisor, block by block of
    planes on the phase-split padded input of :class:`WindowLayout` (contiguous slices)."""
    n, c, h, w = x.shape
    (kh, kw), sh = kernel, stride[0]
    oh, ow = out_hw
    win = WindowLayout(x.shape, out_hw, kernel, stride, padding, (1, 1))
    dtype = compute_dtype(x.dtype)
    scale = avg_scale((h, w), out_hw, kernel, stride, padding, count_include_pad,
                      divisor_override, dtype)
    planes = np.ascontiguousarray(x).reshape(win.planes, h, w)
    y = np.empty((win.planes, oh, ow), x.dtype)
    size = win.block(dtype.itemsize)
    buffers = [] if win.direct else win.buffers(size, dtype, 0.0)
    rows = np.empty((size, win.extent[0], ow), dtype)
    part = np.empty((size, oh, ow), dtype)
    for lo in range(0, win.planes, size):
        hi = min(lo + size, win.planes)
        arrays = win.load(buffers, _widened(planes[lo:hi]))
        rb, yb = rows[:hi - lo], part[:hi - lo]
        cols = [arrays[q][:, :, col:col + ow] for _, q, col in win.taps[:kw]]
        np.copyto(rb, cols[0])
        for v in cols[1:]:
            rb += v
        np.copyto(yb, rb[:, 0:sh * (oh - 1) + 1:sh])
        for i in range(1, kh):
            yb += rb[:, i:i + sh * (oh - 1) + 1:sh]
        yb *= scale
        y[lo:hi] = yb
    return y.reshape(n, c, oh, ow)


def avg_pool2d_backward(device: Any, gy: np.ndarray, x_shape: tuple[int, ...], kernel: Pair,
                        stride: Pair, padding: Pair, count_include_pad: bool,
                        divisor_override: int | None) -> np.ndarray:
    """gx: gy/divisor spread over each window, separably (rows, then columns), block by block
    into the phase-split padded layout of :class:`WindowLayout`, whose input positions are
    then copied into gx."""
    n, c, h, w = x_shape
    (kh, kw), sh = kernel, stride[0]
    oh, ow = gy.shape[2:]
    win = WindowLayout(x_shape, (oh, ow), kernel, stride, padding, (1, 1))
    dtype = compute_dtype(gy.dtype)
    scale = avg_scale((h, w), (oh, ow), kernel, stride, padding, count_include_pad,
                      divisor_override, dtype)
    grads = np.ascontiguousarray(gy).reshape(win.planes, oh, ow)
    gx = np.zeros((win.planes, h, w), gy.dtype)  # input positions no window reads stay 0
    size = win.block(dtype.itemsize)
    buffers = win.buffers(size, dtype, 0.0)
    rows = np.empty((size, win.extent[0], ow), dtype)
    part = np.empty((size, oh, ow), dtype)
    for lo in range(0, win.planes, size):
        hi = min(lo + size, win.planes)
        arrays = [buf[:hi - lo] for buf in buffers]
        rb, g = rows[:hi - lo], np.multiply(grads[lo:hi], scale, out=part[:hi - lo])
        # zeros: the identity of the sums below (strided rows and columns are added, not set)
        rb.fill(0.0)
        for i in range(kh):
            rb[:, i:i + sh * (oh - 1) + 1:sh] += g
        for a in arrays:
            a.fill(0.0)
        for _, q, col in win.taps[:kw]:
            arrays[q][:, :, col:col + ow] += rb
        win.store(arrays, gx[lo:hi])
    return gx.reshape(x_shape)
