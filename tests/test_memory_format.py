"""memory_format=dlcore.channels_last: PyTorch's strides and contiguity rules, the CPU
convolution's channels-last paths against the direct-loop reference of tests/ops/test_conv.py
(outputs and every gradient), float64 gradcheck through them, and the layers that keep the
layout between convolutions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import dlcore
import dlcore.nn as nn
import dlcore.nn.functional as F
from dlcore.tensor import is_channels_last
from dlcore.testing import gradcheck

sys.path.insert(0, str(Path(__file__).parent / "ops"))
from test_conv import ref_conv2d  # noqa: E402

CL = dlcore.channels_last


def nhwc_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """PyTorch's channels-last strides of an (N, C, H, W) shape, in elements."""
    n, c, h, w = shape
    return (h * w * c, 1, w * c, c)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 8, 8), (3, 16, 1, 1), (2, 5, 3, 1)])
def test_channels_last_strides_and_contiguity(shape: tuple[int, ...]) -> None:
    a = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x = dlcore.tensor(a)
    y = x.contiguous(memory_format=CL)
    assert y.stride() == nhwc_strides(shape)
    assert y.is_contiguous(memory_format=CL)
    # PyTorch's rule ignores size-1 dims: with C == 1 or H == W == 1 both layouts coincide
    both = shape[1] == 1 or shape[2] * shape[3] == 1
    assert y.is_contiguous() == both
    assert x.is_contiguous(memory_format=CL) == both
    np.testing.assert_array_equal(y.numpy(), a)
    assert y.contiguous(memory_format=CL) is y
    z = y.contiguous()
    assert z.is_contiguous()
    if not both:  # else y already counts as contiguous and comes back as itself
        assert z.stride() == tuple(s // 4 for s in a.strides)
    np.testing.assert_array_equal(z.numpy(), a)


def test_contiguous_channels_last_passes_the_gradient() -> None:
    x = dlcore.randn(2, 3, 4, 4, requires_grad=True)
    g = dlcore.randn(2, 3, 4, 4)
    x.contiguous(memory_format=CL).backward(g)
    np.testing.assert_array_equal(x.grad.numpy(), g.numpy())


def test_bad_memory_format_arguments_raise() -> None:
    with pytest.raises(RuntimeError, match=r"contiguous: .*4-D.*\(2, 3, 4\)"):
        dlcore.zeros(2, 3, 4).contiguous(memory_format=CL)
    with pytest.raises(ValueError, match="contiguous: memory_format"):
        dlcore.zeros(2, 3, 4, 4).contiguous(memory_format="channels_last")
    with pytest.raises(ValueError, match="is_contiguous: memory_format"):
        dlcore.zeros(2, 3, 4, 4).is_contiguous(memory_format=dlcore.preserve_format)


def test_tensor_and_module_to_memory_format() -> None:
    x = dlcore.randn(2, 3, 4, 4)
    assert x.to(memory_format=CL).stride() == nhwc_strides((2, 3, 4, 4))
    assert x.to(memory_format=dlcore.preserve_format) is x
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4, 2))
    w = m[0].weight
    m.to(memory_format=CL)
    assert m[0].weight is w  # same Parameter object, new layout
    assert w.stride() == nhwc_strides((8, 3, 3, 3))
    assert m[2].weight.is_contiguous()  # 2-D parameters are left as they are
    out = m(dlcore.randn(2, 3, 4, 4))
    assert out.shape == (2, 2)


CASES = [  # x shape, w shape, stride, padding, dilation
    ((2, 3, 9, 9), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1)),
    ((2, 3, 9, 9), (4, 3, 3, 3), (2, 2), (1, 1), (1, 1)),
    ((2, 3, 9, 8), (4, 3, 3, 3), (3, 2), (2, 0), (1, 1)),  # strided: the col2im path
    ((2, 1, 8, 8), (5, 1, 3, 3), (1, 1), (1, 1), (1, 1)),  # one input channel (LeNet's)
    ((2, 6, 7, 7), (4, 6, 1, 1), (1, 1), (0, 0), (1, 1)),  # pointwise: no columns
    ((2, 6, 7, 7), (4, 6, 1, 1), (2, 2), (0, 0), (1, 1)),
    ((2, 4, 10, 10), (3, 4, 3, 3), (1, 1), (2, 2), (2, 2)),
    ((1, 3, 8, 9), (2, 3, 2, 3), (2, 1), (0, 0), (1, 1)),
]


@pytest.mark.parametrize("xs,ws,stride,padding,dilation", CASES)
def test_conv2d_channels_last_matches_the_loop_reference(xs, ws, stride, padding,
                                                          dilation) -> None:
    rng = np.random.default_rng(1)
    xa, wa, ba = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    x = dlcore.tensor(xa).contiguous(memory_format=CL).requires_grad_()
    w = dlcore.tensor(wa, requires_grad=True)
    b = dlcore.tensor(ba, requires_grad=True)
    y = F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)
    ga = rng.standard_normal(tuple(y.shape))
    y.backward(dlcore.tensor(ga).contiguous(memory_format=CL))
    ry, rgx, rgw = ref_conv2d(xa, wa, ga, stride, padding, dilation, 1)
    np.testing.assert_allclose(y.numpy(), ry + ba.reshape(1, -1, 1, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), rgx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), rgw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), ga.sum(axis=(0, 2, 3)), rtol=1e-12)
    # the layout flows: y and the input gradient come back channels-last (PyTorch's test:
    # with one input channel both layouts are the same memory order)
    assert is_channels_last(y.array) and x.grad.is_contiguous(memory_format=CL)
    if xs[1] > 1:
        assert not x.grad.is_contiguous()


