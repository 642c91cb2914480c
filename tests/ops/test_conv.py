"""conv2d / conv1d / conv_transpose2d against a direct-loop float64 reference (outputs and
every gradient) on each device, float64 gradcheck, and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
from op_check import check, grad_ok, gradgrad_ok, on, rand

import dlcore
import dlcore.nn as nn
import dlcore.nn.functional as F
from dlcore.ops.conv import conv1d, conv2d, conv_transpose2d


@pytest.fixture(autouse=True)
def _other_paths(request, monkeypatch):
    """The unrolled-weight GEMM (conv_cpu.UNROLLED_*) would take most of this file's small
    shapes on the cpu; it is off here so that the path tests reach the paths they name,
    except in the tests that ask for the ``unrolled`` fixture (which forces it)."""
    from dlcore.ops import conv_cpu
    if "unrolled" not in request.fixturenames:
        monkeypatch.setattr(conv_cpu, "UNROLLED", False)


@pytest.fixture
def unrolled(monkeypatch):
    """Every groups-1 NCHW convolution on the cpu by the unrolled weight, all directions."""
    from dlcore.ops import conv_cpu
    monkeypatch.setattr(conv_cpu, "UNROLLED", True)
    for name in ("UNROLLED_ANY_WASTE", "UNROLLED_DATA_ANY_WASTE"):
        monkeypatch.setattr(conv_cpu, name, float("inf"))
    monkeypatch.setattr(conv_cpu, "UNROLLED_GRAD_MIN_BATCH", 0)
    calls = []
    from dlcore.ops import conv_unrolled_cpu as cu
    for name in ("forward", "backward_data", "backward_weight"):
        real = getattr(cu, name)
        monkeypatch.setattr(cu, name,
                            lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    return calls


def ref_conv2d(x, w, gy, stride, padding, dilation, groups):
    """Direct loops over groups, output pixels and kernel offsets (vectorised only over
    batch and channels): y, and the gradients gx, gw of <gy, y>."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if gy is not None:  # conv_transpose2d's output_padding: gy covers fewer rows/cols
        oh, ow = gy.shape[2:]
    y = np.zeros((n, o, oh, ow))
    gxp, gw = np.zeros_like(xp), np.zeros_like(w)
    for g in range(groups):
        ci, co = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
        for a in range(oh):
            for b in range(ow):
                for i in range(kh):
                    for j in range(kw):
                        r, s = a * sh + i * dh, b * sw + j * dw
                        y[:, co, a, b] += xp[:, ci, r, s] @ w[co, :, i, j].T
                        if gy is not None:
                            gxp[:, ci, r, s] += gy[:, co, a, b] @ w[co, :, i, j]
                            gw[co, :, i, j] += gy[:, co, a, b].T @ xp[:, ci, r, s]
    return y, gxp[:, :, ph:ph + h, pw:pw + wd], gw


# (N, C, H, W), (O, kH, kW), stride, padding, dilation, groups
CASES = [
    ((2, 3, 7, 5), (4, 3, 3), 1, 1, 1, 1),           # odd sizes, same-size output
    ((1, 2, 9, 8), (3, 2, 2), 3, 0, 1, 1),           # stride larger than the kernel, batch 1
    ((2, 4, 9, 9), (4, 3, 3), 1, 2, 2, 2),           # dilation 2, groups 2
    ((1, 2, 11, 10), (2, 3, 2), (2, 1), (3, 1), 3, 1),  # dilation 3, max padding, pairs
    ((2, 4, 6, 7), (8, 3, 3), (1, 2), 1, 1, 4),      # depthwise, multiplier 2, strided
    ((2, 3, 6, 6), (3, 3, 3), 2, 1, 1, 3),           # depthwise strided
    ((2, 5, 4, 6), (3, 1, 1), 1, 0, 1, 1),           # 1x1 (pointwise GEMM)
    ((1, 2, 8, 9), (3, 7, 7), 2, 3, 1, 1),           # 7x7 strided stem
]
IDS = [f"case{i}" for i in range(len(CASES))]


def _pair(v):
    return (v, v) if isinstance(v, int) else v


