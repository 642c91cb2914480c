"""Depthwise conv2d kernels (kernels/conv2d_depthwise.cu through dlcore.ops.conv_depthwise_cuda)
against dlcore.ops.conv_cpu in float64, on ``emu`` (checked mode, several fiber-order seeds) and
``cuda`` (skipped without a GPU), within an error bound derived from the arithmetic.

The bound. Every output is a sum of n products a_k * b_k (n = KH*KW for forward, plus one
addition for a bias; M*KH*KW for backward-data; N*Ho*Wo for backward-weight, whatever tree of
partial sums the kernel adds them in), each product rounded at most once (FMA contraction
rounds none) and each addition once, round to nearest. Whatever the order, the computed sum is
within gamma_n * S of the exact one, S = sum_k |a_k||b_k| (the same convolution of the absolute
values, in float64) and gamma_n = n u / (1 - n u), u = 2^-24 (float32) or 2^-53 (float64). The
float32 operands are exact in float64, so the float64 reference is off by at most gamma_n(2^-53)
* S itself: the test allows the sum of both. Standard normal data keep every value normal, so
the emulator's flushing of denormals never applies.

Shapes span what changes the index arithmetic: 3x3, 5x5 (the unrolled instantiations) at
stride 1 and 2; 7x7, 1x1, 3x5, stride 3, stride (2, 1) and dilation 2 (the runtime-size ones);
padding 0 to beyond the kernel's reach; multiplier 1, 2 and 3; batch 1 and 3; odd sizes; planes
smaller than a tile (several to a block) and larger (several tiles across and down)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pytest

from dlcore.device import Device, device_count
from dlcore.kernels import recorded_launches
from dlcore.ops import conv_cpu, conv_depthwise_cuda
from dlcore.ops.conv import conv2d_out_size

DIRECTIONS = ("forward", "backward_data", "backward_weight")
DTYPES = (np.float64, np.float32)
SEEDS = (1, 2, 3)


class Case(NamedTuple):
    n: int
    c: int
    mult: int
    h: int
    w: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def w_shape(self) -> tuple[int, int, int, int]:
        return (self.c * self.mult, 1, *self.kernel)

    def out_hw(self) -> tuple[int, int]:
        return tuple(conv2d_out_size((self.h, self.w)[i], self.kernel[i], self.stride[i],
                                     self.padding[i], self.dilation[i])
                     for i in range(2))  # type: ignore[return-value]

    def args(self) -> tuple:
        return self.stride, self.padding, self.dilation, self.c  # groups == C


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return v if isinstance(v, tuple) else (v, v)


def case(n: int, c: int, mult: int, hw: tuple[int, int], kernel: tuple[int, int],
         stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
         dilation: int = 1) -> Case:
    return Case(n, c, mult, *hw, kernel, _pair(stride), _pair(padding), _pair(dilation))


CASES = {
    "3x3_pad1_odd": case(2, 3, 1, (7, 9), (3, 3), 1, 1),
    "3x3_pad0_n3": case(3, 2, 1, (6, 5), (3, 3), 1, 0),
    "3x3_pad2": case(1, 2, 1, (5, 6), (3, 3), 1, 2),
    "3x3_stride2_mult2": case(2, 3, 2, (9, 11), (3, 3), 2, 1),
    "5x5_pad2": case(1, 3, 1, (9, 10), (5, 5), 1, 2),
    "5x5_stride2_mult2": case(2, 2, 2, (11, 9), (5, 5), 2, 2),
    "7x7_pad3": case(1, 2, 1, (9, 8), (7, 7), 1, 3),
    "1x1": case(2, 3, 1, (5, 6), (1, 1)),
    "1x1_stride2_mult2": case(1, 4, 2, (7, 7), (1, 1), 2),
    "3x5_stride12": case(2, 2, 1, (8, 11), (3, 5), (1, 2), (1, 2)),
    "3x3_stride3": case(1, 3, 1, (11, 10), (3, 3), 3, 2),
    "3x3_stride21": case(1, 2, 1, (9, 8), (3, 3), (2, 1), 1),
    "3x3_dil2_mult2": case(2, 2, 2, (9, 10), (3, 3), 1, 2, 2),
    "3x3_stride2_dil2": case(1, 2, 1, (11, 12), (3, 3), 2, 1, 2),  # gcd(stride, dilation) = 2
    "pad_beyond_reach_mult3": case(1, 2, 3, (6, 7), (3, 3), 1, (3, 2)),
    "small_planes_packed": case(3, 5, 1, (4, 5), (3, 3), 1, 1),
    "large_plane": case(1, 2, 1, (70, 41), (3, 3), 1, 1),
    "split_k": case(3, 1, 2, (40, 40), (3, 3), 1, 1),
}

# Which entry points run (float; double alike), per direction.
FWD, BWD_DATA, BWD_W = ("conv2d_depthwise_forward", "conv2d_depthwise_backward_data",
                        "conv2d_depthwise_backward_weight")
LAUNCHES = {
    "3x3_pad1_odd": [f"{FWD}<float, 3, 3, 1>", f"{BWD_DATA}<float, 3, 3>",
                     f"{BWD_W}<float, 3, 3, 1>"],
    "3x3_stride2_mult2": [f"{FWD}<float, 3, 3, 2>", f"{BWD_DATA}_strided<float>",
                          f"{BWD_W}<float, 3, 3, 2>"],
    "5x5_pad2": [f"{FWD}<float, 5, 5, 1>", f"{BWD_DATA}<float, 5, 5>", f"{BWD_W}<float, 5, 5, 1>"],
    "5x5_stride2_mult2": [f"{FWD}<float, 5, 5, 2>", f"{BWD_DATA}_strided<float>",
                          f"{BWD_W}<float, 5, 5, 2>"],
    "7x7_pad3": [f"{FWD}<float, 0, 0, 0>", f"{BWD_DATA}<float, 0, 0>", f"{BWD_W}<float, 0, 0, 0>"],
    "3x3_dil2_mult2": [f"{FWD}<float, 0, 0, 0>", f"{BWD_DATA}<float, 0, 0>",
                       f"{BWD_W}<float, 0, 0, 0>"],
    "3x3_stride21": [f"{FWD}<float, 0, 0, 0>", f"{BWD_DATA}_strided<float>",
                     f"{BWD_W}<float, 0, 0, 0>"],
    "split_k": [f"{FWD}<float, 3, 3, 1>", f"{BWD_DATA}<float, 3, 3>", f"{BWD_W}<float, 3, 3, 1>",
                f"{BWD_W}_reduce<float>"],
}


@pytest.fixture(params=("emu", "cuda"))
def device(request: pytest.FixtureRequest) -> Device:
    # NOTE: not `from conftest import ...`: with tests/kernels collected first, "conftest" is
    # that folder's module.
    if request.param == "cuda" and device_count() == 0:
        pytest.skip("no CUDA device")
    return Device(request.param)


def operands(c: Case, dtype: type, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """The direction's two inputs (x and w, gy and w, or x and gy), standard normal."""
    rng = np.random.default_rng(sum(c.x_shape) * 31 + c.mult + DIRECTIONS.index(direction))
    y_shape = (c.n, c.c * c.mult, *c.out_hw())
    shapes = {"forward": (c.x_shape, c.w_shape), "backward_data": (y_shape, c.w_shape),
              "backward_weight": (c.x_shape, y_shape)}[direction]
    return tuple(rng.standard_normal(s).astype(dtype) for s in shapes)  # type: ignore[return-value]


