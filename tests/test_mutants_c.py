"""Tests written for mutmut survivors of the 2026-12-02 sample (the last batch): the conv
kernels' size guards and their errors, the optimizer's step result and its bucket alignment
flag. Each pins down behaviour no earlier test checked."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
from dlcore.device import Device
from dlcore.ops import conv_gemm_cuda
from dlcore.ops.optim import ALIGNED16


def test_gemm_backward_data_of_a_single_pixel_is_the_centre_tap() -> None:
    """x (1, 1, 1, 1), a 3x3 kernel, padding 1: only the centre tap meets the pixel, so
    gx = w[1, 1] * gy (a one-element input is not an empty one). Called on the SIMT GEMM
    kernels directly: through conv2d a one-channel input takes the depthwise route."""
    dev = Device("emu")
    w = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    gy = np.array([[[[3.0]]]], np.float32)
    gx = conv_gemm_cuda.conv2d_backward_data(dev, gy, w, (1, 1, 1, 1), (1, 1), (1, 1),
                                             (1, 1), 1)
    np.testing.assert_array_equal(gx, [[[[12.0]]]])


def test_conv2d_backward_data_grid_limit_counts_64_channel_tiles(monkeypatch) -> None:
    """65 input channels make two 64-wide column tiles: over a grid limit of one block the
    backward names itself and the limit instead of launching."""
    monkeypatch.setattr(conv_gemm_cuda, "MAX_GRID_YZ", 1)
    dev = Device("emu")
    gy = np.ones((1, 2, 3, 3), np.float32)
    w = np.ones((2, 65, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"^conv2d backward: groups x stride phases \(1\) or "
                                         r"column tiles \(2\) exceed the grid limit"):
        conv_gemm_cuda.conv2d_backward_data(dev, gy, w, (1, 65, 3, 3), (1, 1), (1, 1),
                                            (1, 1), 1)


def test_conv2d_backward_weight_names_itself_past_int32_offsets(monkeypatch) -> None:
    monkeypatch.setattr(conv_gemm_cuda, "INT32_MAX", 10)
    dev = Device("emu")
    x = np.ones((1, 2, 3, 3), np.float32)
    gy = np.ones((1, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"^conv2d backward: an \(image, group\) slice of x "
                                         r"has 18 elements"):
        conv_gemm_cuda.conv2d_backward_weight(dev, x, gy, (2, 2, 3, 3), (1, 1), (1, 1),
                                              (1, 1), 1)


def test_optimizer_step_without_closure_returns_none() -> None:
    p = dlcore.nn.Parameter(dlcore.ones(3))
    opt = dlcore.optim.SGD([p], lr=0.1)
    p.grad = dlcore.ones(3)
    assert opt.step() is None
    assert opt.step(lambda: 1.5) == 1.5


def test_bucket_alignment_flag_counts_bytes() -> None:
    """A float32 slice starting at element 4 starts 16 bytes in: the aligned kernel variant
    applies (from an aligned base); element 2 (8 bytes) does not."""
    params = [dlcore.nn.Parameter(dlcore.ones(8, device="emu")) for _ in range(2)]
    opt = dlcore.optim.Adam(params, lr=0.1)
    for p in params:
        p.grad = dlcore.ones(8, device="emu")
    opt.step()
    (bucket,) = opt._group_buckets(0)
    if not bucket.aligned(0):
        pytest.skip("the allocator gave an unaligned base (the flag is then always 0)")
    assert bucket.aligned(4) == ALIGNED16 and bucket.aligned(64) == ALIGNED16
    assert bucket.aligned(2) == 0


def test_conv2d_forward_grid_limit_counts_64_filter_tiles(monkeypatch) -> None:
    """65 filters make two 64-wide tiles: over a grid limit of one block the forward names
    itself and the limit instead of launching."""
    monkeypatch.setattr(conv_gemm_cuda, "MAX_GRID_YZ", 1)
    dev = Device("emu")
    x = np.ones((1, 2, 3, 3), np.float32)
    w = np.ones((65, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"^conv2d: groups x stride phases \(1\) or column "
                                         r"tiles \(2\) exceed the grid limit"):
        conv_gemm_cuda.conv2d_forward(dev, x, w, (3, 3), (1, 1), (1, 1), (1, 1), 1)


def test_create_graph_gradients_accumulate_by_adding() -> None:
    """Two create_graph backwards into the same leaf add their gradients (the sum stays
    differentiable): d(x^2)/dx twice at x = 3 is 12, and its own derivative is 4."""
    x = dlcore.tensor(3.0, dtype=dlcore.float64, requires_grad=True)
    (x * x).backward(create_graph=True)
    (x * x).backward(create_graph=True)
    assert x.grad.item() == 12.0 and x.grad.requires_grad
    (g,) = dlcore.autograd.grad(x.grad, x)
    assert g.item() == 4.0


def _write_checkpoint(path, metadata: dict) -> None:
    import safetensors.numpy
    safetensors.numpy.save_file({}, str(path), metadata=metadata)


def test_foreign_checkpoint_error_names_the_format_it_found(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    _write_checkpoint(path, {"dlcore.format": "7", "dlcore.structure": "null"})
    with pytest.raises(dlcore.io.CheckpointError,
                       match=r"not a dlcore checkpoint \(format '7', expected '1'\)"):
        dlcore.load(path)


def test_damaged_dict_items_are_named(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    _write_checkpoint(path, {"dlcore.format": "1", "dlcore.crc32": "{}",
                             "dlcore.structure": '{"dict": [["a"]]}'})
    with pytest.raises(dlcore.io.CheckpointError,
                       match=r"damaged structure at obj: dict items must be \[key, value\] pairs$"):
        dlcore.load(path)


def test_adam_family_accepts_a_zero_learning_rate() -> None:
    """PyTorch accepts lr=0 (a frozen run, or a warm-up's first value); only negative is
    refused."""
    p = dlcore.nn.Parameter(dlcore.ones(2))
    for opt in (dlcore.optim.Adam, dlcore.optim.AdamW, dlcore.optim.NAdam, dlcore.optim.RAdam):
        opt([p], lr=0.0)
        with pytest.raises(ValueError, match="Invalid learning rate: -0.1"):
            opt([p], lr=-0.1)


def test_optimizer_given_a_tensor_says_what_it_expected() -> None:
    with pytest.raises(TypeError, match=r"^optimizer: params should be an iterable of "
                                        r"Tensors or dicts, but got a Tensor of shape \(2,\)"):
        dlcore.optim.SGD(dlcore.nn.Parameter(dlcore.ones(2)), lr=0.1)


def test_no_bias_is_a_one_element_zero_array_per_device_and_dtype() -> None:
    """The stand-in bias pointer is a real one-element zero array, made once per device and
    dtype (a None would be a null pointer that only has_bias = 0 keeps from being read)."""
    dev = Device("emu")
    for dtype in (np.float32, np.float16):
        dummy = conv_gemm_cuda.no_bias(dev, np.dtype(dtype))
        assert isinstance(dummy, np.ndarray) and dummy.shape == (1,)
        assert dummy.dtype == dtype and dummy[0] == 0
        assert conv_gemm_cuda.no_bias(dev, np.dtype(dtype)) is dummy