def _arrays(case, seed=0):
    xs, (o, kh, kw), stride, padding, dilation, groups = case
    x = rand(*xs, seed=seed)
    w = rand(o, xs[1] // groups, kh, kw, seed=seed + 1)
    return x, w, _pair(stride), _pair(padding), _pair(dilation), groups


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv2d_matches_reference(device, case):
    x, w, stride, padding, dilation, groups = _arrays(case)
    tx, tw = on(device, x, requires_grad=True), on(device, w, requires_grad=True)
    y = conv2d(tx, tw, stride=stride, padding=padding, dilation=dilation, groups=groups)
    gy = rand(*y.shape, seed=5)
    ry, rgx, rgw = ref_conv2d(x, w, gy, stride, padding, dilation, groups)
    check(y, ry)
    y.backward(on(device, gy))
    check(tx.grad, rgx)
    check(tw.grad, rgw)


@pytest.mark.parametrize("case", CASES[:5], ids=IDS[:5])
def test_conv2d_float32(device, case):
    x, w, stride, padding, dilation, groups = _arrays(case)
    y = conv2d(on(device, x.astype(np.float32)), on(device, w.astype(np.float32)),
               stride=stride, padding=padding, dilation=dilation, groups=groups)
    ry, _, _ = ref_conv2d(x, w, None, stride, padding, dilation, groups)
    check(y, ry, rtol=1e-4, atol=1e-4, dtype=np.float32)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv2d_gradcheck(device, case):
    x, w, stride, padding, dilation, groups = _arrays(case)
    x = x[:1, :, :6, :6] if case[1][1] < 7 else x[:1]
    b = rand(w.shape[0], seed=3)
    assert grad_ok(lambda a, k, c: conv2d(a, k, c, stride, padding, dilation, groups),
                   [x, w, b], device)


def test_conv2d_double_backward(device):
    x, w = rand(1, 2, 5, 4, seed=1), rand(4, 1, 2, 3, seed=2)
    assert gradgrad_ok(lambda a, k: conv2d(a, k, stride=(2, 1), padding=1, groups=2),
                       [x, w], device)


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (4, 1), ((2, 5), 1), (3, 2), (2, 3)])
def test_conv2d_same_and_valid(device, kernel, dilation):
    kh, kw = _pair(kernel)
    x, w = rand(2, 2, 7, 6, seed=1), rand(3, 2, kh, kw, seed=2)
    y = conv2d(on(device, x), on(device, w), padding="same", dilation=dilation)
    assert tuple(y.shape) == (2, 3, 7, 6)
    # PyTorch's same: the odd extra padding goes to the bottom/right
    th, tw = dilation * (kh - 1), dilation * (kw - 1)
    xp = np.pad(x, ((0, 0), (0, 0), (th // 2, th - th // 2), (tw // 2, tw - tw // 2)))
    check(y, ref_conv2d(xp, w, None, (1, 1), (0, 0), _pair(dilation), 1)[0])
    valid = conv2d(on(device, x), on(device, w), padding="valid", dilation=dilation)
    check(valid, ref_conv2d(x, w, None, (1, 1), (0, 0), _pair(dilation), 1)[0])
    assert grad_ok(lambda a, k: conv2d(a, k, padding="same", dilation=dilation),
                   [x[:1], w], device)


def test_conv2d_unbatched(device):
    x, w = rand(2, 5, 5, seed=1), rand(3, 2, 3, 3, seed=2)
    y = conv2d(on(device, x), on(device, w), padding=1)
    check(y, ref_conv2d(x[None], w, None, (1, 1), (1, 1), (1, 1), 1)[0][0])


def test_conv1d(device):
    x, w, b = rand(2, 4, 9, seed=1), rand(6, 2, 3, seed=2), rand(6, seed=3)
    y = conv1d(on(device, x), on(device, w), on(device, b), stride=2, padding=1, dilation=2,
               groups=2)
    ref = ref_conv2d(x[:, :, None], w[:, :, None], None, (1, 2), (0, 1), (1, 2), 2)[0]
    check(y, ref[:, :, 0] + b[None, :, None])
    assert grad_ok(lambda a, k, c: conv1d(a, k, c, stride=2, padding=1, dilation=2, groups=2),
                   [x[:1], w, b], device)
    assert tuple(conv1d(on(device, x[0]), on(device, w), groups=2).shape) == (6, 7)
    same = conv1d(on(device, x), on(device, rand(3, 4, 4, seed=4)), padding="same")
    assert tuple(same.shape) == (2, 3, 9)


# (N, C_in, H, W), (C_out/groups, kH, kW), stride, padding, output_padding, groups, dilation
TRANSPOSE_CASES = [
    ((2, 4, 3, 4), (3, 3, 3), 2, 1, 1, 1, 1),
    ((1, 4, 4, 3), (1, 2, 3), (1, 3), 0, (0, 2), 2, 1),
    ((2, 2, 3, 3), (2, 3, 3), 1, 2, 1, 1, 2),
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=["t0", "t1", "t2"])
def test_conv_transpose2d(device, case):
    xs, (cg, kh, kw), stride, padding, out_pad, groups, dilation = case
    x, w, b = rand(*xs, seed=1), rand(xs[1], cg, kh, kw, seed=2), rand(cg * groups, seed=3)
    y = conv_transpose2d(on(device, x), on(device, w), on(device, b), stride, padding,
                         out_pad, groups, dilation)
    st, pd, op, dl = _pair(stride), _pair(padding), _pair(out_pad), _pair(dilation)
    shape = [(xs[2 + i] - 1) * st[i] - 2 * pd[i] + dl[i] * ((kh, kw)[i] - 1) + op[i] + 1
             for i in range(2)]
    # the transposed convolution is the input gradient of conv2d with that weight
    zeros = np.zeros((xs[0], cg * groups, *shape))
    _, ref, _ = ref_conv2d(zeros, w, x, st, pd, dl, groups)
    check(y, ref + b[None, :, None, None])
    assert grad_ok(lambda a, k, c: conv_transpose2d(a, k, c, stride, padding, out_pad, groups,
                                                    dilation), [x[:1], w, b], device)


@pytest.mark.parametrize("call,match", [
    (lambda x: conv2d(x, dlcore.ones(3, 1, 3, 3), groups=3), "divisible by groups"),
    (lambda x: conv2d(x, dlcore.ones(4, 2, 3, 3)), "input channels"),
    (lambda x: conv2d(x, dlcore.ones(4, 4, 3)), "weight must be 4-D"),
    (lambda x: conv2d(x, dlcore.ones(2, 4, 9, 9)), "larger than the padded input"),
    (lambda x: conv2d(x, dlcore.ones(2, 4, 3, 3), stride=0), "stride"),
    (lambda x: conv2d(x, dlcore.ones(2, 4, 3, 3), stride=-1), "stride"),
    (lambda x: conv2d(x, dlcore.ones(2, 4, 3, 3), padding=-1), "padding"),
    (lambda x: conv2d(x, dlcore.ones(2, 4, 3, 3), padding="same", stride=2), "same"),
    (lambda x: conv2d(x, dlcore.ones(2, 4, 3, 3), padding="full"), "padding"),
    (lambda x: conv2d(x[0, 0], dlcore.ones(2, 4, 3, 3)), "input"),
    (lambda x: conv_transpose2d(x, dlcore.ones(3, 2, 3, 3)), "in_channels"),
    (lambda x: conv_transpose2d(x, dlcore.ones(4, 2, 3, 3), output_padding=1), "output_padding"),
    (lambda x: conv1d(x[0], dlcore.ones(2, 6, 3, 3)), "3-D"),
])
def test_conv_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(dlcore.ones(2, 4, 6, 6))


@pytest.mark.parametrize("op", ["conv2d", "conv1d", "conv_transpose2d"])
def test_mixed_input_and_weight_dtypes_raise_as_pytorch(op):
    """A float64 batch into a float32 layer used to be promoted silently."""
    spatial = (5,) if op == "conv1d" else (5, 5)
    x = dlcore.ones(1, 2, *spatial, dtype=dlcore.float64)
    w = dlcore.ones(2, 2, *(3,) * len(spatial))
    with pytest.raises(RuntimeError, match=rf"{op}: input type \(float64\) and weight type "
                                           r"\(float32\) should be the same"):
        getattr(F, op)(x, w)
    with pytest.raises(RuntimeError, match="bias float64"):
        getattr(F, op)(x.float(), w, dlcore.ones(2, dtype=dlcore.float64))
    layer = {"conv2d": nn.Conv2d(2, 2, 3), "conv1d": nn.Conv1d(2, 2, 3),
             "conv_transpose2d": nn.ConvTranspose2d(2, 2, 3)}[op]
    with pytest.raises(RuntimeError, match="should be the same"):
        layer(x)
    assert layer.double()(x).dtype == dlcore.float64


# The cpu paths chosen by shape (dlcore/ops/conv_cpu.py): the one-channel columns of small
# images, backward data by GEMM then col2im (8 * C <= O), and the blocked per-plane
# multiply-adds of depthwise (also the flipped, og == 1 form of backward data with a
# multiplier), several blocks of planes, wide (stride 1 across) and strided.
# (N, C, H, W), (O, kH, kW), stride, padding, dilation, groups
PATH_CASES = [
    ((3, 1, 8, 7), (16, 3, 3), 1, 1, 1, 1),           # one channel, same size
    ((2, 1, 9, 8), (9, 3, 2), (2, 1), (2, 0), (1, 2), 1),  # one channel, strided, dilated
    ((2, 2, 6, 5), (17, 3, 3), 2, 1, 1, 1),           # gemm-first backward data, strided
    ((2, 2, 5, 6), (16, 2, 3), 1, (1, 2), 2, 1),      # gemm-first, dilated, pad pair
    ((3, 5, 9, 11), (5, 3, 3), 1, 1, 1, 5),           # depthwise wide
    ((2, 3, 7, 8), (6, 3, 3), 1, 1, 1, 3),            # multiplier 2: flipped og == 1 path
    ((2, 2, 9, 7), (6, 5, 5), 1, 2, 1, 2),            # multiplier 3, 5x5
    ((2, 3, 9, 10), (3, 3, 3), (1, 2), 2, 2, 3),      # depthwise strided across, dilated
    ((1, 4, 10, 9), (8, 3, 1), (2, 1), (1, 0), 1, 4), # strided down, wide across
    ((2, 2, 12, 5), (2, 3, 3), 1, 0, 1, 2),           # no padding, narrow: not wide
    ((2, 3, 6, 9), (3, 3, 5), 1, (1, 2), 1, 3),       # depthwise 3x5, padding pair
    ((1, 2, 9, 9), (2, 7, 7), 1, 3, 1, 2),            # depthwise 7x7, one image
    ((3, 4, 5, 4), (4, 2, 2), 1, 0, 1, 4),            # depthwise 2x2, no padding
]
PATH_IDS = [f"path{i}" for i in range(len(PATH_CASES))]


def _check_cpu_against_reference(case, seed, channels_last=False):
    """conv2d on the cpu (input NCHW or channels-last), its output and both gradients,
    against the loop reference."""
    x, w, stride, padding, dilation, groups = _arrays(case)
    tx = on("cpu", x)
    if channels_last:
        tx = tx.contiguous(memory_format=dlcore.channels_last)
    tx.requires_grad_()
    tw = on("cpu", w, requires_grad=True)
    y = conv2d(tx, tw, stride=stride, padding=padding, dilation=dilation, groups=groups)
    gy = rand(*y.shape, seed=seed)
    ry, rgx, rgw = ref_conv2d(x, w, gy, stride, padding, dilation, groups)
    check(y, ry)
    y.backward(on("cpu", gy))
    check(tx.grad, rgx)
    check(tw.grad, rgw)


@pytest.mark.parametrize("toeplitz", [True, False])
@pytest.mark.parametrize("block", [None, 1])
@pytest.mark.parametrize("case", PATH_CASES, ids=PATH_IDS)
def test_conv2d_cpu_paths_match_reference(case, block, toeplitz, monkeypatch):
    """With the banded-GEMM depthwise path (stride 1) on and off: off, the per-tap path runs
    the stride-1 depthwise cases too."""
    from dlcore.ops import conv_cpu
    monkeypatch.setattr(conv_cpu, "DEPTHWISE_TOEPLITZ", toeplitz)
    if block is not None:  # one plane (channel) per block: every block boundary and reuse
        monkeypatch.setattr(conv_cpu, "PLANE_BLOCK_BYTES", block)
        monkeypatch.setattr(conv_cpu, "TOEPLITZ_BLOCK_BYTES", block)
    _check_cpu_against_reference(case, seed=5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", [c for c in PATH_CASES if c[2] == 1
                                  and c[5] == c[0][1] == c[1][0] and c[4] == 1])
def test_depthwise_toeplitz_path_is_taken(case, channels_last, monkeypatch):
    """The stride-1 depthwise cases above take the banded GEMMs (forward, and the flipped
    forward of the data gradient), from NCHW and channels-last inputs alike."""
    from dlcore.ops import conv_cpu
    calls = []
    real = conv_cpu._toeplitz_depthwise_forward
    monkeypatch.setattr(conv_cpu, "_toeplitz_depthwise_forward",
                        lambda *a: calls.append(a[0].shape) or real(*a))
    _check_cpu_against_reference(case, seed=6, channels_last=channels_last)
    assert len(calls) == 2, calls  # forward, and backward data


def test_depthwise_toeplitz_only_on_narrow_images() -> None:
    """The banded GEMMs do Wp multiply-adds per output for kW useful ones: taken up to a
    padded width of TOEPLITZ_MAX_WIDTH_PER_TAP kernel widths, not beyond, nor strided."""
    from dlcore.ops import conv_cpu
    x = np.zeros((1, 8, 4, 31), np.float32)  # padded width 33 = 11 * 3
    assert conv_cpu._use_toeplitz(x, (8, 1, 3, 3), (1, 1), (1, 1), (1, 1), 8)
    x = np.zeros((1, 8, 4, 32), np.float32)  # 34
    assert not conv_cpu._use_toeplitz(x, (8, 1, 3, 3), (1, 1), (1, 1), (1, 1), 8)
    x = np.zeros((1, 8, 4, 8), np.float32)
    assert not conv_cpu._use_toeplitz(x, (8, 1, 3, 3), (2, 2), (1, 1), (1, 1), 8)
    assert not conv_cpu._use_toeplitz(x, (16, 1, 3, 3), (1, 1), (1, 1), (1, 1), 8)  # x2
    assert not conv_cpu._use_toeplitz(x, (8, 1, 3, 3), (1, 1), (1, 1), (2, 2), 8)
    assert not conv_cpu._use_toeplitz(x.astype(np.float16), (8, 1, 3, 3), (1, 1), (1, 1),
                                      (1, 1), 8)


@pytest.mark.parametrize("case", PATH_CASES, ids=PATH_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_conv2d_cpu_paths_low_precision(case, dtype):
    x, w, stride, padding, dilation, groups = _arrays(case)
    x, w = x.astype(dtype), w.astype(dtype)
    tx, tw = on("cpu", x, requires_grad=True), on("cpu", w, requires_grad=True)
    y = conv2d(tx, tw, stride=stride, padding=padding, dilation=dilation, groups=groups)
    gy = rand(*y.shape, seed=5).astype(dtype)
    ry, rgx, rgw = ref_conv2d(x.astype(np.float64), w.astype(np.float64),
                              gy.astype(np.float64), stride, padding, dilation, groups)
    tol = 1e-4 if dtype == np.float32 else 1e-2
    assert y.dtype == tx.dtype
    check(y, ry, rtol=tol, atol=tol, dtype=dtype)
    y.backward(on("cpu", gy))
    check(tx.grad, rgx, rtol=tol, atol=tol, dtype=dtype)
    check(tw.grad, rgw, rtol=tol, atol=tol, dtype=dtype)


@pytest.mark.parametrize("flat_pixels", [1, 10**9])
@pytest.mark.parametrize("case", [((2, 3, 7, 6), (4, 3, 3), 1, 1, 1, 1),
                                  ((2, 4, 9, 9), (6, 3, 3), 2, 1, 1, 2)], ids=["g1", "g2"])
def test_conv2d_forward_per_image_and_flat_gemms(case, flat_pixels, monkeypatch):
    """Both forms of the NCHW forward GEMM (one per image for large images, one flat product
    plus a transposed copy for small ones), forced on small shapes; backward data at stride
    1 runs through the same forward."""
    from dlcore.ops import conv_cpu
    monkeypatch.setattr(conv_cpu, "FORWARD_FLAT_PIXELS", flat_pixels)
    _check_cpu_against_reference(case, seed=6)


@pytest.mark.parametrize("few", [0, 4])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv2d_few_channel_and_nhwc_columns(case, few, monkeypatch):
    """Inputs of at most FEW_CHANNELS channels take per-image NCHW columns (forward and
    weight gradient); with the threshold at 0 the same shapes take the NHWC columns, so
    both column builders see every stride, padding and dilation of CASES."""
    from dlcore.ops import conv_cpu
    monkeypatch.setattr(conv_cpu, "FEW_CHANNELS", few)
    seen = []
    for name in ("_few_channels_forward", "_few_channels_backward_weight"):
        real = getattr(conv_cpu, name)
        monkeypatch.setattr(conv_cpu, name,
                            lambda *a, _real=real, _name=name: seen.append(_name) or _real(*a))
    _check_cpu_against_reference(case, seed=7)
    xs, _, _, _, _, groups = case
    few_path = groups == 1 and xs[1] <= few and case[1][1:] != (1, 1)
    assert bool(seen) == few_path, seen
    if few_path:
        assert set(seen) == {"_few_channels_forward", "_few_channels_backward_weight"}


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", [((2, 5, 7, 6), (3, 1, 1), 2, 0, 1, 1),
                                  ((1, 3, 9, 8), (4, 1, 1), (3, 2), 0, 2, 1)],
                         ids=["s2", "s3x2-dilated"])
def test_conv2d_strided_pointwise_reads_the_subsampled_input(case, channels_last,
                                                              monkeypatch):
    """A strided unpadded 1x1 kernel (a ResNet shortcut) is a GEMM on the pixels it reads:
    forward and weight gradient go through _subsampled, NCHW and channels-last, against
    the loop reference."""
    from dlcore.ops import conv_cpu
    seen = []
    real = conv_cpu._subsampled
    monkeypatch.setattr(conv_cpu, "_subsampled", lambda *a: seen.append(a[1]) or real(*a))
    _check_cpu_against_reference(case, seed=8, channels_last=channels_last)
    stride = _pair(case[2])
    assert seen == [stride, stride]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", [((2, 3, 4, 4), (5, 3, 3), 1, 1, 1, 1),
                                  ((3, 2, 3, 4), (4, 2, 3), 1, (1, 0), 1, 1),
                                  ((2, 2, 5, 4), (3, 3, 3), 1, 0, (2, 1), 1)],
                         ids=["4x4", "2x3-kernel", "dilated"])
