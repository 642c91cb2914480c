"""SIMT implicit-GEMM convolution: launches ``kernels/conv2d.cu`` on a ``cuda`` or ``emu``
device (:mod:`dlcore.ops.conv_cuda` decides when; it serves float64, float32 without TF32, and
whatever the specialised kernels do not).

Array-level twins of the NumPy functions in :mod:`dlcore.ops.conv_cpu`, with the device first::

    y = conv2d_forward(device, x, w, (5, 5), (1, 1), (1, 1), (1, 1), 1)

Arrays are NCHW (weights ``(F, C/groups, KH, KW)``), float32 or float64, on ``device``;
``stride``, ``padding`` and ``dilation`` are int pairs already validated by the caller.

* The table-driven implicit GEMMs of ``kernels/conv2d.cu``
  (``conv2d_gemm`` for forward and backward-data, ``conv2d_wgrad`` for backward-weight). Block
  tiles (rows x columns of the GEMM): float32 takes 128 x 128 (8 x 8 outputs per thread),
  128 x 64 (8 x 4) or 64 x 64 (4 x 4), the largest whose grid still fills the GPU's SMs once
  (:func:`tile_for`); float64 takes 64 x 64. With ``dlcore.backends.cudnn.benchmark = True``
  the first call of each float32 layer shape times the three and keeps the fastest per device
  (:func:`_tuned`).

The tile never changes the bits of a result: every output's K sum runs in the same order in
every tile (one chain of FMAs per output over k = 0, 1, ...), and backward-weight's split of K
is chosen without looking at the tile (positions padded to 16, the larger K step). So
autotuning is compatible with ``cudnn.deterministic``, which dlcore's kernels always satisfy
(no atomics anywhere, fixed reduction orders).

The kernels read per-shape tables (see the header of ``kernels/conv2d.cu``), built here with
NumPy once per layer shape and kept on the device (the ``_*_plan`` caches): after the first
call of a shape, a launch's host work is two cache lookups and the launch.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..backends import cudnn
from ..kernels import ceil_div, ctype, grid_1d

__all__ = ["conv2d_backward_data", "conv2d_backward_weight", "conv2d_forward", "tile_for"]

Pair = tuple[int, int]

SOURCE = "conv2d.cu"
TABLE_STEP = 16  # k-tables are padded to a multiple of every kernel's K step (8 or 16)
THREADS = 256
FAR = -(1 << 29)  # kFar of the kernels: an offset that fails every bounds test
INT32_MAX = 2**31 - 1
# Backward-weight split-K: aim for this many blocks in flight (a few waves on a large GPU), but
# give every split at least MIN_SPLIT_STEPS K-steps so the partial sums stay worth their traffic.
TARGET_BLOCKS = 512
MIN_SPLIT_STEPS = 8
MAX_GRID_YZ = 65535


Tile = tuple[int, int]
# Largest first; hot-loop math share on sm_90 (kernels/README.md): 82%, 73%, 60%
FLOAT32_TILES: tuple[Tile, ...] = ((128, 128), (128, 64), (64, 64))
SMALL_TILE: Tile = (64, 64)  # float64's only tile: 8 x 8 doubles would not fit in registers


@functools.lru_cache(maxsize=16)
def _multiprocessors(device: Any) -> int:
    if device.is_cuda:
        return int(device.xp.cuda.Device(device.index).attributes["MultiProcessorCount"])
    # emu: few, so the tests' small shapes reach the large tiles (on an H100 they need 132
    # blocks); cudnn.benchmark-free tile choice is the only thing this number steers
    return 4


def tile_for(device: Any, dtype: Any, rows: int, cols: int, batches: int = 1) -> Tile:
    """The block tile (rows, columns) for ``batches`` GEMMs of ``rows`` x ``cols`` outputs:
    for float32 the largest of :data:`FLOAT32_TILES` that is not mostly empty (a 128-column
    tile needs more than 64 columns, a 128-row one 512 rows) and whose grid gives every SM a
    block; else 64 x 64."""
    if np.dtype(dtype) != np.float32:
        return SMALL_TILE
    sms = _multiprocessors(device)
    for tile in FLOAT32_TILES[:-1]:
        if (tile[1] == 64 or cols > 64) and rows >= 512 and \
                ceil_div(rows, tile[0]) * ceil_div(cols, tile[1]) * batches >= sms:
            return tile
    return SMALL_TILE


_tuned_tiles: dict[tuple, Tile] = {}


def _tuned(device: Any, key: tuple, dtype: Any, rows: int, cols: int, batches: int,
           run: Callable[[Tile], None]) -> Tile:
    """The tile to launch ``run`` with: :func:`tile_for`'s choice, or, when
    ``cudnn.benchmark`` is on and the dtype has several tiles, the fastest of them on ``device``
    for this shape, timed once (best of 3 after a warm-up run each) and remembered."""
    if not cudnn.benchmark or np.dtype(dtype) != np.float32:
        return tile_for(device, dtype, rows, cols, batches)
    cache_key = (device, *key)
    tile = _tuned_tiles.get(cache_key)
    if tile is None:
        times = {}
        for candidate in FLOAT32_TILES:
            run(candidate)  # compiles, warms the caches
            best = float("inf")
            for _ in range(3):
                device.synchronize()
                start = time.perf_counter()
                run(candidate)
                device.synchronize()
                best = min(best, time.perf_counter() - start)
            times[candidate] = best
        tile = _tuned_tiles[cache_key] = min(times, key=times.__getitem__)
    return tile


def _check_int32(op: str, **sizes: int) -> None:
    """The kernels index inside one (image, group) slice and the weights in int32."""
    for name, size in sizes.items():
        if size > INT32_MAX:
            raise ValueError(f"{op}: {name} has {size} elements; the conv2d kernels index it "
                             f"with 32-bit offsets (at most {INT32_MAX})")


def _padded(table: np.ndarray, fill: tuple[int, int, int, int], step: int = TABLE_STEP
            ) -> np.ndarray:
    """``table`` (k, 4) with rows of ``fill`` appended up to a multiple of ``step``."""
    extra = -len(table) % step
    if extra:
        table = np.concatenate([table, np.tile(np.array(fill, np.int32), (extra, 1))])
    return table


TAIL = (0, FAR, FAR, -1)  # a K-tail entry: A outside its plane, B offset -1 (both read as 0)


@functools.lru_cache(maxsize=512)
def _forward_tables(cg: int, h: int, w: int, kh: int, kw: int, dilation: Pair, out_hw: Pair
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(table, phases)`` of the forward GEMM: k = (c, r, s) in the weight's order."""
    dh, dw = dilation
    c, r, s = (a.ravel() for a in np.meshgrid(np.arange(cg), np.arange(kh), np.arange(kw),
                                               indexing="ij"))
    k = np.arange(cg * kh * kw)
    table = np.stack([(c * h + r * dh) * w + s * dw, r * dh, s * dw, k], 1).astype(np.int32)
    phases = np.array([[0, len(k), *out_hw, 0, 0, 1, 1]], np.int32)
    return _padded(table, TAIL).ravel(), phases.ravel()


