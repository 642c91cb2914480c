"""BatchNorm1d/2d, LayerNorm, GroupNorm: forward against NumPy written out per channel /
sample / group, running statistics over several steps, float64 gradchecks (also of second
derivatives), error messages."""

from __future__ import annotations

import numpy as np
import pytest

import dlcore
import dlcore.nn as nn
import dlcore.nn.functional as F
from dlcore.testing import gradcheck, gradgradcheck


def _t(arr: np.ndarray, device: str, grad: bool = False) -> dlcore.Tensor:
    return dlcore.tensor(arr, device=device, requires_grad=grad)


def _bn_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """Batch norm with a loop over channels: each channel normalised over all other dims."""
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        v = x[:, c]
        out[:, c] = (v - v.mean()) / np.sqrt(v.var() + eps) * w[c] + b[c]
    return out


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 4, 4)])
def test_batch_norm_training_forward(device: str, shape: tuple) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 3 + 1
    bn = (nn.BatchNorm2d(3) if len(shape) == 4 else nn.BatchNorm1d(3)).to(device).double()
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    bn.load_state_dict({**bn.state_dict(), "weight": w, "bias": b})
    out = bn(_t(x, device))
    np.testing.assert_allclose(out.numpy(), _bn_reference(x, w, b, 1e-5), rtol=1e-10,
                               atol=1e-12)


def test_batch_norm_running_stats_over_steps(device: str) -> None:
    rng = np.random.default_rng(1)
    bn = nn.BatchNorm2d(2, momentum=0.3).to(device)
    rm, rv = np.zeros(2), np.ones(2)
    for _ in range(4):
        x = rng.standard_normal((3, 2, 2, 2)) * 2 + 5
        bn(_t(x.astype(np.float32), device))
        per_channel = x.transpose(1, 0, 2, 3).reshape(2, -1)
        rm = 0.7 * rm + 0.3 * per_channel.mean(1)
        rv = 0.7 * rv + 0.3 * per_channel.var(1, ddof=1)  # unbiased, as PyTorch
    np.testing.assert_allclose(bn.running_mean.numpy(), rm, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var.numpy(), rv, rtol=1e-5)
    assert bn.num_batches_tracked.item() == 4
    # eval: running statistics, not the batch's
    bn.eval()
    x = rng.standard_normal((2, 2, 2, 2))
    ref = (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(bn(_t(x.astype(np.float32), device)).numpy(), ref, rtol=1e-4,
                               atol=1e-5)
    assert bn.num_batches_tracked.item() == 4


def test_batch_norm_momentum_none_is_cumulative_average(device: str) -> None:
    rng = np.random.default_rng(2)
    bn = nn.BatchNorm1d(3, momentum=None).to(device).double()
    batches = [rng.standard_normal((5, 3)) + i for i in range(3)]
    for x in batches:
        bn(_t(x, device))
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean([x.mean(0) for x in batches], 0),
                               rtol=1e-10)
    np.testing.assert_allclose(bn.running_var.numpy(),
                               np.mean([x.var(0, ddof=1) for x in batches], 0), rtol=1e-10)


def test_batch_norm_without_running_stats_and_affine(device: str) -> None:
    bn = nn.BatchNorm1d(3, affine=False, track_running_stats=False).to(device).eval()
    assert bn.weight is None and bn.running_mean is None
    assert list(bn.state_dict()) == []
    x = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    ref = _bn_reference(x.astype(np.float64), np.ones(3), np.zeros(3), 1e-5)
    np.testing.assert_allclose(bn(_t(x, device)).numpy(), ref, rtol=1e-4, atol=1e-5)


def test_batch_norm_errors() -> None:
    with pytest.raises(ValueError, match="expected more than 1 value per channel when "
                                         r"training, got input of shape \(1, 3\)"):
        nn.BatchNorm1d(3)(dlcore.randn(1, 3))
    nn.BatchNorm1d(3).eval()(dlcore.randn(1, 3))  # fine in eval
    with pytest.raises(ValueError, match=r"batchnorm2d: expected 4D input, got 2D input"):
        nn.BatchNorm2d(3)(dlcore.randn(4, 3))
    with pytest.raises(RuntimeError, match=r"batch_norm: running_mean has shape \(3,\) but "
                                           r"input has 4 channels"):
        nn.BatchNorm1d(3)(dlcore.randn(2, 4))


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradcheck(device: str, training: bool) -> None:
    rng = np.random.default_rng(4)
    x = _t(rng.standard_normal((3, 2, 2)), device, True)
    w = _t(rng.standard_normal(2), device, True)
    b = _t(rng.standard_normal(2), device, True)
    rm, rv = _t(rng.standard_normal(2), device), _t(rng.uniform(0.5, 2, 2), device)

    def fn(x_: dlcore.Tensor, w_: dlcore.Tensor, b_: dlcore.Tensor) -> dlcore.Tensor:
        return F.batch_norm(x_, None if training else rm, None if training else rv, w_, b_,
                            training=training)

    assert gradcheck(fn, [x, w, b])
    assert gradgradcheck(fn, [x, w, b])
    assert gradcheck(lambda x_: F.batch_norm(x_, None, None, training=True), [x])