@pytest.mark.parametrize("xs,ws,stride,padding,dilation", CASES[:4])
def test_conv2d_channels_last_gradcheck(xs, ws, stride, padding, dilation) -> None:
    rng = np.random.default_rng(2)
    x = dlcore.tensor(rng.standard_normal(xs)).contiguous(memory_format=CL).requires_grad_()
    w = dlcore.tensor(rng.standard_normal(ws), requires_grad=True)

    def f(x: dlcore.Tensor, w: dlcore.Tensor) -> dlcore.Tensor:
        return F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)

    assert gradcheck(f, (x, w))


def test_conv2d_nchw_gradient_into_channels_last_input() -> None:
    """gy in the other layout than x (a layer in between changed it): still exact."""
    rng = np.random.default_rng(3)
    xa, wa = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3))
    for stride in ((1, 1), (2, 2)):
        x = dlcore.tensor(xa).contiguous(memory_format=CL).requires_grad_()
        w = dlcore.tensor(wa, requires_grad=True)
        y = F.conv2d(x, w, stride=stride, padding=1)
        ga = rng.standard_normal(tuple(y.shape))
        y.backward(dlcore.tensor(ga))  # NCHW gradient
        _, rgx, rgw = ref_conv2d(xa, wa, ga, stride, (1, 1), (1, 1), 1)
        np.testing.assert_allclose(x.grad.numpy(), rgx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(w.grad.numpy(), rgw, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", [nn.ReLU(), nn.BatchNorm2d(8), nn.Identity()],
                         ids=["relu", "batchnorm", "identity"])
def test_layers_between_convolutions_keep_channels_last(layer: nn.Module) -> None:
    x = dlcore.randn(4, 8, 6, 6).contiguous(memory_format=CL).requires_grad_()
    y = layer(x)
    y.backward(dlcore.randn(*y.shape).contiguous(memory_format=CL))
    assert is_channels_last(y.array) and is_channels_last(x.grad.array)
    x2 = x.detach().contiguous().requires_grad_()
    y2 = layer(x2)
    np.testing.assert_allclose(y.numpy(), y2.numpy(), rtol=1e-6, atol=1e-6)


def test_a_channels_last_cnn_trains_like_the_nchw_one() -> None:
    """Same weights, same data: logits, loss and every weight gradient of a small CNN agree
    between the layouts (float64, so only summation order differs)."""
    dlcore.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 4 * 4, 3)).double()
    x = dlcore.randn(5, 1, 8, 8, dtype=dlcore.float64)
    t = dlcore.tensor([0, 1, 2, 1, 0])
    grads = []
    for fmt in (dlcore.contiguous_format, CL):
        net.zero_grad()
        net.to(memory_format=fmt)
        loss = F.cross_entropy(net(x.contiguous(memory_format=fmt)), t)
        loss.backward()
        grads.append([loss.item()] + [p.grad.numpy().copy() for p in net.parameters()])
    for a, b in zip(grads[0], grads[1]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck_perturbs_non_contiguous_inputs() -> None:
    """gradcheck's finite differences must reach a transposed or channels-last input (they
    once perturbed a flattened copy and measured zero)."""
    x = dlcore.randn(3, 4, dtype=dlcore.float64).t().requires_grad_()
    assert not x.is_contiguous()
    assert gradcheck(lambda t: (t * t).sum(dim=0), (x,))
    with pytest.raises(AssertionError, match="gradient entries differ"):
        gradcheck(lambda t: WrongSquare.apply(t), (x,))


class WrongSquare(dlcore.autograd.Function):
    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, g):
        return (g * dlcore.tensor(3 * self.x),)  # 3x instead of 2x


@pytest.mark.parametrize("op,kw", [(F.max_pool2d, {"kernel_size": 3, "stride": 2, "padding": 1}),
                                   (F.avg_pool2d, {"kernel_size": 3, "stride": 2, "padding": 1}),
                                   (F.adaptive_avg_pool2d, {"output_size": 1})],
                         ids=["max", "avg", "global"])
def test_pooling_reads_a_channels_last_input(op, kw) -> None:
    """Pooling a channels-last tensor gives the NCHW result and gradient exactly."""
    a = dlcore.randn(2, 5, 9, 9, dtype=dlcore.float64)
    x, xc = a.clone().requires_grad_(), a.contiguous(memory_format=CL).requires_grad_()
    y, yc = op(x, **kw), op(xc, **kw)
    g = dlcore.randn(*y.shape, dtype=dlcore.float64)
    y.backward(g)
    yc.backward(g)
    np.testing.assert_array_equal(yc.numpy(), y.numpy())
    np.testing.assert_array_equal(xc.grad.numpy(), x.grad.numpy())