def test_conv2d_expanding_tiny_data_gradient_runs_gemm_first(case, channels_last,
                                                             monkeypatch):
    """Stride-1 layers with fewer input than output channels on tiny images take the data
    gradient GEMM first in NHWC (_backward_data_nhwc from an NCHW gy too), against the
    loop reference; the thresholds are lowered so that small shapes take it."""
    from dlcore.ops import conv_cpu
    monkeypatch.setattr(conv_cpu, "EXPANDING_TINY_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv_cpu, "EXPANDING_TINY_PIXELS", (1, 16))
    monkeypatch.setattr(conv_cpu, "FEW_CHANNELS", 0)
    seen = []
    real = conv_cpu._backward_data_nhwc
    monkeypatch.setattr(conv_cpu, "_backward_data_nhwc",
                        lambda *a: seen.append(a[0].shape) or real(*a))
    monkeypatch.setattr(conv_cpu, "_backward_data_gemm_first",
                        lambda *a: pytest.fail("the NCHW gemm-first path was taken"))
    _check_cpu_against_reference(case, seed=10, channels_last=channels_last)
    assert len(seen) == 1


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", [((2, 3, 4, 5), (9, 3, 3), 1, 1, 1, 1),
                                  ((2, 3, 5, 6), (9, 3, 3), 1, (1, 2), (1, 2), 1),
                                  ((1, 4, 3, 4), (9, 2, 3), 1, (0, 1), 1, 1),
                                  ((2, 16, 4, 4), (32, 3, 3), 1, 1, 1, 1),
                                  ((1, 16, 4, 3), (32, 3, 3), 1, 1, 1, 1)],
                         ids=["same", "dilated", "2x3-kernel", "4x4", "4x3"])
