"""Behaviour pinned down for survivors of mutation sample 4 (mutmut over the conv kernels' host
code, index): each test checks something no test of the suite checked before, against an
independent reference (NumPy loops or values worked out by hand)."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
import dlcore.nn.functional as F
from dlcore.device import Device
from dlcore.ops import conv_cuda, conv_depthwise_cuda, conv_gemm_cuda, conv_tc_cuda

EMU = Device("emu")

# ---- conv routing (conv_cuda) --------------------------------------------------------------


def test_1x1_conv_with_stride_and_padding_keeping_the_size_is_not_a_plain_gemm(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1x1 kernel with stride 2 and padding 1 on a 3x3 input keeps the 3x3 size
    ((3 + 2 - 1) // 2 + 1 = 3) but is no pointwise GEMM: y[i, j] = w * xpad[2i, 2j], xpad
    the input zero-padded by 1, so the first row and column read padding (0) and
    the rest read x[2i - 1, 2j - 1]; worked out by a NumPy loop here."""
    monkeypatch.setattr(conv_cuda, "_routes", {})
    xd = np.arange(1.0, 19.0).reshape(1, 2, 3, 3)
    wd = np.array([2.0, -1.0]).reshape(1, 2, 1, 1)
    y = F.conv2d(dlcore.tensor(xd, device=EMU), dlcore.tensor(wd, device=EMU), stride=2,
                 padding=1).numpy()
    xpad = np.pad(xd, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros((1, 1, 3, 3))
    for i in range(3):
        for j in range(3):
            want[0, 0, i, j] = (wd[0, :, 0, 0] * xpad[0, :, 2 * i, 2 * j]).sum()
    np.testing.assert_array_equal(y, want)


def test_route_checks_the_padded_output_size_against_the_tensor_core_limits() -> None:
    """serves() is given the real (padded) output size: a 1x1 input padded by 2^28 rows gives
    2^29 + 1 output rows, past the tensor-core kernels' 2^29 limit, so float16 (which only
    they take) has no kernel: a TypeError, not a route to them (the unpadded size, 1 x 1,
    would pass)."""
    with pytest.raises(TypeError, match="needs the tensor-core kernels"):
        conv_cuda._choose(EMU, np.float16, (1, 1, 1, 1), (1, 1, 1, 1), (2**29 + 1, 1),
                          (1, 1), (2**28, 0), 1, "conv2d")


# ---- depthwise kernels' host code ----------------------------------------------------------


def test_pow2_at_least_rounds_up_to_a_power_of_two() -> None:
    """The smallest power of two >= n (1 for n <= 1): 1, 1, 2, 4, 8, 8, 16."""
    got = [conv_depthwise_cuda._pow2_at_least(n) for n in (0, 1, 2, 3, 5, 8, 9)]
    assert got == [1, 1, 2, 4, 8, 8, 16]


def test_landing_gives_the_inverse_of_dilation_modulo_stride() -> None:
    """(gcd, inverse of d/g mod s/g, 0 when s/g is 1): stride 5 dilation 2 -> (1, 3) as
    2 * 3 = 6 = 1 mod 5; stride 7 dilation 3 -> (1, 5) as 15 = 1 mod 7; stride 6 dilation 4
    -> g = 2 and 2^-1 mod 3 = 2; stride 3 dilation 3 -> (3, 0)."""
    assert conv_depthwise_cuda._landing(5, 2) == (1, 3)
    assert conv_depthwise_cuda._landing(7, 3) == (1, 5)
    assert conv_depthwise_cuda._landing(6, 4) == (2, 2)
    assert conv_depthwise_cuda._landing(3, 3) == (3, 0)


def test_depthwise_strided_dilated_input_gradient_matches_a_numpy_loop() -> None:
    """Depthwise conv2d on emu, stride 5 and dilation 2 (the strided gather, whose landing
    solve needs 2^-1 mod 5 = 3): the input gradient is the scatter of gy * w onto
    x[5 i - 1 + 2 r, 5 j - 1 + 2 s], summed by a NumPy loop."""
    rng = np.random.default_rng(4)
    xd = rng.integers(-3, 4, (1, 2, 12, 12)).astype(np.float64)
    wd = rng.integers(-3, 4, (2, 1, 3, 3)).astype(np.float64)
    x = dlcore.tensor(xd, device=EMU, requires_grad=True)
    y = F.conv2d(x, dlcore.tensor(wd, device=EMU), stride=5, padding=1, dilation=2, groups=2)
    ho, wo = y.shape[2:]
    gyd = rng.integers(-3, 4, y.shape).astype(np.float64)
    y.backward(dlcore.tensor(gyd, device=EMU))
    want = np.zeros((1, 2, 14, 14))  # padded by 1
    for c in range(2):
        for i in range(ho):
            for j in range(wo):
                for r in range(3):
                    for s in range(3):
                        want[0, c, 5 * i + 2 * r, 5 * j + 2 * s] += gyd[0, c, i, j] * wd[c, 0, r, s]
    np.testing.assert_array_equal(x.grad.numpy(), want[:, :, 1:-1, 1:-1])


def test_depthwise_strided_backward_names_a_plane_past_the_grid_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The strided backward gather tiles a 40 x 40 gx plane 32 wide and 8 high: (5, 2)
    tiles on y/z; with the grid limit lowered to 1 that is a ValueError naming the plane,
    the tiles and the limit."""
    monkeypatch.setattr(conv_depthwise_cuda, "MAX_GRID_YZ", 1)
    gy = np.ones((1, 1, 20, 20))
    w = np.ones((1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"^depthwise conv2d backward: a \(40, 40\) plane "
                                         r"needs \(5, 2\) tiles, past the grid limit "
                                         r"\(1 on y/z\)$"):
        conv_depthwise_cuda.conv2d_backward_data(EMU, gy, w, (1, 1, 40, 40), (2, 2), (0, 0),
                                                 (1, 1), 1)


def test_depthwise_conv_too_wide_for_a_tile_keeps_its_bias() -> None:
    """A depthwise kernel spanning 301 input columns (width 2, dilation 300) fits no tile
    (a thread per staged column, 256 at most) and falls back to the GEMM kernels: the bias is
    still added, y[j] = 2 x[j] - x[j + 300] + 0.5."""
    xd = np.arange(302.0).reshape(1, 1, 1, 302)
    wd = np.array([2.0, -1.0]).reshape(1, 1, 1, 2)
    y = F.conv2d(dlcore.tensor(xd, device=EMU), dlcore.tensor(wd, device=EMU),
                 dlcore.tensor(np.array([0.5]), device=EMU), dilation=(1, 300), groups=1)
    want = 2 * xd[..., :2] - xd[..., 300:] + 0.5
    np.testing.assert_array_equal(y.numpy(), want)


# ---- gemm / tensor-core kernels' host code -------------------------------------------------


def test_gemm_grid_check_allows_exactly_the_limit() -> None:
    """65535 column tiles (the y/z grid limit itself) launch; 65536 are a ValueError."""
    limit = conv_gemm_cuda.MAX_GRID_YZ
    conv_gemm_cuda._check_grid("conv2d", limit, limit)
    with pytest.raises(ValueError, match="column tiles"):
        conv_gemm_cuda._check_grid("conv2d", 1, limit + 1)


def test_tc_table_rows_round_up_to_whole_tiles() -> None:
    """K rounded up to a multiple of 128, at least one tile: 0 and 1 -> 128, 128 -> 128,
    129 -> 256."""
    assert [conv_tc_cuda._table_rows(k) for k in (0, 1, 128, 129)] == [128, 128, 128, 256]


# ---- index -----------------------------------------------------------------------------------


def test_gather_with_an_index_of_other_rank_names_both_shapes() -> None:
    """gather with a 1-D index into a 2-D input is a RuntimeError naming both ranks and
    shapes."""
    x = dlcore.tensor(np.zeros((2, 3)))
    index = dlcore.tensor(np.array([0, 1]))
    with pytest.raises(RuntimeError, match=r"^gather: index has 1 dims but input has 2 "
                                           r"\(shapes \(2,\) and \(2, 3\)\)$"):
        dlcore.gather(x, 0, index)
