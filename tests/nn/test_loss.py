"""Losses against NumPy references written out here, float64 gradchecks for each reduction,
stability at 1e4-magnitude logits, error messages, and the loss modules."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from op_check import check, grad_ok, gradgrad_ok, on, rand

import dlcore
from dlcore.nn import functional as F
from dlcore.nn import loss as L

REDUCTIONS = ("mean", "sum", "none")


def _reduce(x: np.ndarray, reduction: str) -> np.ndarray:
    return {"mean": x.mean(), "sum": x.sum(), "none": x}[reduction]


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    s = x - x.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def ref_cross_entropy(x, t, weight=None, ignore_index=-100, label_smoothing=0.0,
                      reduction="mean"):
    """PyTorch's definition, row by row: (N, C, d...) moved to rows of C classes."""
    c = x.shape[1] if x.ndim > 1 else x.shape[0]
    rows = np.moveaxis(x, 1, -1).reshape(-1, c) if x.ndim > 1 else x.reshape(1, c)
    out_shape = np.asarray(t).shape if x.ndim > 1 else ()
    t = np.asarray(t).reshape(-1)
    w = np.ones(c) if weight is None else weight
    nll, smooth, wsum = [], [], 0.0
    for r, y in zip(_log_softmax(rows, 1), t):
        if y == ignore_index:
            nll.append(0.0)
            smooth.append(0.0)
            continue
        nll.append(-w[y] * r[y])
        smooth.append(-(w * r).sum())
        wsum += w[y]
    nll, smooth = np.array(nll), np.array(smooth)
    eps = label_smoothing
    if reduction == "none":
        return ((1 - eps) * nll + eps / c * smooth).reshape(out_shape)
    if reduction == "sum":
        return (1 - eps) * nll.sum() + eps / c * smooth.sum()
    # PyTorch's mean: both terms over the summed target weights of the non-ignored rows
    return ((1 - eps) * nll.sum() + eps / c * smooth.sum()) / wsum


# ---- cross_entropy ---------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", [
    {}, {"weight": True}, {"ignore_index": 1}, {"label_smoothing": 0.2},
    {"ignore_index": 1, "label_smoothing": 0.2},
    {"weight": True, "ignore_index": 2, "label_smoothing": 0.1}],
    ids=["plain", "weight", "ignore", "smoothing", "ignore_smoothing", "all"])
def test_cross_entropy_indices(device, reduction, options):
    x = rand(6, 4, seed=1)
    t = np.array([0, 1, 2, 3, 1, 2])
    w = np.array([0.5, 1.0, 2.0, 1.5]) if options.get("weight") else None
    kw = {k: v for k, v in options.items() if k != "weight"}
    expected = ref_cross_entropy(x, t, w, reduction=reduction, **kw)
    tt = on(device, t)
    wt = None if w is None else on(device, w)
    check(F.cross_entropy(on(device, x), tt, weight=wt, reduction=reduction, **kw), expected)
    assert grad_ok(lambda a: F.cross_entropy(a, tt, weight=wt, reduction=reduction, **kw),
                   [x], device)


def test_cross_entropy_spatial_and_unbatched(device):
    x = rand(2, 3, 4, 5, seed=2)
    t = np.random.default_rng(0).integers(0, 3, (2, 4, 5))
    t[0, 0, 0] = -100
    for reduction in REDUCTIONS:
        check(F.cross_entropy(on(device, x), on(device, t), reduction=reduction),
              ref_cross_entropy(x, t, reduction=reduction))
    assert grad_ok(lambda a: F.cross_entropy(a, on(device, t), label_smoothing=0.1),
                   [x], device)
    v = rand(5, seed=3)
    check(F.cross_entropy(on(device, v), on(device, np.array(2))),
          ref_cross_entropy(v, np.array([2])))
    out = F.cross_entropy(on(device, v), on(device, np.array(2)), reduction="none")
    assert out.shape == ()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probabilities(device, reduction):
    x = rand(4, 3, seed=4)
    p = np.random.default_rng(1).dirichlet(np.ones(3), 4)
    w = np.array([1.0, 2.0, 0.5])
    for eps in (0.0, 0.3):
        q = p * (1 - eps) + eps / 3
        expected = _reduce(-(_log_softmax(x, 1) * q * w).sum(1), reduction)
        out = F.cross_entropy(on(device, x), on(device, p), weight=on(device, w),
                              reduction=reduction, label_smoothing=eps)
        check(out, expected)
    assert grad_ok(lambda a, b: F.cross_entropy(a, b, reduction=reduction), [x, p], device)