def test_conv2d_wide_layer_data_gradient_by_tap_gemms(case, channels_last, monkeypatch):
    """Stride-1 layers with more output channels than ROW_TAPS_MAX_CHANNELS on images too
    small for Winograd, and 4x4-sized images with at least 32 output channels, take the data
    gradient by one GEMM per kernel offset (NCHW gy too), against the loop reference; the
    channel limit is lowered so small shapes take the first rule."""
    from dlcore.ops import conv_cpu
    monkeypatch.setattr(conv_cpu, "ROW_TAPS_MAX_CHANNELS", 8)
    seen = []
    real = conv_cpu._tap_gemms_backward_data
    monkeypatch.setattr(conv_cpu, "_tap_gemms_backward_data",
                        lambda *a: seen.append(a[0].shape) or real(*a))
    _check_cpu_against_reference(case, seed=11, channels_last=channels_last)
    assert len(seen) == 1


# Kernel-row columns (stride 1, dilation 1, groups 1, FEW_CHANNELS < C <= ROW_TAPS_MAX_
# CHANNELS): forward, weight gradient and the stride-1 data gradient (a forward of gy).
ROW_TAP_CASES = [
    ((2, 6, 7, 5), (5, 3, 3), 1, 1, 1, 1),          # odd sizes, same size
    ((2, 5, 6, 8), (6, 2, 3), 1, (0, 1), 1, 1),     # 2x3 kernel, padding pair
    ((1, 8, 6, 6), (6, 5, 5), 1, 2, 1, 1),          # 5x5
    ((2, 5, 4, 6), (7, 3, 1), 1, (1, 0), 1, 1),     # one kernel column
    ((2, 6, 3, 3), (5, 3, 3), 1, 0, 1, 1),          # one output pixel
    ((2, 6, 9, 8), (5, 3, 3), 2, 1, 1, 1),          # stride 2 (two row phases)
    ((1, 5, 10, 7), (6, 4, 3), (3, 2), (1, 2), 1, 1),  # strides (3, 2), 4x3 kernel
    ((2, 5, 5, 6), (5, 2, 2), (2, 3), 0, 1, 1),     # stride above the kernel width
]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("taps", [0, 128])
@pytest.mark.parametrize("case", ROW_TAP_CASES, ids=[f"rt{i}" for i in range(8)])
def test_conv2d_kernel_row_columns_match_reference(case, taps, channels_last, monkeypatch):
    from dlcore.ops import conv_cpu
    monkeypatch.setattr(conv_cpu, "NCHW_ROW_TAPS_MAX_CHANNELS", 0)  # tested below
    monkeypatch.setattr(conv_cpu, "ROW_TAPS_MAX_CHANNELS", taps)
    monkeypatch.setattr(conv_cpu, "ROW_TAPS_MAX_STRIDE", 3)
    monkeypatch.setattr(conv_cpu, "ROW_TAPS_MIN_PIXELS", 1)
    monkeypatch.setattr(conv_cpu, "ROW_TAPS_STRIDED_MAX_CHANNELS", taps)
    monkeypatch.setattr(conv_cpu, "ROW_TAPS_COL2IM_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv_cpu, "ROW_TAPS_COL2IM_MAX_CHANNELS", taps)
    seen = []
    for name in ("_row_taps_forward", "_row_taps_backward_weight", "_row_taps_backward_data"):
        real = getattr(conv_cpu, name)
        monkeypatch.setattr(conv_cpu, name,
                            lambda *a, _real=real, _name=name: seen.append(_name) or _real(*a))
    _check_cpu_against_reference(case, seed=9, channels_last=channels_last)
    stride = _pair(case[2])
    if taps:  # forward, the data gradient (stride 1: a forward of gy), the weight gradient
        assert seen.count("_row_taps_forward") == (2 if stride == (1, 1) else 1), seen
        assert seen.count("_row_taps_backward_data") == (0 if stride == (1, 1) else 1), seen
        assert seen.count("_row_taps_backward_weight") == 1, seen
    else:
        assert not seen


# NCHW kernel-row columns (stride 1 or 2, dilation 1, groups 1, an NCHW input, FEW_CHANNELS
# < C <= 32 (strided: 16) into at most 32; the weight gradient up to 16 input channels): the
# cases above (the stride limit raised for (3, 2)), and chunks of one image as well as all
# images in one.
NCHW_ROW_TAP_CASES = ROW_TAP_CASES + [
    ((3, 16, 9, 11), (16, 3, 3), 1, 1, 1, 1),      # 16 -> 16, the ResNet stage
    ((2, 7, 6, 5), (9, 3, 5), 1, (2, 3), 1, 1),     # padding above the kernel's half
]


@pytest.mark.parametrize("one_image", [False, True])
@pytest.mark.parametrize("case", NCHW_ROW_TAP_CASES,
                         ids=[f"nrt{i}" for i in range(len(NCHW_ROW_TAP_CASES))])
def test_conv2d_nchw_kernel_row_columns_match_reference(case, one_image, monkeypatch):
    """Forward, the stride-1 data gradient (a forward of the NCHW gy, when its C and O fit)
    and the weight gradient through the NCHW columns, against the loop reference."""
    from dlcore.ops import conv_cpu
    monkeypatch.setattr(conv_cpu, "ROW_TAPS_MIN_PIXELS", 1)
    monkeypatch.setattr(conv_cpu, "NCHW_ROW_TAPS_MAX_STRIDE", 3)
    if one_image:
        monkeypatch.setattr(conv_cpu, "COL_BYTES", 1)
        monkeypatch.setattr(conv_cpu, "MIN_CHUNK_ROWS", 1)
        assert len(conv_cpu._nchw_row_taps_chunks(3, 16, (9, 11), (3, 3), (1, 1), 8)) == 3
    seen = []
    for name in ("_nchw_row_taps_forward", "_nchw_row_taps_backward_weight",
                 "_row_taps_forward", "_row_taps_backward_weight"):
        real = getattr(conv_cpu, name)
        monkeypatch.setattr(conv_cpu, name,
                            lambda *a, _real=real, _name=name: seen.append(_name) or _real(*a))
    _check_cpu_against_reference(case, seed=13)
    c, o, stride = case[0][1], case[1][0], _pair(case[2])
    # stride 1: the data gradient is the forward O -> C, NCHW columns again where O > 4
    # (FEW_CHANNELS); strided, it is col2im
    again = stride == (1, 1) and o > conv_cpu.FEW_CHANNELS
    assert seen.count("_nchw_row_taps_forward") == 1 + again, seen
    grad_nchw = c <= conv_cpu.NCHW_ROW_TAPS_GRAD_MAX_CHANNELS
    assert seen.count("_nchw_row_taps_backward_weight") == grad_nchw, seen
    assert seen.count("_row_taps_backward_weight") == (not grad_nchw), seen


def test_conv2d_nchw_kernel_row_columns_route():
    """Which layers take the NCHW columns: NCHW inputs of 5-32 channels (stride 2: 5-16)
    into at most 32, at least ROW_TAPS_MIN_PIXELS outputs; not channels-last inputs, larger
    strides, dilations, groups, wider layers or tiny images."""
    from dlcore.ops import conv_cpu
    use = conv_cpu._use_nchw_row_taps
    x = np.zeros((2, 16, 32, 32), np.float32)
    cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    k, one = (3, 3), (1, 1)
    assert use(x, 16, k, one, one, 1, (32, 32))
    assert use(x, 32, k, one, one, 1, (32, 32))
    assert not use(x, 64, k, one, one, 1, (32, 32))
    assert not use(cl, 16, k, one, one, 1, (32, 32))
    assert use(x, 32, k, (2, 2), one, 1, (16, 16))
    assert not use(np.zeros((2, 32, 16, 16), np.float32), 32, k, (2, 2), one, 1, (8, 8))
    assert not use(x, 16, k, (3, 3), one, 1, (11, 11))
    assert not use(x, 16, k, one, (2, 2), 1, (28, 28))
    assert not use(x, 16, k, one, one, 2, (32, 32))
    assert not use(x, 16, k, one, one, 1, (4, 4))
    assert not use(x[:, :4], 16, k, one, one, 1, (32, 32))  # an RGB-sized input: FEW_CHANNELS
    assert not use(np.zeros((2, 64, 8, 8), np.float32), 64, k, one, one, 1, (8, 8))


# Winograd F(2x2, 3x3) forward (3x3, stride 1, dilation 1, groups 1; conv_cpu.py), forced on
# small shapes by lowering its thresholds. Backward data at stride 1 runs through the same
# forward (flipped weight, padding 2 - p), backward weight stays on im2col.
# (N, C, H, W), O, padding
WINOGRAD_CASES = [
    ((2, 3, 7, 5), 4, 1),    # odd sizes, "same"
    ((2, 4, 8, 6), 5, 1),    # even sizes, "same"
    ((1, 3, 9, 8), 2, 0),    # batch 1, no padding: odd output rows, even columns
    ((2, 2, 6, 7), 3, 0),    # no padding, even rows, odd columns
    ((1, 2, 5, 5), 3, 2),    # padding 2 (backward data with padding 0)
    ((1, 2, 3, 3), 2, 0),    # one output pixel
]
WINOGRAD_IDS = [f"wg{i}" for i in range(len(WINOGRAD_CASES))]


def _force_winograd(monkeypatch):
    from dlcore.ops import conv_cpu
    monkeypatch.setattr(conv_cpu, "WINOGRAD", True)
    monkeypatch.setattr(conv_cpu, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv_cpu, "WINOGRAD_MIN_PIXELS", 1)
    calls = []
    real = conv_cpu._winograd_forward
    monkeypatch.setattr(conv_cpu, "_winograd_forward",
                        lambda *a: calls.append(a[0].shape) or real(*a))
    real_gw = conv_cpu._winograd_backward_weight
    monkeypatch.setattr(conv_cpu, "_winograd_backward_weight",
                        lambda *a: calls.append("gw") or real_gw(*a))
    return calls


@pytest.mark.parametrize("out_channels", [12, 5])
def test_conv2d_data_gradient_takes_winograd_before_tap_gemms(out_channels, monkeypatch):
    """A wide layer on a small image (more than ROW_TAPS_MAX_CHANNELS outputs: tap GEMMs
    before) whose flipped forward runs by Winograd takes that instead, and the 4x4 rule's
    layer alike; values against the reference."""
    from dlcore.ops import conv_cpu
    calls = _force_winograd(monkeypatch)
    monkeypatch.setattr(conv_cpu, "ROW_TAPS_MAX_CHANNELS", 4)
    monkeypatch.setattr(conv_cpu, "TAP_GEMMS_MIN_OUT_CHANNELS", 1)
    taps = []
    real = conv_cpu._tap_gemms_backward_data
    monkeypatch.setattr(conv_cpu, "_tap_gemms_backward_data",
                        lambda *a: taps.append(1) or real(*a))
    x, w, b, p = _winograd_arrays(((2, 5, 4, 4), out_channels, 1))
    assert conv_cpu._use_tap_gemms(5, out_channels, 1, (1, 1), (4, 4))
    tx, tw = on("cpu", x, requires_grad=True), on("cpu", w, requires_grad=True)
    y = conv2d(tx, tw, padding=p)
    gy = rand(*y.shape, seed=17)
    y.backward(on("cpu", gy))
    assert not taps and calls.count("gw") == 1 and len(calls) == 3  # forward, data, weight
    ry, rgx, rgw = ref_conv2d(x, w, gy, (1, 1), (p, p), (1, 1), 1)
    check(y, ry, rtol=1e-10, atol=1e-10)
    check(tx.grad, rgx, rtol=1e-10, atol=1e-10)
    check(tw.grad, rgw, rtol=1e-10, atol=1e-10)


def _winograd_arrays(case, dtype=np.float64):
    xs, o, padding = case
    x = rand(*xs, seed=11).astype(dtype)
    w = rand(o, xs[1], 3, 3, seed=12).astype(dtype)
    b = rand(o, seed=13).astype(dtype)
    return x, w, b, padding


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=WINOGRAD_IDS)
def test_conv2d_winograd_matches_reference(case, channels_last, monkeypatch):
    calls = _force_winograd(monkeypatch)
    x, w, b, p = _winograd_arrays(case)
    tx, tw = on("cpu", x, requires_grad=True), on("cpu", w, requires_grad=True)
    tb = on("cpu", b, requires_grad=True)
    if channels_last:
        tx = tx.detach().to(memory_format=dlcore.channels_last).requires_grad_()
    y = conv2d(tx, tw, tb, padding=p)
    assert calls, "the Winograd path did not run"
    gy = rand(*y.shape, seed=14)
    ry, rgx, rgw = ref_conv2d(x, w, gy, (1, 1), (p, p), (1, 1), 1)
    check(y, ry + b.reshape(1, -1, 1, 1), rtol=1e-10, atol=1e-10)
    y.backward(on("cpu", gy))
    assert len(calls) == 3, "backward data did not run through the Winograd forward"
    assert "gw" in calls, "the weight gradient did not run through Winograd"
    check(tx.grad, rgx, rtol=1e-10, atol=1e-10)
    check(tw.grad, rgw, rtol=1e-10, atol=1e-10)
    check(tb.grad, gy.sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=WINOGRAD_IDS)