def _layer_norm_reference(x: np.ndarray, k: int, w: np.ndarray | None, b: np.ndarray | None,
                          eps: float) -> np.ndarray:
    rows = x.reshape(-1, int(np.prod(x.shape[-k:])))
    out = np.stack([(r - r.mean()) / np.sqrt(r.var() + eps) for r in rows]).reshape(x.shape)
    return out * (1 if w is None else w) + (0 if b is None else b)


def test_layer_norm_forward_and_module(device: str) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4, 5))
    w, b = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    out = F.layer_norm(_t(x, device), (4, 5), _t(w, device), _t(b, device), 1e-5)
    np.testing.assert_allclose(out.numpy(), _layer_norm_reference(x, 2, w, b, 1e-5), rtol=1e-9,
                               atol=1e-12)
    ln = nn.LayerNorm(5, device=device)
    assert ln.weight.numpy().tolist() == [1.0] * 5 and not ln.bias.numpy().any()
    np.testing.assert_allclose(ln(_t(x.astype(np.float32), device)).numpy(),
                               _layer_norm_reference(x, 1, None, None, 1e-5), rtol=1e-4,
                               atol=1e-5)
    assert nn.LayerNorm(5, bias=False).bias is None
    assert list(nn.LayerNorm(5, elementwise_affine=False).parameters()) == []
    with pytest.raises(RuntimeError, match=r"layer_norm: input shape \(2, 3, 4, 5\) does not "
                                           r"end with normalized_shape \(4,\)"):
        nn.LayerNorm(4)(_t(x, device))


def test_layer_norm_gradcheck(device: str) -> None:
    rng = np.random.default_rng(6)
    x = _t(rng.standard_normal((3, 4)), device, True)
    w, b = _t(rng.standard_normal(4), device, True), _t(rng.standard_normal(4), device, True)
    assert gradcheck(lambda *a: F.layer_norm(a[0], 4, a[1], a[2]), [x, w, b])
    assert gradcheck(lambda a, c: F.layer_norm(a, 4, c), [x, w])  # weight, no bias
    assert gradgradcheck(lambda *a: F.layer_norm(a[0], 4, a[1], a[2]), [x, w, b])


def _group_norm_reference(x: np.ndarray, g: int, w: np.ndarray, b: np.ndarray,
                          eps: float) -> np.ndarray:
    n, c = x.shape[:2]
    out = np.empty_like(x)
    per = c // g
    for i in range(n):
        for k in range(g):
            v = x[i, k * per:(k + 1) * per]
            out[i, k * per:(k + 1) * per] = (v - v.mean()) / np.sqrt(v.var() + eps)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return out * w.reshape(shape) + b.reshape(shape)


@pytest.mark.parametrize("shape", [(2, 6), (2, 6, 3, 2)])
def test_group_norm_forward_and_module(device: str, shape: tuple) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape) * 2 - 1
    w, b = rng.standard_normal(6), rng.standard_normal(6)
    gn = nn.GroupNorm(3, 6, device=device).double()
    gn.load_state_dict({"weight": w, "bias": b})
    np.testing.assert_allclose(gn(_t(x, device)).numpy(), _group_norm_reference(x, 3, w, b, 1e-5),
                               rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="num_channels=6 must be divisible by num_groups=4"):
        nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="group_norm: 5 channels"):
        F.group_norm(dlcore.randn(2, 5), 3)


def test_group_norm_gradcheck(device: str) -> None:
    rng = np.random.default_rng(8)
    x = _t(rng.standard_normal((2, 4, 3)), device, True)
    w, b = _t(rng.standard_normal(4), device, True), _t(rng.standard_normal(4), device, True)
    assert gradcheck(lambda *a: F.group_norm(a[0], 2, a[1], a[2]), [x, w, b])


def test_norm_reprs() -> None:
    assert repr(nn.BatchNorm2d(8)) == ("BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, "
                                       "track_running_stats=True)")
    assert repr(nn.GroupNorm(2, 4)) == "GroupNorm(2, 4, eps=1e-05, affine=True)"
    assert repr(nn.LayerNorm((3, 4))) == "LayerNorm((3, 4), eps=1e-05, elementwise_affine=True)"