@functools.lru_cache(maxsize=512)
def _backward_data_tables(cg: int, fg: int, x_hw: Pair, y_hw: Pair, kernel: Pair,
                          stride: Pair, padding: Pair, dilation: Pair
                          ) -> tuple[np.ndarray, np.ndarray]:
    """``(table, phases)`` of backward-data split by stride phase: phase (a, b) holds the gx
    rows ih = a + SH*i' (iw likewise) and, as its K, only the taps (f, r, s) that reach them,
    with the gy row they read, oh = i' + (a + PH - r*DH) / SH."""
    (h, w), (ho, wo), (kh, kw) = x_hw, y_hw, kernel
    taps = kh * kw
    tables, phases, offset = [], [], 0
    for a in range(stride[0]):
        for b in range(stride[1]):
            rows = [(r, (a + padding[0] - r * dilation[0]) // stride[0]) for r in range(kh)
                    if (a + padding[0] - r * dilation[0]) % stride[0] == 0]
            cols = [(s, (b + padding[1] - s * dilation[1]) // stride[1]) for s in range(kw)
                    if (b + padding[1] - s * dilation[1]) % stride[1] == 0]
            entries = [((f * ho + du) * wo + dv, du, dv, f * cg * taps + r * kw + s)
                       for f in range(fg) for r, du in rows for s, dv in cols]
            table = _padded(np.array(entries, np.int32).reshape(-1, 4), TAIL)
            mu, mv = max(0, ceil_div(h - a, stride[0])), max(0, ceil_div(w - b, stride[1]))
            phases.append([offset, len(entries), mu, mv, a, b, *stride])
            tables.append(table)
            offset += len(table)
    return (np.concatenate(tables).ravel().astype(np.int32),
            np.array(phases, np.int32).ravel())


@functools.lru_cache(maxsize=512)
def _position_table(y_hw: Pair, stride: Pair, padding: Pair, w: int, step: int) -> np.ndarray:
    """Backward-weight's per-position table over one output plane padded to the kernel's K
    ``step``: {ih0, iw0, ih0*W + iw0, p}, and {FAR, FAR, 0, -1} past the plane."""
    ho, wo = y_hw
    oh, ow = (a.ravel() for a in np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij"))
    ih0, iw0 = oh * stride[0] - padding[0], ow * stride[1] - padding[1]
    table = np.stack([ih0, iw0, ih0 * w + iw0, np.arange(ho * wo)], 1).astype(np.int32)
    return _padded(table, (FAR, FAR, 0, -1), step).ravel()


@functools.lru_cache(maxsize=512)
def _forward_plan(device: Any, *key: Any) -> tuple[Any, Any]:
    """:func:`_forward_tables` for ``key``, on ``device`` (copied once per shape)."""
    table, phases = _forward_tables(*key)
    return device.xp.asarray(table), device.xp.asarray(phases)


@functools.lru_cache(maxsize=512)
def _backward_data_plan(device: Any, *key: Any) -> tuple[Any, Any, int]:
    """:func:`_backward_data_tables` for ``key`` on ``device``, and the most gx rows of a
    stride phase per image (grid x)."""
    table, phases = _backward_data_tables(*key)
    records = phases.reshape(-1, 8)
    rows = int((records[:, 2] * records[:, 3]).max())
    return device.xp.asarray(table), device.xp.asarray(phases), rows


@functools.lru_cache(maxsize=512)
def _position_plan(device: Any, *key: Any) -> Any:
    return device.xp.asarray(_position_table(*key))


_bias_dummies: dict[tuple[Any, np.dtype], Any] = {}


def no_bias(device: Any, dtype: np.dtype) -> Any:
    """A one-element stand-in for the bias pointer when there is none (has_bias = 0), made once
    per device and dtype (shared by the convolution launchers)."""
    key = (device, dtype)
    dummy = _bias_dummies.get(key)
    if dummy is None:
        with device.use():
            dummy = _bias_dummies[key] = device.xp.zeros(1, dtype=dtype)
    return dummy


@functools.lru_cache(maxsize=1024)
def _ints(*values: int) -> tuple[np.int32, ...]:
    return tuple(np.int32(v) for v in values)


def _entry(kernel: str, dtype: Any, tile: Tile) -> str:
    return f"{kernel}<{ctype(dtype)}, {tile[0]}, {tile[1]}>"


def _check_grid(op: str, groups_phases: int, col_tiles: int) -> None:
    if groups_phases > MAX_GRID_YZ or col_tiles > MAX_GRID_YZ:
        raise ValueError(f"{op}: groups x stride phases ({groups_phases}) or column tiles "
                         f"({col_tiles}) exceed the grid limit ({MAX_GRID_YZ} blocks on y/z)")


def conv2d_forward(device: Any, x: Any, w: Any, out_hw: Pair, stride: Pair, padding: Pair,
                   dilation: Pair, groups: int, bias: Any = None) -> Any:
    """``y`` (N, F, *out_hw) = conv2d of ``x`` (N, C, H, W) with ``w`` (F, C/groups, KH, KW),
    plus ``bias`` (F,) when given (added in the kernel's epilogue)."""
    xp = device.xp
    with device.use():
        x, w = xp.ascontiguousarray(x), xp.ascontiguousarray(w.astype(x.dtype, copy=False))
        n, c, h, wd = x.shape
        f, cg, kh, kw = w.shape
        ho, wo = out_hw
        fg = f // groups
        if n * f * ho * wo == 0:
            return xp.zeros((n, f, ho, wo), dtype=x.dtype)
        _check_int32("conv2d", **{"an (image, group) slice of x": cg * h * wd,
                                  "the weight": w.size})
        y = xp.empty((n, f, ho, wo), dtype=x.dtype)
        table, phases = _forward_plan(device, cg, h, wd, kh, kw, dilation, (ho, wo))
        _check_grid("conv2d", groups, ceil_div(fg, 64))
        b = no_bias(device, x.dtype) if bias is None else \
            xp.ascontiguousarray(bias.astype(x.dtype, copy=False))
        args = (x, w, b, y, table, phases,
                *_ints(n, c, cg, h, wd, *stride, *padding, cg * kh * kw, fg * cg * kh * kw, fg,
                       f, ho, wo, 1, bias is not None))

        def run(tile: Tile) -> None:
            grid = (ceil_div(n * ho * wo, tile[0]), ceil_div(fg, tile[1]), groups)
            device.kernels.function(SOURCE, _entry("conv2d_gemm", x.dtype, tile))(
                grid, (THREADS,), args)

        run(_tuned(device, ("forward", x.shape, w.shape, stride, padding, dilation, groups),
                   x.dtype, n * ho * wo, fg, groups, run))
    return y


def conv2d_backward_data(device: Any, gy: Any, w: Any, x_shape: tuple[int, ...], stride: Pair,
                         padding: Pair, dilation: Pair, groups: int) -> Any:
    """``gx`` (``x_shape``), the gradient of conv2d with respect to its input, from ``gy``."""
    xp = device.xp
    with device.use():
        gy, w = xp.ascontiguousarray(gy), xp.ascontiguousarray(w.astype(gy.dtype, copy=False))
        n, c, h, wd = x_shape
        f, cg, kh, kw = w.shape
        ho, wo = gy.shape[2:]
        fg = f // groups
        if n * c * h * wd == 0 or gy.size == 0:
            return xp.zeros(tuple(x_shape), dtype=gy.dtype)
        _check_int32("conv2d backward", **{"an (image, group) slice of gy": fg * ho * wo,
                                           "the weight": w.size})
        gx = xp.empty(tuple(x_shape), dtype=gy.dtype)
        table, phases, rows = _backward_data_plan(device, cg, fg, (h, wd), (ho, wo), (kh, kw),
                                                  stride, padding, dilation)
        num_phases = stride[0] * stride[1]
        _check_grid("conv2d backward", groups * num_phases, ceil_div(cg, 64))
        args = (gy, w, no_bias(device, gy.dtype), gx, table, phases,
                *_ints(n, f, fg, ho, wo, 1, 1, 0, 0, kh * kw, fg * cg * kh * kw, cg, c, h, wd,
                       num_phases, 0))

        def run(tile: Tile) -> None:
            grid = (max(1, ceil_div(n * rows, tile[0])), ceil_div(cg, tile[1]),
                    groups * num_phases)
            device.kernels.function(SOURCE, _entry("conv2d_gemm", gy.dtype, tile))(
                grid, (THREADS,), args)

        run(_tuned(device, ("backward data", gy.shape, w.shape, tuple(x_shape), stride,
                            padding, dilation, groups), gy.dtype, n * rows, cg,
                   groups * num_phases, run))
    return gx


def split_k(k_total: int, tiles: int, step: int, target_blocks: int = TARGET_BLOCKS
            ) -> tuple[int, int]:
    """``(splits, chunk)`` for a backward-weight over ``k_total`` with ``tiles`` output tiles:
    ``chunk`` is a multiple of the K ``step``, ``splits * chunk`` covers ``k_total``, each
    split gets at least MIN_SPLIT_STEPS steps, and about ``target_blocks`` blocks run; a
    function of the shape only (deterministic). Shared by the convolution launchers."""
    max_splits = max(1, k_total // (step * MIN_SPLIT_STEPS))
    splits = min(max_splits, max(1, target_blocks // tiles))
    chunk = ceil_div(ceil_div(k_total, splits), step) * step
    return ceil_div(k_total, chunk), chunk


def conv2d_backward_weight(device: Any, x: Any, gy: Any, w_shape: tuple[int, ...], stride: Pair,
                           padding: Pair, dilation: Pair, groups: int) -> Any:
    """``gw`` (``w_shape``), the gradient of conv2d with respect to its weight, from ``x`` and
    ``gy``; deterministic (split partial sums are added in a fixed order, no atomics)."""
    xp = device.xp
    with device.use():
        x, gy = xp.ascontiguousarray(x), xp.ascontiguousarray(gy.astype(x.dtype, copy=False))
        n, c, h, wd = x.shape
        f, cg, kh, kw = w_shape
        _, _, ho, wo = gy.shape
        fg = f // groups
        if f * cg * kh * kw == 0 or n * ho * wo == 0:
            return xp.zeros(tuple(w_shape), dtype=x.dtype)
        _check_int32("conv2d backward", **{"an (image, group) slice of x": cg * h * wd,
                                           "an (image, group) slice of gy": fg * ho * wo})
        gw = xp.empty(tuple(w_shape), dtype=x.dtype)
        rows = cg * kh * kw
        # NOTE: the plane padding and the split of K do not depend on the tile, so neither
        # does the result (see the module docstring)
        ptable = _position_plan(device, (ho, wo), stride, padding, wd, TABLE_STEP)
        p_pad = ptable.size // 4
        _check_grid("conv2d backward", groups, ceil_div(fg, 64))
        splits, chunk = split_k(n * p_pad, ceil_div(rows, 64) * ceil_div(fg, 64) * groups,
                                 TABLE_STEP)
        partial = gw if splits == 1 else xp.empty((splits, *w_shape), dtype=x.dtype)
        elem = ctype(x.dtype)
        args = (x, gy, partial, ptable, np.int64(chunk),
                *_ints(n, c, h, wd, f, ho, wo, kh, kw, *dilation, groups, p_pad))

        def run(tile: Tile) -> None:
            grid = (ceil_div(rows, tile[0]) * splits, ceil_div(fg, tile[1]), groups)
            device.kernels.function(SOURCE, _entry("conv2d_wgrad", x.dtype, tile))(
                grid, (THREADS,), args)

        run(_tuned(device, ("backward weight", x.shape, gy.shape, tuple(w_shape), stride,
                            padding, dilation, groups), x.dtype, rows, fg, groups * splits,
                   run))
        if splits > 1:
            device.kernels.function(SOURCE, f"conv2d_backward_weight_reduce<{elem}>")(
                grid_1d(gw.size, THREADS, 4096), (THREADS,),
                (partial, gw, np.int64(gw.size), np.int32(splits)))
    return gw