def test_conv2d_winograd_float32(case, monkeypatch):
    """float32 rounding: measured <= 6.5e-7 of max |y| on ResNet shapes (conv_cpu.py), the
    bound here 1e-5 with margin for these uniform(-2, 2) values."""
    calls = _force_winograd(monkeypatch)
    x, w, b, p = _winograd_arrays(case, np.float32)
    tx, tw = on("cpu", x, requires_grad=True), on("cpu", w, requires_grad=True)
    y = conv2d(tx, tw, on("cpu", b), padding=p)
    assert calls
    gy = rand(*y.shape, seed=14).astype(np.float32)
    ry, rgx, rgw = ref_conv2d(x.astype(np.float64), w.astype(np.float64),
                              gy.astype(np.float64), (1, 1), (p, p), (1, 1), 1)
    ry = ry + b.astype(np.float64).reshape(1, -1, 1, 1)
    scale = np.abs(ry).max()
    assert y.dtype == dlcore.float32
    assert np.abs(y.numpy() - ry).max() <= 1e-5 * scale
    y.backward(on("cpu", gy))
    assert np.abs(tx.grad.numpy() - rgx).max() <= 1e-5 * np.abs(rgx).max()
    check(tw.grad, rgw, rtol=1e-4, atol=1e-4, dtype=np.float32)


