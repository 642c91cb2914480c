"""Tensor-core conv2d kernels (kernels/conv2d_tc.cu through dlcore.ops.conv_tc_cuda) against
float64 NumPy references (dlcore.ops.conv_cpu) on ``emu`` (checked mode) and ``cuda`` (skipped
without a GPU), with an error bound derived elementwise from the arithmetic, not a tolerance.

The bound. Let S = sum_k |a_k||b_k| (the same convolution of |x|, |w| or |gy| in float64) and
n the number of float additions on the way to an output: K for forward (Cg*KH*KW) and
backward-data (Fg*KH*KW), K + splits for backward-weight (N*Ho*Wo, then the split reduce).

* float32 (TF32): each operand is rounded to 11 significant bits (relative error <= 2^-11), so
  a product's relative error is <= (1 + 2^-11)^2 - 1 = 2^-10 + 2^-22; products of two such
  values are exact in float32, and n float additions add gamma_n = n u / (1 - n u) of the
  rounded products' S. |err| <= (2^-10 + 2^-22) S + gamma_n (1 + 2^-10 + 2^-22) S.
* float16: the operands are the float16 tensors themselves (the reference uses their exact
  values), their products are exact in float32; the float sum adds gamma_n S, rounding the
  result to float16 adds 2^-11 of its magnitude plus 2^-25 (half of the subnormal spacing).
  |err| <= gamma_n S + 2^-11 (|y| + gamma_n S) + 2^-25.

u is 2^-24 on ``emu``, which adds in k order with round-to-nearest; 2^-23 on ``cuda``, whose
tensor cores round their internal sums in an unspecified way (truncation: one ulp).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pytest

from dlcore.backends import cudnn
from dlcore.device import Device, device_count
from dlcore.kernels import ctype, recorded_launches
from dlcore.ops import conv_cpu, conv_tc_cuda
from dlcore.ops.conv_gemm_cuda import split_k

DTYPES = (np.float32, np.float16)
DIRECTIONS = ("forward", "backward_data", "backward_weight")


class Case(NamedTuple):
    x_shape: tuple[int, int, int, int]
    w_shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def out_hw(self) -> tuple[int, int]:
        h, w = ((self.x_shape[2 + i] + 2 * self.padding[i]
                 - self.dilation[i] * (self.w_shape[2 + i] - 1) - 1) // self.stride[i] + 1
                for i in range(2))
        return h, w

    def args(self) -> tuple:
        return self.stride, self.padding, self.dilation, self.groups


CASES = {  # partial tiles everywhere: no size is a multiple of 128 (or of the K step, 16)
    "3x3_pad1_odd": Case((2, 5, 9, 9), (7, 5, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    "stride2_dil2_groups2": Case((2, 4, 11, 10), (6, 2, 3, 3), (2, 2), (2, 2), (2, 2), 2),
    "1x1_two_col_tiles": Case((3, 3, 6, 7), (130, 3, 1, 1), (1, 1), (0, 0), (1, 1), 1),
    "1x1_stride2": Case((2, 9, 7, 7), (6, 9, 1, 1), (2, 2), (0, 0), (1, 1), 1),
    "5x5_pad2": Case((1, 3, 12, 11), (5, 3, 5, 5), (1, 1), (2, 2), (1, 1), 1),
    "5x5_stride2_groups2": Case((2, 6, 9, 9), (4, 3, 5, 5), (2, 2), (1, 1), (1, 1), 2),
    "asymmetric": Case((2, 3, 8, 9), (4, 3, 3, 2), (2, 1), (1, 0), (1, 2), 1),
    "stride3_gt_kernel": Case((1, 3, 11, 10), (2, 3, 2, 2), (3, 3), (1, 0), (1, 1), 1),
    "channels_130": Case((2, 130, 5, 5), (3, 130, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    "depthwise": Case((2, 4, 7, 7), (4, 1, 3, 3), (1, 1), (1, 1), (1, 1), 4),
    "split_k": Case((4, 3, 12, 12), (5, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    "plane_6_wraps": Case((7, 2, 4, 5), (3, 2, 3, 3), (1, 1), (0, 0), (1, 1), 1),
    "plane_1": Case((5, 3, 3, 3), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1),
}


# TF32 is these tests' subject: keep cudnn.allow_tf32 at its default, True (tests/conftest.py)
pytestmark = pytest.mark.tf32_default


@pytest.fixture(params=("emu", "cuda"))
def device(request: pytest.FixtureRequest) -> Device:
    if request.param == "cuda" and device_count() == 0:
        pytest.skip("no CUDA device")
    dev = Device(request.param)
    if not conv_tc_cuda.serves(dev, np.float32) or not conv_tc_cuda.serves(dev, np.float16):
        pytest.skip(f"{dev} has no tensor cores for float32 (TF32) and float16")
    return dev


def operands(case: Case, dtype: type, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """The direction's two inputs (x and w, gy and w, or x and gy), standard normal."""
    # a seed stable across processes (str hashes are salted per process)
    rng = np.random.default_rng([*case.x_shape, *case.w_shape, DIRECTIONS.index(direction)])
    y_shape = (case.x_shape[0], case.w_shape[0], *case.out_hw())
    shapes = {"forward": (case.x_shape, case.w_shape), "backward_data": (y_shape, case.w_shape),
              "backward_weight": (case.x_shape, y_shape)}[direction]
    a, b = (rng.standard_normal(s).astype(dtype) for s in shapes)
    return a, b