def test_cross_entropy_double_backward(device):
    x = rand(3, 4, seed=5)
    t = on(device, np.array([0, 3, 1]))
    w = on(device, np.array([1.0, 2.0, 3.0, 4.0]))
    assert gradgrad_ok(lambda a: F.cross_entropy(a, t, weight=w, label_smoothing=0.1),
                       [x], device)


def test_cross_entropy_huge_logits_are_finite(device):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3]], dtype=np.float32)
    for target in (np.array([1, 0]), np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]],
                                              np.float32)):
        for smoothing in (0.0, 0.1):
            xt = on(device, x, requires_grad=True)
            out = F.cross_entropy(xt, on(device, target), label_smoothing=smoothing)
            out.backward()
            assert np.isfinite(out.item()) and np.isfinite(xt.grad.numpy()).all()
    xt = on(device, x, requires_grad=True)
    F.cross_entropy(xt, on(device, np.array([1, 0]))).backward()
    np.testing.assert_allclose(xt.grad.numpy(), [[0.5, -0.5, 0], [-0.5, 0.5, 0]], atol=1e-6)


def test_cross_entropy_errors():
    x = dlcore.randn(4, 10)
    with pytest.raises(ValueError, match=r"cross_entropy: expected target of shape \(4,\) for "
                                         r"input of shape \(4, 10\), got target of shape \(3,\)"):
        F.cross_entropy(x, dlcore.tensor([1, 2, 3]))
    with pytest.raises(IndexError, match="target 12 is out of bounds for 10 classes"):
        F.cross_entropy(x, dlcore.tensor([1, 2, 3, 12]))
    with pytest.raises(ValueError, match="weight must have shape"):
        F.cross_entropy(x, dlcore.tensor([1, 2, 3, 4]), weight=dlcore.ones(3))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(x, dlcore.tensor([1, 2, 3, 4]), reduction="avg")


def test_all_ignored_mean_is_nan():
    out = F.cross_entropy(dlcore.randn(2, 3), dlcore.tensor([-100, -100]))
    assert np.isnan(out.item())


# ---- nll_loss --------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss(device, reduction):
    logp = _log_softmax(rand(5, 3, seed=6), 1)
    t = np.array([0, 2, 1, 2, 0])
    w = np.array([1.0, 0.5, 2.0])
    picked = np.array([-w[y] * logp[i, y] if y != 0 or i != 4 else 0.0
                       for i, y in enumerate(t)])
    expected = {"mean": picked.sum() / w[t[:4]].sum(), "sum": picked.sum(),
                "none": picked}[reduction]
    tt, wt = on(device, np.array([0, 2, 1, 2, 7])), on(device, w)
    check(F.nll_loss(on(device, logp), tt, weight=wt, ignore_index=7, reduction=reduction),
          expected)
    assert grad_ok(lambda a: F.nll_loss(a, tt, weight=wt, ignore_index=7,
                                        reduction=reduction), [logp], device)


# ---- pointwise losses ------------------------------------------------------------------
def _smooth_l1(d, beta):
    a = np.abs(d)
    return np.where(a < beta, 0.5 * d * d / beta, a - 0.5 * beta)


def _huber(d, delta):
    a = np.abs(d)
    return np.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))