def test_conv2d_winograd_gradcheck(monkeypatch):
    _force_winograd(monkeypatch)
    x, w, b, _ = _winograd_arrays(((1, 2, 5, 4), 3, 1))
    assert grad_ok(lambda a, k, c: conv2d(a, k, c, 1, 1), [x, w, b], "cpu")


def test_conv2d_winograd_rule(monkeypatch):
    """Used only where measured faster (>= 64 channels, >= 4x4), off with WINOGRAD."""
    from dlcore.ops import conv_cpu
    x = np.zeros((1, 64, 14, 14), np.float32)
    w = np.zeros((64, 64, 3, 3), np.float32)
    ws = w.shape
    args = ((1, 1), (1, 1), 1, (14, 14))
    monkeypatch.setattr(conv_cpu, "WINOGRAD", True)
    assert conv_cpu._use_winograd(x, ws, *args)
    assert not conv_cpu._use_winograd(x[:, :32], (32, 32, 3, 3), *args)
    assert conv_cpu._use_winograd(x, ws, (1, 1), (1, 1), 1, (7, 7))
    assert conv_cpu._use_winograd(x, ws, (1, 1), (1, 1), 1, (4, 4))
    assert not conv_cpu._use_winograd(x, ws, (1, 1), (1, 1), 1, (3, 3))
    assert not conv_cpu._use_winograd(x, ws, (2, 2), (1, 1), 1, (14, 14))
    assert not conv_cpu._use_winograd(x, (64, 64, 2, 3), *args)
    assert not conv_cpu._use_winograd(x.astype(np.float16), ws, *args)
    monkeypatch.setattr(conv_cpu, "WINOGRAD", False)
    assert not conv_cpu._use_winograd(x, ws, *args)


# Bands (conv_winograd_cpu.py; the forward's and the weight gradient's alike): tile rows of
# one image, whole images, the last band short; (N, C, H, W), O, padding, tile rows per band.
WINOGRAD_BAND_CASES = [
    (((2, 3, 11, 9), 4, 1), 1),     # 6 tile rows, one per band
    (((2, 3, 11, 9), 4, 1), 4),     # bands of 4 and 2 tile rows
    (((3, 2, 9, 8), 3, 0), 3),      # 4 tile rows (7 output rows): bands of 3 and 1
    (((3, 2, 7, 7), 5, 1), 8),      # two whole images per band, then one
    (((2, 4, 8, 6), 5, 1), 1000),   # every image in one band
]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case,rows", WINOGRAD_BAND_CASES,
                         ids=[f"band{i}" for i in range(len(WINOGRAD_BAND_CASES))])
def test_conv2d_winograd_bands(case, rows, channels_last, monkeypatch):
    """Every banding of the images gives the reference forward and gradients (float64)."""
    from dlcore.ops import conv_winograd_cpu
    calls = _force_winograd(monkeypatch)
    monkeypatch.setattr(conv_winograd_cpu, "_band_rows", lambda *a: rows)
    x, w, b, p = _winograd_arrays(case)
    tx, tw = on("cpu", x, requires_grad=True), on("cpu", w, requires_grad=True)
    if channels_last:
        tx = tx.detach().to(memory_format=dlcore.channels_last).requires_grad_()
    y = conv2d(tx, tw, on("cpu", b), padding=p)
    gy = rand(*y.shape, seed=15)
    y.backward(on("cpu", gy))
    assert len(calls) == 3 and "gw" in calls
    ry, rgx, rgw = ref_conv2d(x, w, gy, (1, 1), (p, p), (1, 1), 1)
    check(y, ry + b.reshape(1, -1, 1, 1), rtol=1e-10, atol=1e-10)
    check(tx.grad, rgx, rtol=1e-10, atol=1e-10)
    check(tw.grad, rgw, rtol=1e-10, atol=1e-10)