def run(impl: Any, device: Any, c: Case, direction: str, a: Any, b: Any) -> Any:
    """One direction through ``impl`` (conv_depthwise_cuda, or conv_cpu for references)."""
    if direction == "forward":
        return impl.conv2d_forward(device, a, b, c.out_hw(), *c.args())
    if direction == "backward_data":
        return impl.conv2d_backward_data(device, a, b, c.x_shape, *c.args())
    return impl.conv2d_backward_weight(device, a, b, c.w_shape, *c.args())


def on_device(device: Device, c: Case, direction: str, a: np.ndarray,
              b: np.ndarray) -> np.ndarray:
    out = run(conv_depthwise_cuda, device, c, direction, device.asarray(a), device.asarray(b))
    return device.to_host(out)


def terms(c: Case, direction: str) -> int:
    """n of the module docstring: the most products summed into one output."""
    taps = c.kernel[0] * c.kernel[1]
    ho, wo = c.out_hw()
    return {"forward": taps, "backward_data": c.mult * taps,
            "backward_weight": c.n * ho * wo}[direction]


def gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


def check(got: np.ndarray, c: Case, direction: str, a: np.ndarray, b: np.ndarray,
          bias: np.ndarray | None = None) -> None:
    """``got`` against conv_cpu in float64 (plus ``bias`` per channel: one more term), within
    the bound of the module docstring."""
    reference = run(conv_cpu, None, c, direction, a.astype(np.float64), b.astype(np.float64))
    assert got.dtype == a.dtype and got.shape == reference.shape
    s = run(conv_cpu, None, c, direction, np.abs(a.astype(np.float64)),
            np.abs(b.astype(np.float64)))
    n = terms(c, direction)
    if bias is not None:
        reference = reference + bias.astype(np.float64).reshape(1, -1, 1, 1)
        s, n = s + np.abs(bias.astype(np.float64)).reshape(1, -1, 1, 1), n + 1
    u = 2.0**-24 if got.dtype == np.float32 else 2.0**-53
    bound = (gamma(n, u) + gamma(n, 2.0**-53)) * s
    err = np.abs(got.astype(np.float64) - reference)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (f"{direction}: |err| {err[worst]:.3g} > bound "
                                  f"{bound[worst]:.3g} at {worst} (got {got[worst]}, "
                                  f"reference {reference[worst]})")


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(CASES))
def test_matches_cpu_path_within_bound(device: Device, name: str, dtype: type,
                                       direction: str) -> None:
    c = CASES[name]
    a, b = operands(c, dtype, direction)
    check(on_device(device, c, direction, a, b), c, direction, a, b)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["3x3_stride2_mult2", "7x7_pad3", "small_planes_packed",
                                  "pad_beyond_reach_mult3"])
