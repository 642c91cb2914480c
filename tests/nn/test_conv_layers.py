"""Conv and pooling layers: PyTorch's parameter names, shapes, default initialisation
ranges, extra_repr, and that forward equals the functional form."""

from __future__ import annotations

import math

import numpy as np
import pytest

import dlcore
from dlcore.nn.conv import Conv1d, Conv2d, ConvTranspose2d
from dlcore.nn.pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d
from dlcore.ops.conv import conv1d, conv2d, conv_transpose2d
from dlcore.ops.pool import max_pool2d


@pytest.mark.parametrize("layer,w_shape,fan_in", [
    (lambda: Conv2d(4, 8, 3, groups=2), (8, 2, 3, 3), 2 * 9),
    (lambda: Conv2d(3, 6, (2, 5), stride=2, padding=1), (6, 3, 2, 5), 30),
    (lambda: Conv1d(4, 6, 5, groups=2), (6, 2, 5), 10),
    # ConvTranspose: weight (in, out/groups, k...), fan_in from weight.shape[1] as PyTorch
    (lambda: ConvTranspose2d(4, 6, 3, groups=2), (4, 3, 3, 3), 27),
])
def test_conv_parameters_and_init(layer, w_shape, fan_in):
    dlcore.manual_seed(0)
    m = layer()
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    assert tuple(m.weight.shape) == w_shape
    bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) gives the same bound
    for p in (m.weight, m.bias):
        v = p.numpy()
        assert np.abs(v).max() <= bound + 1e-7
        assert np.abs(v).max() > 0.5 * bound


def test_conv_forward_matches_functional():
    x = dlcore.randn(2, 4, 7, 6)
    m = Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    np.testing.assert_allclose(m(x).numpy(), conv2d(x, m.weight, m.bias, 2, 1, 1, 2).numpy())
    m1 = Conv1d(4, 6, 3, padding="same", bias=False)
    x1 = dlcore.randn(2, 4, 9)
    assert m1.bias is None
    np.testing.assert_allclose(m1(x1).numpy(), conv1d(x1, m1.weight, None, 1, "same").numpy())
    mt = ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)
    assert tuple(mt(x).shape) == (2, 2, 14, 12)
    np.testing.assert_allclose(
        mt(x).numpy(), conv_transpose2d(x, mt.weight, mt.bias, 2, 1, 1).numpy())
    out = m(x).sum()
    out.backward()
    assert m.weight.grad is not None and m.bias.grad is not None


def test_reprs():
    assert repr(Conv2d(3, 8, 3, padding=1)) == \
        "Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"
    assert repr(Conv1d(2, 4, 3, bias=False, groups=2)) == \
        "Conv1d(2, 4, kernel_size=(3,), stride=(1,), groups=2, bias=False)"
    assert repr(ConvTranspose2d(4, 2, 2, stride=2, output_padding=1)) == \
        "ConvTranspose2d(4, 2, kernel_size=(2, 2), stride=(2, 2), output_padding=(1, 1))"
    assert repr(MaxPool2d(2)) == \
        "MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)"
    assert repr(AvgPool2d(3, 2)) == "AvgPool2d(kernel_size=3, stride=2, padding=0)"
    assert repr(AdaptiveAvgPool2d((1, 1))) == "AdaptiveAvgPool2d(output_size=(1, 1))"


def test_pooling_layers():
    x = dlcore.randn(2, 3, 7, 7)
    np.testing.assert_array_equal(MaxPool2d(3, 2, 1, ceil_mode=True)(x).numpy(),
                                  max_pool2d(x, 3, 2, 1, ceil_mode=True).numpy())
    y, idx = MaxPool2d(2, return_indices=True)(x)
    assert tuple(idx.shape) == (2, 3, 3, 3) and idx.dtype == np.int64
    assert tuple(AvgPool2d(2, 1, count_include_pad=False)(x).shape) == (2, 3, 6, 6)
    assert tuple(AdaptiveAvgPool2d((2, 3))(x).shape) == (2, 3, 2, 3)
    y, idx = AdaptiveMaxPool2d(2, return_indices=True)(x)
    assert tuple(y.shape) == (2, 3, 2, 2) and tuple(idx.shape) == (2, 3, 2, 2)


@pytest.mark.parametrize("bad", [
    lambda: Conv2d(3, 4, 3, groups=2),
    lambda: Conv2d(4, 4, 3, padding_mode="reflect"),
    lambda: Conv2d(4, 4, 3, padding="full"),
])
def test_conv_layer_errors(bad):
    with pytest.raises(ValueError):
        bad()


@pytest.mark.parametrize("layer", [Conv2d, Conv1d])
def test_same_padding_with_stride_refused_at_construction(layer):
    with pytest.raises(ValueError, match="padding='same' is not supported for strided"):
        layer(1, 2, 3, stride=2, padding="same")