def test_conv2d_winograd_band_sizes():
    """The banding rule of conv_winograd_cpu: 64 channels at 56x56 get a few tile rows of
    one image per band (V near BAND_BYTES), 256 channels at 14x14 several whole images, and
    no band exceeds BAND_MAX_BYTES."""
    from dlcore.ops import conv_winograd_cpu as cw
    row64 = 28 * 16 * 64 * 4  # bytes of V per tile row at 64 channels 56x56
    rows64 = cw._band_rows((28, 28), 64, 64, 4)
    assert 1 <= rows64 < 28 and cw.BAND_BYTES - row64 < rows64 * row64 <= cw.BAND_BYTES
    row256 = 7 * 16 * 256 * 4
    rows256 = cw._band_rows((7, 7), 256, 256, 4)
    assert rows256 >= 2 * 7 and rows256 * row256 <= cw.BAND_MAX_BYTES
    assert cw._band_rows((7, 7), 512, 512, 4) * 7 * 16 * 512 * 4 <= cw.BAND_MAX_BYTES
    bands = list(cw._bands(0, 2, 6, 4))
    assert bands == [(0, 1, 0, 4), (0, 1, 4, 6), (1, 2, 0, 4), (1, 2, 4, 6)]
    assert list(cw._bands(1, 6, 3, 7)) == [(1, 3, 0, 3), (3, 5, 0, 3), (5, 6, 0, 3)]


