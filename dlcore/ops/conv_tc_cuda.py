"""Tensor-core path of 2-D convolution: launches ``kernels/conv2d_tc.cu`` on a ``cuda`` or ``emu``
device.

The same array-level functions and signatures as :mod:`dlcore.ops.conv_cuda` (and the NumPy
twins in :mod:`dlcore.ops.conv_cpu`), device first::

    if serves(device, x.dtype, x.shape, w.shape, groups):
        y = conv2d_forward(device, x, w, (5, 5), (1, 1), (1, 1), (1, 1), 1)

Arrays are NCHW (weights ``(F, C/groups, KH, KW)``) on ``device``; ``stride``, ``padding`` and
``dilation`` are int pairs already validated by the caller. float32 runs as TF32 (inputs rounded
to 10 mantissa bits, products accumulated in float32), float16 as FP16 (accumulated in float32,
rounded to float16 once); see the header of ``kernels/conv2d_tc.cu``. :func:`serves` says which
dtypes, devices and shapes these kernels take; the caller picks between them and
``conv_cuda``. Backward-weight is deterministic (split partial sums in float32, added in a fixed
order, no atomics).

Each layer shape gets its gather tables (k -> offsets and bounds of the implicit im2col) built
once on the host, cached, and copied once per device.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .. import cuda
from ..backends import cudnn
from ..kernels import ceil_div, ctype, grid_1d
from .conv_gemm_cuda import no_bias, split_k

__all__ = ["conv2d_backward_data", "conv2d_backward_weight", "conv2d_forward", "serves"]

Pair = tuple[int, int]
Shape = tuple[int, ...]

SOURCE = "conv2d_tc.cu"
TILE = 128  # BM = BN of the kernels' block tile
K_STEP = 16  # BK
THREADS = 256
# The kernels' element types; float32 needs TF32 tensor cores (sm_80), float16 FP16 ones (sm_70).
DTYPES = (np.dtype(np.float32), np.dtype(np.float16))  # what these kernels take
MIN_CAPABILITY = {np.dtype(np.float32): (8, 0), np.dtype(np.float16): (7, 0)}
# The emulator compiles the kernels without __CUDA_ARCH__, so it runs their sm_80 code (TF32
# wmma included); dlcore.device reports no capability for it.
EMU_CAPABILITY = (8, 0)
# Backward-weight split-K: aim for this many blocks (two waves of one or two 256-thread blocks
# per SM on a large GPU), each split at least MIN_SPLIT_STEPS K-steps long.
TARGET_BLOCKS = 256
MIN_SPLIT_STEPS = 8
MAX_GRID_YZ = 65535
INT32_LIMIT = 2**31
# A table coordinate that fails every bounds test in the kernels (their kOutside).
OUTSIDE = 1 << 29


def _capability(device: Any) -> tuple[int, int]:
    if device.type == "emu":
        return EMU_CAPABILITY
    return _gpu_capability(device.index or 0)


@functools.lru_cache(maxsize=16)
def _gpu_capability(index: int) -> tuple[int, int]:
    return cuda.get_device_capability(index)


def serves(device: Any, dtype: Any, x_shape: Shape | None = None, w_shape: Shape | None = None,
           groups: int = 1, out_hw: Pair | None = None, stride: Pair = (1, 1)) -> bool:
    """Whether these kernels serve a convolution of ``dtype`` on ``device`` (every direction of
    it; shapes are checked when given, ``out_hw`` defaulting to the unpadded output size).

    * dtypes: float16 (FP16 tensor cores, sm_70 and later) always; float32 (TF32, sm_80 and
      later) only while ``dlcore.backends.cudnn.allow_tf32`` is True (read at each call, as
      PyTorch reads its flag per convolution), since TF32 keeps 10 of float32's 23 mantissa
      bits. Never float64.
    * devices: ``cuda`` of a sufficient compute capability, and ``emu`` (it runs the kernels'
      sm_80 code); never ``cpu``.
    * shapes: any the op accepts, within the kernels' limits: C/G*H*W, F/G*Ho*Wo and
      F/G*C/G*KH*KW below 2^31 (int32 offsets within one image), spatial sizes below 2^29,
      stride below 2^15, groups and ceil(channels per group / 128) at most 65535. Every shape
      gives correct results; small or depthwise ones fill little of a 128 x 128 tile, so which
      path is faster for them is the caller's (benchmark's) call, not decided here.
    """
    dt = np.dtype(dtype)
    if device.type not in ("cuda", "emu") or dt not in DTYPES:
        return False
    if dt == np.float32 and not cudnn.allow_tf32:
        return False
    if _capability(device) < MIN_CAPABILITY[dt]:
        return False
    if x_shape is None or w_shape is None:
        return True
    n, c, h, w = x_shape
    f, cg, kh, kw = w_shape
    if out_hw is None:
        out_hw = ((h - kh) // stride[0] + 1, (w - kw) // stride[1] + 1)
    fg, plane = f // groups, out_hw[0] * out_hw[1]
    return (max(cg * h * w, fg * plane, fg * cg * kh * kw) < INT32_LIMIT
            and max(h, w, *out_hw) < OUTSIDE and max(stride) < 2**15
            and groups <= MAX_GRID_YZ and ceil_div(max(f, c) // groups, TILE) <= MAX_GRID_YZ)



@functools.lru_cache(maxsize=1024)
def _geometry(x_shape: Shape, w_shape: Shape, y_hw: Pair, stride: Pair, padding: Pair,
              dilation: Pair, groups: int) -> tuple[np.int32, ...]:
    """The kernels' trailing int32 arguments: N, C, H, W, F, Ho, Wo, KH, KW, SH, SW, PH, PW, DH,
    DW, G (conv2d.cu's order)."""
    n, c, h, w = x_shape
    f, _, kh, kw = w_shape
    return tuple(np.int32(v) for v in (n, c, h, w, f, *y_hw, kh, kw, *stride, *padding,
                                       *dilation, groups))


def _aligned_int32(rows: int, cols: int) -> np.ndarray:
    """A zeroed C-contiguous int32 (rows, cols) array starting on a 16-byte boundary: the
    kernels read its rows as int4 / int2 vectors."""
    nbytes = rows * cols * 4
    raw = np.zeros(nbytes + 16, np.uint8)
    start = -raw.ctypes.data % 16
    return raw[start:start + nbytes].view(np.int32).reshape(rows, cols)


def _table_rows(k: int) -> int:
    """Table length: K rounded up to a whole 128-row tile (covers every K step and, for the
    backward-weight row table, every tile row)."""
    return max(TILE, ceil_div(k, TILE) * TILE)


@functools.lru_cache(maxsize=256)
def _forward_tables(cg: int, h: int, w: int, kh: int, kw: int,
                    dilation: Pair) -> tuple[np.ndarray, np.ndarray]:
    """A table k = (c, r, s) -> {c*H*W + r*DH*W + s*DW, -r*DH, -s*DW, 0} and B table k -> k
    (-1 past K). Also backward-weight's row table."""
    c, r, s = (v.ravel() for v in np.meshgrid(np.arange(cg), np.arange(kh), np.arange(kw),
                                                indexing="ij"))
    dr, ds = r * dilation[0], s * dilation[1]
    k = c.size
    a = _aligned_int32(_table_rows(k), 4)
    a[:, 1] = OUTSIDE
    a[:k, 0] = c * h * w + dr * w + ds
    a[:k, 1], a[:k, 2] = -dr, -ds
    b = np.full(_table_rows(k), -1, np.int32)
    b[:k] = np.arange(k)
    return a, b


@functools.lru_cache(maxsize=256)
def _backward_data_tables(fg: int, cg: int, ho: int, wo: int, kh: int, kw: int, stride: Pair,
                          dilation: Pair) -> tuple[np.ndarray, np.ndarray]:
    """A table k = (f, r, s) -> {f*Ho*Wo - qh*Wo - qw, qh, qw, eh << 16 | ew} with
    r*DH = qh*SH + eh and s*DW = qw*SW + ew; B table k -> f*Cg*KH*KW + r*KW + s."""
    f, r, s = (v.ravel() for v in np.meshgrid(np.arange(fg), np.arange(kh), np.arange(kw),
                                                indexing="ij"))
    qh, eh = np.divmod(r * dilation[0], stride[0])
    qw, ew = np.divmod(s * dilation[1], stride[1])
    k = f.size
    a = _aligned_int32(_table_rows(k), 4)
    a[:, 1] = OUTSIDE
    a[:k, 0] = f * ho * wo - qh * wo - qw
    a[:k, 1], a[:k, 2], a[:k, 3] = qh, qw, eh << 16 | ew
    b = np.full(_table_rows(k), -1, np.int32)
    b[:k] = f * cg * kh * kw + r * kw + s
    return a, b


@functools.lru_cache(maxsize=256)
def _plane_table(ho: int, wo: int, stride: Pair, padding: Pair) -> np.ndarray:
    """p = oh*Wo + ow -> (oh*SH - PH, ow*SW - PW): backward-weight's K axis within one image."""
    oh, ow = (v.ravel() for v in np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij"))
    t = _aligned_int32(ho * wo, 2)
    t[:, 0], t[:, 1] = oh * stride[0] - padding[0], ow * stride[1] - padding[1]
    return t


# (device, id(host table)) -> (host table, its copy on the device). Holding the host table keeps
# its id from being reused; the tables are per layer shape, so this stays small.
_device_copies: dict[tuple[Any, int], tuple[np.ndarray, Any]] = {}
MAX_DEVICE_COPIES = 1024


def _tables(device: Any, *host: np.ndarray) -> list[Any]:
    """Host tables as arrays of ``device``: themselves on ``emu``, copied once per GPU."""
    if not device.is_cuda:
        return list(host)
    out = []
    for table in host:
        hit = _device_copies.get((device, id(table)))
        if hit is None:
            if len(_device_copies) >= MAX_DEVICE_COPIES:
                _device_copies.clear()
            with device.use():
                hit = _device_copies[(device, id(table))] = (table, device.xp.asarray(table))
        out.append(hit[1])
    return out


def conv2d_forward(device: Any, x: Any, w: Any, out_hw: Pair, stride: Pair, padding: Pair,
                   dilation: Pair, groups: int, bias: Any = None) -> Any:
    """``y`` (N, F, *out_hw) = conv2d of ``x`` (N, C, H, W) with ``w`` (F, C/groups, KH, KW),
    plus ``bias`` (F,) when given (added to the float32 sums in the epilogue, before the one
    rounding to the output dtype)."""
    xp = device.xp
    with device.use():
        x, w = xp.ascontiguousarray(x), xp.ascontiguousarray(w.astype(x.dtype, copy=False))
        n, c, h, wd = x.shape
        f, cg, kh, kw = w.shape
        ho, wo = out_hw
        if n * f * ho * wo == 0 or cg == 0:  # no outputs, or the empty sum (kernels need K >= 1)
            y = xp.zeros((n, f, ho, wo), dtype=x.dtype)
            if bias is not None:
                y += bias.astype(x.dtype).reshape(1, f, 1, 1)
            return y
        y = xp.empty((n, f, ho, wo), dtype=x.dtype)
        geo = _geometry(x.shape, w.shape, (ho, wo), stride, padding, dilation, groups)
        a, b = _tables(device, *_forward_tables(cg, h, wd, kh, kw, dilation))
        bias_arg = no_bias(device, x.dtype) if bias is None else \
            xp.ascontiguousarray(bias.astype(x.dtype, copy=False))
        grid = (ceil_div(n * ho * wo, TILE), ceil_div(f // groups, TILE), groups)
        device.kernels.function(SOURCE, f"conv2d_tc_forward<{ctype(x.dtype)}>")(
            grid, (THREADS,), (x, w, bias_arg, y, a, b, np.int32(bias is not None), *geo))
    return y


def conv2d_backward_data(device: Any, gy: Any, w: Any, x_shape: Shape, stride: Pair,
                         padding: Pair, dilation: Pair, groups: int) -> Any:
    """``gx`` (``x_shape``), the gradient of conv2d with respect to its input, from ``gy``."""
    xp = device.xp
    with device.use():
        gy, w = xp.ascontiguousarray(gy), xp.ascontiguousarray(w.astype(gy.dtype, copy=False))
        n, c, h, wd = x_shape
        f, cg, kh, kw = w.shape
        ho, wo = gy.shape[2:]
        if n * c * h * wd == 0 or gy.size == 0:
            return xp.zeros(tuple(x_shape), dtype=gy.dtype)
        gx = xp.empty(tuple(x_shape), dtype=gy.dtype)
        geo = _geometry(tuple(x_shape), w.shape, (ho, wo), stride, padding, dilation, groups)
        a, b = _tables(device, *_backward_data_tables(f // groups, cg, ho, wo, kh, kw, stride,
                                                      dilation))
        grid = (ceil_div(n * h * wd, TILE), ceil_div(cg, TILE), groups)
        device.kernels.function(SOURCE, f"conv2d_tc_backward_data<{ctype(gy.dtype)}>")(
            grid, (THREADS,), (gy, w, gx, a, b, *geo))
    return gx


def conv2d_backward_weight(device: Any, x: Any, gy: Any, w_shape: Shape, stride: Pair,
                           padding: Pair, dilation: Pair, groups: int) -> Any:
    """``gw`` (``w_shape``), the gradient of conv2d with respect to its weight, from ``x`` and
    ``gy``; accumulated in float32 and deterministic."""
    xp = device.xp
    with device.use():
        x, gy = xp.ascontiguousarray(x), xp.ascontiguousarray(gy.astype(x.dtype, copy=False))
        n, c, h, wd = x.shape
        f, cg, kh, kw = w_shape
        _, _, ho, wo = gy.shape
        k_total = n * ho * wo
        if f * cg * kh * kw == 0 or k_total == 0:
            return xp.zeros(tuple(w_shape), dtype=x.dtype)
        gw = xp.empty(tuple(w_shape), dtype=x.dtype)
        geo = _geometry(x.shape, tuple(w_shape), (ho, wo), stride, padding, dilation, groups)
        rows, plane = cg * kh * kw, ho * wo
        row_tiles, col_tiles = ceil_div(rows, TILE), ceil_div(f // groups, TILE)
        splits, chunk = split_k(k_total, row_tiles * col_tiles * groups, K_STEP, TARGET_BLOCKS)
        # float32 partials: float16 sums are rounded once, in the reduce; a single float32
        # split is gw itself.
        direct = splits == 1 and x.dtype == np.float32
        partial = gw if direct else xp.empty((splits, *w_shape), dtype=np.float32)
        rows_table, _ = _forward_tables(cg, h, wd, kh, kw, dilation)
        row_t, plane_t = _tables(device, rows_table, _plane_table(ho, wo, stride, padding))
        step_n, step_p = divmod(K_STEP, plane)
        elem = ctype(x.dtype)
        device.kernels.function(SOURCE, f"conv2d_tc_backward_weight<{elem}>")(
            (row_tiles * splits, col_tiles, groups), (THREADS,),
            (x, gy, partial, row_t, plane_t, np.int64(chunk), np.int32(step_n),
             np.int32(step_p), *geo))
        if not direct:
            device.kernels.function(SOURCE, f"conv2d_tc_backward_weight_reduce<{elem}>")(
                grid_1d(gw.size, THREADS, 4096), (THREADS,),
                (partial, gw, np.int64(gw.size), np.int32(splits)))
    return gw