def test_emu_fiber_orders(name: str, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing barrier shows as a wrong answer (or a read of the NaN-filled shared memory)
    under some fiber order."""
    monkeypatch.setenv("DLCORE_EMU_SEED", str(seed))
    c, dev = CASES[name], Device("emu")
    for direction in DIRECTIONS:
        a, b = operands(c, np.float32, direction)
        check(on_device(dev, c, direction, a, b), c, direction, a, b)


@pytest.mark.parametrize("name", list(LAUNCHES))
def test_entry_points_by_shape(name: str) -> None:
    c, dev = CASES[name], Device("emu")
    names = []
    for direction in DIRECTIONS:
        a, b = operands(c, np.float32, direction)
        with recorded_launches() as launches:
            on_device(dev, c, direction, a, b)
        names += [launch.kernel for launch in launches]
    assert names == [f"conv2d_depthwise.cu:{k}" for k in LAUNCHES[name]]


def test_double_entry_points() -> None:
    c, dev = CASES["3x3_stride2_mult2"], Device("emu")
    with recorded_launches() as launches:
        for direction in DIRECTIONS:
            on_device(dev, c, direction, *operands(c, np.float64, direction))
    assert [launch.kernel.partition(":")[2] for launch in launches] == [
        f"{FWD}<double, 3, 3, 2>", f"{BWD_DATA}_strided<double>", f"{BWD_W}<double, 3, 3, 2>"]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_deterministic(device: Device, dtype: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bits on every run: on emu under different block and fiber orders, on cuda twice
    (split_k sums its partial gw in the second pass; stride 2 runs the gather)."""
    seeds = (0, 5) if device.type == "emu" else (None, None)
    for name in ("split_k", "3x3_stride2_mult2", "3x3_dil2_mult2"):
        c = CASES[name]
        runs = []
        for seed in seeds:
            if seed is not None:
                monkeypatch.setenv("DLCORE_EMU_SEED", str(seed))
            runs.append([on_device(device, c, d, *operands(c, dtype, d)) for d in DIRECTIONS])
        for d, first, second in zip(DIRECTIONS, *runs):
            assert first.tobytes() == second.tobytes(), f"{name} {d} differs between runs"


def test_split_k_is_used() -> None:
    """split_k really splits backward-weight's reduction (so the reduce kernel is covered)."""
    c = CASES["split_k"]
    ho, wo = c.out_hw()
    tile = conv_depthwise_cuda._tile((ho, wo), c.n, c.kernel, c.stride, c.dilation, 4, False)
    assert tile is not None
    items = -(-c.n // tile.planes) * -(-ho // tile.rows) * -(-wo // tile.tile_w)
    splits, per_split = conv_depthwise_cuda._splits(items, c.c * c.mult)
    assert splits > 1 and splits * per_split >= items


def test_tiles_cover_small_and_large_planes() -> None:
    """small_planes_packed puts several planes in a block; large_plane needs several tiles
    across and down."""
    small, large = CASES["small_planes_packed"], CASES["large_plane"]
    t = conv_depthwise_cuda._tile(small.out_hw(), small.n * small.c, small.kernel, small.stride,
                                  small.dilation, 4, False)
    assert t is not None and t.planes > 1
    t = conv_depthwise_cuda._tile(large.out_hw(), large.n * large.c, large.kernel, large.stride,
                                  large.dilation, 4, False)
    assert t is not None
    grid = t.grid(large.n * large.c, large.out_hw())
    assert grid[1] > 1 and grid[2] > 1


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_forward_adds_the_bias(device: Device, dtype: type) -> None:
    c = CASES["3x3_stride2_mult2"]
    x, w = operands(c, dtype, "forward")
    bias = np.random.default_rng(4).standard_normal(c.c * c.mult).astype(dtype)
    got = device.to_host(conv_depthwise_cuda.conv2d_forward(
        device, device.asarray(x), device.asarray(w), c.out_hw(), *c.args(),
        bias=device.asarray(bias)))
    check(got, c, "forward", x, w, bias)


def test_window_past_shared_memory_goes_to_the_gemm_kernels() -> None:
    """A dilated window no tile fits (3x3, dilation 40: 81 x 81 staged elements of float64 per
    strip) runs conv2d.cu's implicit GEMM for forward and backward-weight, the gather for
    backward-data, and still matches."""
    c, dev = case(1, 2, 1, (82, 83), (3, 3), 1, 1, 40), Device("emu")
    for direction in DIRECTIONS:
        a, b = operands(c, np.float64, direction)
        with recorded_launches() as launches:
            got = on_device(dev, c, direction, a, b)
        sources = {launch.kernel.partition(":")[0] for launch in launches}
        assert sources == ({"conv2d_depthwise.cu"} if direction == "backward_data"
                           else {"conv2d.cu"}), (direction, launches)
        check(got, c, direction, a, b)


def test_empty_batch() -> None:
    dev = Device("emu")
    c = case(0, 2, 1, (5, 5), (3, 3), 1, 1)
    x = np.zeros(c.x_shape, np.float32)
    w = np.ones(c.w_shape, np.float32)
    y = conv_depthwise_cuda.conv2d_forward(dev, x, w, c.out_hw(), *c.args())
    assert y.shape == (0, 2, 5, 5)
    gx = conv_depthwise_cuda.conv2d_backward_data(dev, y, w, c.x_shape, *c.args())
    assert gx.shape == c.x_shape
    gw = conv_depthwise_cuda.conv2d_backward_weight(dev, x, y, c.w_shape, *c.args())
    np.testing.assert_array_equal(gw, np.zeros(c.w_shape, np.float32))


@pytest.mark.parametrize("x_shape, w_shape, groups, expected", [
    ((2, 4, 9, 9), (4, 1, 3, 3), 4, True),
    ((2, 4, 9, 9), (8, 1, 5, 5), 4, True),     # multiplier 2
    ((2, 1, 9, 9), (6, 1, 3, 3), 1, True),     # one channel: depthwise with multiplier 6
    ((2, 4, 9, 9), (4, 2, 3, 3), 2, False),    # grouped, two channels per group
    ((2, 4, 9, 9), (4, 4, 3, 3), 1, False),    # dense
    ((2, 4, 9, 9), (6, 1, 3, 3), 4, False),    # F not a multiple of C
    ((2, 4, 9, 9), (2, 1, 3, 3), 4, False),    # fewer filters than channels
    ((4, 9, 9), (4, 1, 3, 3), 4, False),       # not batched (the caller adds N first)
])
def test_serves(x_shape: tuple, w_shape: tuple, groups: int, expected: bool) -> None:
    assert conv_depthwise_cuda.serves(x_shape, w_shape, groups) is expected