POINTWISE = [
    ("mse", lambda a, b, r: F.mse_loss(a, b, reduction=r), lambda d: d * d),
    ("l1", lambda a, b, r: F.l1_loss(a, b, reduction=r), np.abs),
    ("smooth_l1", lambda a, b, r: F.smooth_l1_loss(a, b, reduction=r, beta=0.5),
     lambda d: _smooth_l1(d, 0.5)),
    ("smooth_l1_beta0", lambda a, b, r: F.smooth_l1_loss(a, b, reduction=r, beta=0.0), np.abs),
    ("huber", lambda a, b, r: F.huber_loss(a, b, reduction=r, delta=0.7),
     lambda d: _huber(d, 0.7)),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name, fn, ref", POINTWISE, ids=[p[0] for p in POINTWISE])
def test_pointwise_losses(device, name, fn, ref, reduction):
    x, y = rand(3, 4, seed=7), rand(3, 4, seed=8)
    check(fn(on(device, x), on(device, y), reduction), _reduce(ref(x - y), reduction))
    assert grad_ok(lambda a, b: fn(a, b, reduction), [x, y], device)


def _bce(x, t, w=1.0):
    return -w * (t * np.maximum(np.log(x), -100) + (1 - t) * np.maximum(np.log1p(-x), -100))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy(device, reduction):
    x = rand(3, 4, seed=9, low=0.05, high=0.95)
    t = rand(3, 4, seed=10, low=0.0, high=1.0)
    w = rand(4, seed=11, low=0.5, high=2.0)
    out = F.binary_cross_entropy(on(device, x), on(device, t), weight=on(device, w),
                                 reduction=reduction)
    check(out, _reduce(_bce(x, t, w), reduction))
    assert grad_ok(lambda a, b: F.binary_cross_entropy(a, b, reduction=reduction), [x, t],
                   device)


def test_binary_cross_entropy_clamps_log():
    x = dlcore.tensor([0.0, 1.0, 0.5], requires_grad=True)
    out = F.binary_cross_entropy(x, dlcore.tensor([1.0, 0.0, 1.0]), reduction="none")
    np.testing.assert_allclose(out.numpy(), [100.0, 100.0, np.log(2)], rtol=1e-6)
    out.sum().backward()
    assert np.isfinite(x.grad.numpy()).all()
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        F.binary_cross_entropy(dlcore.tensor([1.5]), dlcore.tensor([1.0]))


def _bce_logits(x, t, w=1.0, pw=1.0):
    log_sig = -np.logaddexp(0, -x)
    log_one_minus_sig = -np.logaddexp(0, x)
    return -w * (pw * t * log_sig + (1 - t) * log_one_minus_sig)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits(device, reduction):
    x = rand(3, 4, seed=12, low=-30, high=30)
    t = rand(3, 4, seed=13, low=0.0, high=1.0)
    w, pw = rand(3, 1, seed=14, low=0.5, high=2.0), rand(4, seed=15, low=0.5, high=3.0)
    out = F.binary_cross_entropy_with_logits(on(device, x), on(device, t), weight=on(device, w),
                                             pos_weight=on(device, pw), reduction=reduction)
    check(out, _reduce(_bce_logits(x, t, w, pw), reduction))
    assert grad_ok(lambda a, b: F.binary_cross_entropy_with_logits(
        a, b, pos_weight=on(device, pw), reduction=reduction), [x, t], device)


def test_bce_with_logits_huge_and_zero_logits():
    x = dlcore.tensor([1e4, -1e4, 0.0], requires_grad=True)
    out = F.binary_cross_entropy_with_logits(x, dlcore.tensor([0.0, 1.0, 1.0]),
                                             reduction="none")
    np.testing.assert_allclose(out.numpy(), [1e4, 1e4, np.log(2)], rtol=1e-6)
    out.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0, -1.0, -0.5], atol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS + ("batchmean",))
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div(device, reduction, log_target):
    x = _log_softmax(rand(3, 4, seed=16), 1)
    p = np.random.default_rng(2).dirichlet(np.ones(4), 3)
    p[0, 1] = 0.0  # 0 * log 0 counts as 0
    t = np.log(p + 1e-3) if log_target else p
    point = np.exp(t) * (t - x) if log_target else \
        np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0) - p * x
    expected = point.sum() / 3 if reduction == "batchmean" else _reduce(point, reduction)
    out = F.kl_div(on(device, x), on(device, t), reduction=reduction, log_target=log_target)
    check(out, expected)
    assert grad_ok(lambda a: F.kl_div(a, on(device, t), reduction=reduction,
                                      log_target=log_target), [x], device)