def run(impl: Any, device: Any, case: Case, direction: str, a: Any, b: Any) -> Any:
    """One direction of conv2d through ``impl`` (conv_tc_cuda, or conv_cpu for references)."""
    if direction == "forward":
        return impl.conv2d_forward(device, a, b, case.out_hw(), *case.args())
    if direction == "backward_data":
        return impl.conv2d_backward_data(device, a, b, case.x_shape, *case.args())
    return impl.conv2d_backward_weight(device, a, b, case.w_shape, *case.args())


def on_device(device: Device, direction: str, case: Case, a: np.ndarray,
              b: np.ndarray) -> np.ndarray:
    out = run(conv_tc_cuda, device, case, direction, device.asarray(a), device.asarray(b))
    return device.to_host(out)


def additions(case: Case, direction: str) -> int:
    """The number of float additions on the way to one output (see the module docstring)."""
    f, cg, kh, kw = case.w_shape
    if direction == "forward":
        return cg * kh * kw
    if direction == "backward_data":
        return f // case.groups * kh * kw
    k = case.x_shape[0] * case.out_hw()[0] * case.out_hw()[1]
    return k + k // (conv_tc_cuda.K_STEP * conv_tc_cuda.MIN_SPLIT_STEPS) + 1  # + the splits


def error_bound(device: Device, dtype: type, case: Case, direction: str, a: np.ndarray,
                b: np.ndarray, reference: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """The elementwise bound of the module docstring; a forward bias (exact in float32, added
    to the sum before the one rounding) is one more addition of |bias| (never TF32-rounded)."""
    s = run(conv_cpu, None, case, direction, np.abs(a.astype(np.float64)),
            np.abs(b.astype(np.float64)))
    u = 2.0**-24 if device.type == "emu" else 2.0**-23
    n = additions(case, direction) + (bias is not None)
    gamma = n * u / (1 - n * u)
    extra = 0.0 if bias is None else np.abs(bias.astype(np.float64)).reshape(1, -1, 1, 1)
    if dtype == np.float32:
        product = 2.0**-10 + 2.0**-22
        return product * s + gamma * ((1 + product) * s + extra)
    total = gamma * (s + extra)
    return total + 2.0**-11 * (np.abs(reference) + total) + 2.0**-25


def assert_within(got: np.ndarray, reference: np.ndarray, bound: np.ndarray, what: str) -> None:
    assert got.shape == reference.shape
    err = np.abs(got.astype(np.float64) - reference)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (f"{what}: |err| {err[worst]:.3g} > bound {bound[worst]:.3g} "
                                  f"at {worst} (got {got[worst]}, reference {reference[worst]})")


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(CASES))
def test_within_the_derived_error_bound(device: Device, name: str, dtype: type,
                                        direction: str) -> None:
    case = CASES[name]
    a, b = operands(case, dtype, direction)
    got = on_device(device, direction, case, a, b)
    reference = run(conv_cpu, None, case, direction, a.astype(np.float64), b.astype(np.float64))
    assert got.dtype == dtype
    bound = error_bound(device, dtype, case, direction, a, b, reference)
    assert_within(got, reference, bound, f"{name} {direction}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", ["3x3_pad1_odd", "stride2_dil2_groups2", "1x1_two_col_tiles"])