@pytest.mark.parametrize("k", [3, 1])
def test_conv2d_with_no_input_channels_is_its_bias(device, k):
    """A (N, 0, H, W) input: the output is the bias on every pixel and the gradients are
    empty or zero; the cpu path raised NumPy's reshape error and the 1x1 route on the kernel
    devices dropped the bias."""
    x = on(device, np.ones((2, 0, 3, 3)), requires_grad=True)
    w = on(device, np.ones((3, 0, k, k)), requires_grad=True)
    b = on(device, np.array([1.0, -2.0, 0.5]), requires_grad=True)
    y = conv2d(x, w, b, padding=k // 2)
    assert tuple(y.shape) == (2, 3, 3, 3)
    np.testing.assert_array_equal(y.numpy(), np.broadcast_to(
        np.array([1.0, -2.0, 0.5]).reshape(1, 3, 1, 1), (2, 3, 3, 3)))
    y.backward(on(device, np.ones((2, 3, 3, 3))))
    assert tuple(x.grad.shape) == (2, 0, 3, 3) and tuple(w.grad.shape) == (3, 0, k, k)
    np.testing.assert_array_equal(b.grad.numpy(), [18.0, 18.0, 18.0])


# ---- the unrolled weight (conv_unrolled_cpu): one GEMM per direction on small images ------

UNROLLED_CASES = [c for c in CASES + PATH_CASES + ROW_TAP_CASES if c[5] == 1] + [
    ((3, 6, 1, 1), (5, 3, 3), 1, 1, 1, 1),          # 1x1 image: one pixel pair (pairwise fold)
    ((2, 4, 2, 1), (3, 3, 3), 1, 1, 1, 1),          # four pairs
    ((2, 3, 2, 2), (4, 3, 3), 2, 1, 1, 1),          # four pairs, the last tap among them
    ((2, 3, 4, 4), (5, 3, 3), 2, 2, 2, 1),          # strided, dilated, wide padding
]


@pytest.mark.parametrize("case", UNROLLED_CASES,
                         ids=[f"un{i}" for i in range(len(UNROLLED_CASES))])
def test_conv2d_unrolled_matches_reference(case, unrolled):
    """Forward, data and weight gradient by the unrolled weight against the loop reference,
    each direction taken once."""
    _check_cpu_against_reference(case, seed=14)
    assert sorted(unrolled) == ["backward_data", "backward_weight", "forward"]


def test_conv2d_unrolled_transpose_and_gradcheck(unrolled):
    """conv_transpose2d with output_padding (x has rows no window reads: the data gradient
    leaves zeros there) and float64 gradcheck, both through the unrolled GEMMs."""
    x = rand(2, 3, 3, 3, seed=15)
    w = rand(3, 2, 3, 3, seed=16)
    tx, tw = on("cpu", x, requires_grad=True), on("cpu", w, requires_grad=True)
    y = conv_transpose2d(tx, tw, stride=2, padding=1, output_padding=1)
    assert tuple(y.shape) == (2, 2, 6, 6)
    # conv_transpose2d is the data gradient of conv2d: the reference's gx for gy = x
    _, rgx, _ = ref_conv2d(np.zeros((2, 2, 6, 6)), w, x, (2, 2), (1, 1), (1, 1), 1)
    check(y, rgx)
    assert "backward_data" in unrolled
    assert grad_ok(lambda a, b: conv2d(a, b, padding=1), [rand(2, 3, 3, 3, seed=17),
                                                          rand(4, 3, 3, 3, seed=18)], "cpu")


def test_conv2d_unrolled_tap_map_against_loops():
    """tap_map against the definition, looped: output pixel (a, b) reads input pixel (r, s)
    through tap (i, j) iff r = a*sH - pH + i*dH and s = b*sW - pW + j*dW."""
    from dlcore.ops import conv_unrolled_cpu as cu
    for (h, w), (kh, kw), s, p, d in [((4, 4), (3, 3), (1, 1), (1, 1), (1, 1)),
                                      ((5, 7), (2, 3), (2, 1), (0, 2), (2, 1)),
                                      ((3, 2), (3, 1), (3, 1), (2, 0), (1, 1))]:
        oh = (h + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
        ow = (w + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
        want = np.full((oh, ow, h, w), kh * kw)
        for a in range(oh):
            for b in range(ow):
                for i in range(kh):
                    for j in range(kw):
                        r, c = a * s[0] - p[0] + i * d[0], b * s[1] - p[1] + j * d[1]
                        if 0 <= r < h and 0 <= c < w:
                            want[a, b, r, c] = i * kw + j
        got = cu.tap_map((h, w), (oh, ow), (kh, kw), s, p, d)
        np.testing.assert_array_equal(got, want.reshape(-1))


def test_conv2d_unrolled_low_precision(unrolled):
    """float16 and float32 through the unrolled GEMMs (float16 widened to float32, as on
    every cpu path), against the float64 reference."""
    case = ((4, 8, 4, 4), (16, 3, 3), 1, 1, 1, 1)
    x, w, stride, padding, dilation, groups = _arrays(case, seed=19)
    gy = rand(4, 16, 4, 4, seed=20)
    ry, rgx, rgw = ref_conv2d(x, w, gy, stride, padding, dilation, groups)
    for dtype, tol in ((np.float32, 1e-5), (np.float16, 1e-2)):
        tx = on("cpu", x.astype(dtype), requires_grad=True)
        tw = on("cpu", w.astype(dtype), requires_grad=True)
        y = conv2d(tx, tw, padding=1)
        y.backward(on("cpu", gy.astype(dtype)))
        assert y.dtype == tx.dtype and tx.grad.dtype == tx.dtype
        scale = max(np.abs(ry).max(), 1.0)
        check(y, ry, rtol=tol, atol=tol * scale, dtype=dtype)
        check(tx.grad, rgx, rtol=tol, atol=tol * np.abs(rgx).max(), dtype=dtype)
        check(tw.grad, rgw, rtol=tol, atol=tol * np.abs(rgw).max(), dtype=dtype)


def test_conv2d_unrolled_route(monkeypatch):
    """Which layers take the unrolled GEMM (the measured rules of conv_cpu.UNROLLED_*): 2x2
    and 1x1 images at any width; 4x4 with a small T per image; the data gradient also at
    3x3 images of any width and, for O >= C, 4x4 with T up to 512 KiB; not groups,
    channels-last arrays, larger images, a T beyond UNROLLED_MAX_BYTES, and the weight
    gradient not below UNROLLED_GRAD_MIN_BATCH images."""
    from dlcore.ops import conv_cpu
    monkeypatch.setattr(conv_cpu, "UNROLLED", True)
    from dlcore.tensor import is_channels_last as is_cl
    use = conv_cpu._use_unrolled
    k3, nchw = (3, 3), np.zeros((1, 2, 2, 2), np.float32)
    cl = np.zeros((1, 2, 2, 2), np.float32).transpose(0, 3, 1, 2)
    assert is_cl(cl)
    for d in ("forward", "data", "weight"):
        assert use(d, (64, 128, 2, 2), (128, 128, *k3), (2, 2), 1, nchw)
        assert use(d, (64, 256, 1, 1), (256, 256, *k3), (1, 1), 1, nchw)
        assert use(d, (64, 16, 4, 4), (16, 16, *k3), (4, 4), 1, nchw)  # 4 KiB per image
        assert not use(d, (64, 16, 4, 4), (16, 16, *k3), (4, 4), 2, nchw)
        assert not use(d, (64, 16, 4, 4), (16, 16, *k3), (4, 4), 1, cl)
        assert not use(d, (64, 16, 8, 8), (16, 16, *k3), (8, 8), 1, nchw)
        assert not use(d, (64, 1024, 2, 2), (1024, 1024, *k3), (2, 2), 1, nchw)  # 64 MiB
    # 16->32 4x4, N=64: 8 KiB per image: only the data gradient (O >= C, 512 KiB)
    assert not use("forward", (64, 16, 4, 4), (32, 16, *k3), (4, 4), 1, nchw)
    assert not use("weight", (64, 16, 4, 4), (32, 16, *k3), (4, 4), 1, nchw)
    assert use("data", (64, 16, 4, 4), (32, 16, *k3), (4, 4), 1, nchw)
    assert not use("data", (64, 32, 4, 4), (16, 32, *k3), (4, 4), 1, nchw)  # O < C
    assert use("data", (64, 64, 3, 3), (64, 64, *k3), (3, 3), 1, nchw)
    assert not use("forward", (64, 64, 3, 3), (64, 64, *k3), (3, 3), 1, nchw)
    assert not use("weight", (16, 128, 2, 2), (128, 128, *k3), (2, 2), 1, nchw)
    assert use("forward", (16, 128, 2, 2), (128, 128, *k3), (2, 2), 1, nchw)


def test_conv2d_take_columns_match_window_copy(monkeypatch):
    """The gathered columns (TAKE_MIN_CHANNELS and up) equal the padded window copy's, bit
    for bit, over strides, paddings (wider than the kernel's reach too), dilations and
    layouts; and a whole convolution through them matches the reference."""
    from dlcore.ops import conv_cpu
    rng = np.random.default_rng(21)
    for xs, k, s, p, d in [((2, 8, 5, 6), (3, 3), (1, 1), (1, 1), (1, 1)),
                           ((1, 9, 7, 4), (2, 3), (2, 1), (0, 2), (2, 1)),
                           ((2, 8, 3, 3), (3, 3), (1, 1), (3, 3), (1, 1))]:
        x = rng.standard_normal(xs).astype(np.float32)
        oh = (xs[2] + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
        ow = (xs[3] + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
        for arr in (x, np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)):
            got = conv_cpu._im2col(arr, (oh, ow), k, s, p, d, 1)
            monkeypatch.setattr(conv_cpu, "TAKE_MIN_CHANNELS", 10**9)
            want = conv_cpu._im2col(arr, (oh, ow), k, s, p, d, 1)
            monkeypatch.setattr(conv_cpu, "TAKE_MIN_CHANNELS", 8)
            np.testing.assert_array_equal(got, want)
    monkeypatch.setattr(conv_cpu, "TAKE_MIN_CHANNELS", 1)
    for case in CASES:
        if case[5] == 1:
            _check_cpu_against_reference(case, seed=22)


@pytest.mark.parametrize("small_path", [True, False])
def test_conv2d_weight_gradient_by_image_blocks(small_path, monkeypatch):
    """The generic weight gradient in blocks of whole images (small-path kernel sets only;
    small_path forced both ways, since CI's kernels decide otherwise): against the
    reference, and the block rule (a divisor of the chunk, at least two blocks of two, none
    beyond 32 output channels or without the small path)."""
    from dlcore.ops import blas_cpu, conv_cpu
    monkeypatch.setattr(blas_cpu, "small_path", lambda: small_path)
    blocks = []
    real = conv_cpu._weight_gradient_images
    monkeypatch.setattr(conv_cpu, "_weight_gradient_images",
                        lambda *a: blocks.append(real(*a)) or blocks[-1])
    for case in [((6, 6, 4, 4), (5, 3, 3), 1, 1, 1, 1), ((4, 5, 5, 3), (3, 2, 3), 2, 1, 1, 1)]:
        _check_cpu_against_reference(case, seed=23)
    assert blocks and all(b == 0 for b in blocks) != small_path
    f32 = np.dtype(np.float32)
    if small_path:
        assert real(64, 32, 16, 144, f32) == 8 and real(7, 4, 4, 4, f32) == 0
        assert real(6, 4, 4, 4, f32) == 3 and real(64, 33, 16, 144, f32) == 0
        assert real(2, 4, 4, 4, f32) == 0 and real(64, 32, 16, 144, np.dtype(np.float16)) == 0
    else:
        assert real(64, 32, 16, 144, f32) == 0


def test_conv2d_weight_gradient_reuses_the_forward_columns(monkeypatch):
    """A one-chunk cpu forward keeps its column matrix on the node and the weight gradient
    takes it instead of building it again (im2col once per step), with the reference's
    values; twice with retain_graph; not under no_grad, not beyond SAVED_COLUMNS_MAX_BYTES,
    and dropped when the graph is freed."""
    from dlcore.ops import conv_cpu
    builds = []
    real = conv_cpu._im2col
    # columns of x (6 channels; the data gradient's flipped forward builds gy's, 7)
    monkeypatch.setattr(conv_cpu, "_im2col",
                        lambda *a: builds.append(a[0].shape[1]) or real(*a))
    case = ((3, 6, 5, 4), (7, 3, 3), 1, 1, 1, 1)  # the generic columns path
    x, w, stride, padding, dilation, groups = _arrays(case, seed=24)
    gy = rand(3, 7, 5, 4, seed=25)
    _, rgx, rgw = ref_conv2d(x, w, gy, stride, padding, dilation, groups)
    tx, tw = on("cpu", x, requires_grad=True), on("cpu", w, requires_grad=True)
    y = conv2d(tx, tw, padding=1)
    assert builds == [6] and y.grad_fn.columns is not None
    y.backward(on("cpu", gy), retain_graph=True)
    assert builds.count(6) == 1
    check(tw.grad, rgw)
    check(tx.grad, rgx)
    y.backward(on("cpu", gy))
    check(tw.grad, 2 * rgw)
    assert y.grad_fn.columns is None  # freed with the graph
    with dlcore.no_grad():
        conv2d(tx, tw, padding=1)
    builds.clear()
    monkeypatch.setattr(conv_cpu, "SAVED_COLUMNS_MAX_BYTES", 8)
    y = conv2d(tx, tw, padding=1)
    assert y.grad_fn.columns is None
    y.backward(on("cpu", gy))
    assert builds.count(6) == 2  # forward and weight gradient each built theirs