def test_shape_mismatch_warns():
    with pytest.warns(UserWarning, match="different to the input size"):
        F.mse_loss(dlcore.ones(3, 1), dlcore.ones(3))


# ---- modules ---------------------------------------------------------------------------
def test_loss_modules_match_functions():
    x, t = dlcore.randn(4, 3), dlcore.tensor([0, 2, 1, 2])
    w = dlcore.tensor([1.0, 2.0, 3.0])
    m = L.CrossEntropyLoss(weight=w, label_smoothing=0.1, reduction="sum")
    assert m(x, t).item() == F.cross_entropy(x, t, weight=w, label_smoothing=0.1,
                                             reduction="sum").item()
    assert "weight" in m.state_dict()
    logp = x.log_softmax(1)
    assert L.NLLLoss(ignore_index=2)(logp, t).item() == F.nll_loss(logp, t, ignore_index=2).item()
    a, b = dlcore.rand(2, 3), dlcore.rand(2, 3)
    pairs = [(L.MSELoss(), F.mse_loss), (L.L1Loss(reduction="sum"), None),
             (L.SmoothL1Loss(beta=0.3), None), (L.HuberLoss(delta=0.2), None),
             (L.BCELoss(), F.binary_cross_entropy), (L.BCEWithLogitsLoss(), None),
             (L.KLDivLoss(reduction="batchmean"), None)]
    for module, fn in pairs:
        out = module(a, b)
        assert out.shape == () and np.isfinite(out.item())
        if fn is not None:
            assert out.item() == fn(a, b).item()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert L.MSELoss(size_average=False).reduction == "sum"
        assert L.MSELoss(reduce=False).reduction == "none"


def test_cross_entropy_ignore_index_with_smoothing_matches_pytorch_figure():
    """Four rows, one ignored: both terms of the mean are over the 2 kept rows (dlcore used to
    divide the smoothing term by all 4 rows). PyTorch 2.13.0 gives 1.1585578880562668 here."""
    x = np.array([[0.2, -1.0, 0.5], [1.0, 0.3, -0.2], [-0.7, 0.8, 0.1], [0.4, 0.4, -1.2]])
    t = np.array([0, 1, 2, 1])
    got = F.cross_entropy(dlcore.tensor(x), dlcore.tensor(t), ignore_index=1,
                          label_smoothing=0.3).item()
    rows = x[[0, 2]] - np.log(np.exp(x[[0, 2]]).sum(1, keepdims=True))
    nll = -(rows[0, 0] + rows[1, 2]) / 2
    smooth = -rows.sum() / 3 / 2
    assert got == pytest.approx(0.7 * nll + 0.3 * smooth, rel=1e-12)


@pytest.mark.parametrize("call", [
    lambda: F.mse_loss(dlcore.zeros(3, 1), dlcore.zeros(3)),
    lambda: F.l1_loss(dlcore.zeros(3), dlcore.zeros(3), size_average=False),
    lambda: F.smooth_l1_loss(dlcore.zeros(2, 1), dlcore.zeros(2)),
    lambda: dlcore.nn.MSELoss()(dlcore.zeros(3, 1), dlcore.zeros(3)),
], ids=["broadcast", "size_average", "smooth_l1_broadcast", "module_broadcast"])
def test_loss_warnings_point_at_the_callers_line(call) -> None:
    """The broadcasting and deprecated-argument warnings name the user's file (PyTorch's
    do); through the autocast wrapper a fixed stacklevel had named dlcore/ops/_util.py."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    assert caught, "no warning"
    assert {w.filename for w in caught} == {__file__}