def test_forward_bias_within_the_bound(device: Device, name: str, dtype: type) -> None:
    case = CASES[name]
    x, w = operands(case, dtype, "forward")
    bias = np.random.default_rng(5).standard_normal(case.w_shape[0]).astype(dtype)
    got = device.to_host(conv_tc_cuda.conv2d_forward(
        device, device.asarray(x), device.asarray(w), case.out_hw(), *case.args(),
        bias=device.asarray(bias)))
    reference = conv_cpu.conv2d_forward(None, x.astype(np.float64), w.astype(np.float64),
                                        case.out_hw(), *case.args(), bias=bias.astype(np.float64))
    assert got.dtype == dtype
    bound = error_bound(device, dtype, case, "forward", x, w, reference, bias)
    assert_within(got, reference, bound, f"{name} forward + bias")


def tf32(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest value with 11 significant bits, ties away from zero (cvt.rna),
    in float64 arithmetic (independent of the kernels' bit operations)."""
    mantissa, exponent = np.frexp(np.abs(x.astype(np.float64)))  # mantissa in [0.5, 1)
    rounded = np.floor(mantissa * 2.0**11 + 0.5) / 2.0**11
    return np.sign(x) * np.ldexp(rounded, exponent)


def single_products(dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Values whose TF32 rounding differs from truncation: random mantissas plus exact ties
    (1 + 2^-11 rounds away from zero to 1 + 2^-10, where even rounding and truncation give 1)."""
    rng = np.random.default_rng(7)
    a = rng.uniform(-2, 2, 24).astype(dtype)
    b = rng.uniform(-2, 2, 6).astype(dtype)
    a[:4] = [1 + 2.0**-11, -(1 + 2.0**-11), 1 + 3 * 2.0**-11, 1.5 + 2.0**-12]
    return a, b


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_single_products_are_the_rounded_operands_product(device: Device, dtype: type) -> None:
    """With one product per output (K = 1) the result is exact: the product of the operands as
    the tensor cores take them (TF32 rounded to nearest, ties away; float16 as they are),
    rounded to the output dtype. A kernel that truncated instead of rounding, or skipped TF32,
    would differ."""
    a, b = single_products(dtype)
    rounded = tf32 if dtype == np.float32 else (lambda v: v.astype(np.float64))
    # out[f or c, i, j] = a[i, j] * b[f or c]; gw[f, c] = b[f] * a[c]
    expect = (rounded(b)[:, None, None] * rounded(a).reshape(1, 4, 6)).astype(dtype)
    forward = Case((1, 1, 4, 6), (6, 1, 1, 1), (1, 1), (0, 0), (1, 1), 1)
    y = on_device(device, "forward", forward, a.reshape(1, 1, 4, 6), b.reshape(6, 1, 1, 1))
    np.testing.assert_array_equal(y[0], expect)
    data = Case((1, 6, 4, 6), (1, 6, 1, 1), (1, 1), (0, 0), (1, 1), 1)
    gx = on_device(device, "backward_data", data, a.reshape(1, 1, 4, 6), b.reshape(1, 6, 1, 1))
    np.testing.assert_array_equal(gx[0], expect)
    weight = Case((1, 24, 1, 1), (6, 24, 1, 1), (1, 1), (0, 0), (1, 1), 1)
    gw = on_device(device, "backward_weight", weight, a.reshape(1, 24, 1, 1),
                   b.reshape(1, 6, 1, 1))
    np.testing.assert_array_equal(gw[:, :, 0, 0], expect.reshape(6, 24))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_deterministic(device: Device, dtype: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bits on every run: on emu under several block and fiber orders, on cuda twice.
    The split-K case covers the second-pass reduce."""
    seeds = (0, 1, 7) if device.type == "emu" else (None, None)
    for name in ("split_k", "stride2_dil2_groups2"):
        case = CASES[name]
        first: list[np.ndarray] = []
        for seed in seeds:
            if seed is not None:
                monkeypatch.setenv("DLCORE_EMU_SEED", str(seed))
            outs = [on_device(device, d, case, *operands(case, dtype, d)) for d in DIRECTIONS]
            if not first:
                first = outs
            for d, o, f in zip(DIRECTIONS, outs, first):
                assert o.tobytes() == f.tobytes(), f"{name} {d} differs under seed {seed}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_backward_weight_splits_k_and_reduces(device: Device, dtype: type) -> None:
    """N*Ho*Wo = 576 splits in four float32 partials and one reduce; a short K runs one split,
    written straight into gw for float32 (float16 still rounds in the reduce)."""
    elem = ctype(dtype)
    for name, reduced in (("split_k", True), ("3x3_pad1_odd", dtype == np.float16)):
        case = CASES[name]
        with recorded_launches() as launches:
            on_device(device, "backward_weight", case, *operands(case, dtype, "backward_weight"))
        kernels = [launch.kernel for launch in launches]
        assert kernels[0] == f"conv2d_tc.cu:conv2d_tc_backward_weight<{elem}>"
        assert (f"conv2d_tc.cu:conv2d_tc_backward_weight_reduce<{elem}>" in kernels) == reduced
    assert split_k(576, 1, conv_tc_cuda.K_STEP, conv_tc_cuda.TARGET_BLOCKS) == (4, 144)


def test_empty_inputs() -> None:
    emu = Device("emu")
    x = np.zeros((0, 3, 5, 5), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    assert conv_tc_cuda.conv2d_forward(emu, x, w, (3, 3), (1, 1), (0, 0), (1, 1), 1).shape == \
        (0, 4, 3, 3)
    gy = np.zeros((0, 4, 3, 3), np.float16)
    gw = conv_tc_cuda.conv2d_backward_weight(emu, x.astype(np.float16), gy, w.shape, (1, 1),
                                             (0, 0), (1, 1), 1)
    assert gw.dtype == np.float16 and not gw.any()


def test_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    emu, cpu, gpu = Device("emu"), Device("cpu"), Device("cuda")
    assert conv_tc_cuda.serves(emu, np.float32) and conv_tc_cuda.serves(emu, np.float16)
    assert not conv_tc_cuda.serves(emu, np.float64)
    assert not conv_tc_cuda.serves(cpu, np.float16)
    monkeypatch.setattr(cudnn, "allow_tf32", False)  # TF32 off: float32 is not served
    assert not conv_tc_cuda.serves(emu, np.float32) and conv_tc_cuda.serves(emu, np.float16)
    monkeypatch.setattr(cudnn, "allow_tf32", True)
    monkeypatch.setattr(conv_tc_cuda, "_gpu_capability", lambda index: (7, 5))
    assert not conv_tc_cuda.serves(gpu, np.float32) and conv_tc_cuda.serves(gpu, np.float16)
    monkeypatch.setattr(conv_tc_cuda, "_gpu_capability", lambda index: (6, 1))
    assert not conv_tc_cuda.serves(gpu, np.float16)
    # shapes: within the kernels' int32 offsets and grid limits, or not
    assert conv_tc_cuda.serves(emu, np.float16, (8, 64, 56, 56), (64, 64, 3, 3), 1, (56, 56))
    assert not conv_tc_cuda.serves(emu, np.float16, (1, 1024, 2048, 2048), (8, 1024, 1, 1))
    assert not conv_tc_cuda.serves(emu, np.float16, (1, 70000, 4, 4), (70000, 1, 3, 3), 70000)
