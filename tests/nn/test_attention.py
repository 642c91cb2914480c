"""scaled_dot_product_attention and MultiheadAttention against PyTorch (outputs, weights and
gradients in float64 with PyTorch's weights copied in via state_dict), gradcheck, and the
statistics of attention dropout.

Shape letters: N batch, H heads, L target length, S source length, E embedding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from op_check import on

import dlcore
import dlcore.nn as nn
import dlcore.nn.functional as F
from dlcore.testing import gradcheck

try:  # the reference where installed (never a dependency); other tests run without it
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed")

TOL = {"rtol": 1e-10, "atol": 1e-12}


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _t(a: Any, requires_grad: bool = False) -> Any:
    return None if a is None else torch.tensor(a, requires_grad=requires_grad)


def _mask_kinds() -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(1)
    keep = rng.random((4, 5)) > 0.4
    keep[:, 0] = True
    return {"none": {}, "causal": {"is_causal": True}, "bool_2d": {"attn_mask": keep},
            "bool_broadcast": {"attn_mask": rng.random((2, 1, 4, 5)) > 0.3},
            "float": {"attn_mask": rng.standard_normal((3, 4, 5))},
            "float_inf": {"attn_mask": np.where(keep, 0.0, -np.inf)},
            "scale": {"scale": 0.37}}


@needs_torch
@pytest.mark.parametrize("kind", list(_mask_kinds()))
def test_sdpa_matches_torch(kind: str, device: str) -> None:
    kw = _mask_kinds()[kind]
    q, k, v = _rand(2, 3, 4, 8, seed=2), _rand(2, 3, 5, 8, seed=3), _rand(2, 3, 5, 6, seed=4)
    tq, tk, tv = (_t(a, True) for a in (q, k, v))
    dq, dk, dv = (on(device, a, requires_grad=True) for a in (q, k, v))
    t_kw = {n: _t(a) if isinstance(a, np.ndarray) else a for n, a in kw.items()}
    d_kw = {n: on(device, a) if isinstance(a, np.ndarray) else a for n, a in kw.items()}
    expected = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, **t_kw)
    out = F.scaled_dot_product_attention(dq, dk, dv, **d_kw)
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), **TOL)
    g = _rand(*expected.shape, seed=5)
    expected.backward(torch.tensor(g))
    out.backward(on(device, g))
    for d, t in ((dq, tq), (dk, tk), (dv, tv)):
        np.testing.assert_allclose(d.grad.numpy(), t.grad.numpy(), **TOL)


@needs_torch
def test_sdpa_causal_is_upper_left_aligned_for_unequal_lengths() -> None:
    q, k = _rand(1, 3, 4), _rand(1, 6, 4)
    expected = torch.nn.functional.scaled_dot_product_attention(_t(q), _t(k), _t(k),
                                                               is_causal=True)
    out = F.scaled_dot_product_attention(dlcore.tensor(q), dlcore.tensor(k), dlcore.tensor(k),
                                         is_causal=True)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), **TOL)


@needs_torch
def test_sdpa_fully_masked_row_gives_zeros_as_torch() -> None:
    q, k = _rand(2, 3, 4), _rand(2, 5, 4)
    keep = np.ones((3, 5), dtype=bool)
    keep[1] = False
    expected = torch.nn.functional.scaled_dot_product_attention(_t(q), _t(k), _t(k),
                                                               attn_mask=_t(keep))
    out = F.scaled_dot_product_attention(dlcore.tensor(q), dlcore.tensor(k), dlcore.tensor(k),
                                         attn_mask=dlcore.tensor(keep))
    np.testing.assert_allclose(out.numpy(), expected.numpy(), **TOL)
    assert np.all(out.numpy()[:, 1] == 0)


@needs_torch
def test_sdpa_grouped_query_attention_matches_torch() -> None:
    q, k, v = _rand(2, 6, 4, 8), _rand(2, 2, 5, 8, seed=1), _rand(2, 2, 5, 3, seed=2)
    expected = torch.nn.functional.scaled_dot_product_attention(_t(q), _t(k), _t(v),
                                                               enable_gqa=True)
    out = F.scaled_dot_product_attention(dlcore.tensor(q), dlcore.tensor(k), dlcore.tensor(v),
                                         enable_gqa=True)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), **TOL)


def test_sdpa_rejects_mask_with_is_causal_and_bad_shapes() -> None:
    x = dlcore.ones(2, 3, 4)
    with pytest.raises(RuntimeError, match="is_causal"):
        F.scaled_dot_product_attention(x, x, x, attn_mask=dlcore.ones(3, 3), is_causal=True)
    with pytest.raises(ValueError, match="do not match"):
        F.scaled_dot_product_attention(x, dlcore.ones(2, 3, 5), x)


@pytest.mark.parametrize("kind", ["none", "causal", "bool_2d", "float"])
def test_sdpa_gradcheck(kind: str) -> None:
    kw = {n: dlcore.tensor(a) if isinstance(a, np.ndarray) else a
          for n, a in _mask_kinds()[kind].items()}
    inputs = [dlcore.tensor(a, requires_grad=True)
              for a in (_rand(3, 4, 8, seed=7), _rand(3, 5, 8, seed=8), _rand(3, 5, 2, seed=9))]
    assert gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw), inputs)


def test_sdpa_dropout_statistics() -> None:
    dlcore.manual_seed(0)
    # uniform attention (all-zero scores) over S keys whose values are all 1: each output is
    # (kept keys) / S / (1 - p), so its mean is 1 and its variance p / ((1 - p) S)
    N, L, S, p = 64, 64, 32, 0.25
    q, k = dlcore.zeros(N, L, 4, dtype="float64"), dlcore.zeros(N, S, 4, dtype="float64")
    v = dlcore.ones(N, S, 1, dtype="float64")
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=p).numpy()
    assert abs(out.mean() - 1.0) < 0.01
    assert abs(out.var() / (p / ((1 - p) * S)) - 1.0) < 0.1
    assert np.allclose(F.scaled_dot_product_attention(q, k, v, dropout_p=0.0).numpy(), 1.0)


# ---- MultiheadAttention ---------------------------------------------------------------
def _pair(E: int = 8, H: int = 2, **kw: Any) -> tuple[Any, nn.MultiheadAttention]:
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(E, H, dtype=torch.float64, **kw)
    with torch.no_grad():  # non-zero biases, so a bias mix-up shows
        for name, p in ref.named_parameters():
            if "bias" in name:
                p.normal_()
    mine = nn.MultiheadAttention(E, H, dtype="float64", **kw)
    mine.load_state_dict({n: t.detach().numpy() for n, t in ref.state_dict().items()})
    return ref, mine


@needs_torch
def test_mha_parameters_and_init_follow_torch() -> None:
    ref = torch.nn.MultiheadAttention(8, 2)
    mine = nn.MultiheadAttention(8, 2)
    assert {n: tuple(p.shape) for n, p in mine.named_parameters()} == \
        {n: tuple(p.shape) for n, p in ref.named_parameters()}
    assert np.all(mine.in_proj_bias.numpy() == 0) and np.all(mine.out_proj.bias.numpy() == 0)
    bound = np.sqrt(6 / (8 + 24))  # xavier_uniform on (3E, E)
    w = mine.in_proj_weight.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    ref = torch.nn.MultiheadAttention(8, 2, kdim=3, vdim=5, add_bias_kv=True, bias=False)
    mine = nn.MultiheadAttention(8, 2, kdim=3, vdim=5, add_bias_kv=True, bias=False)
    assert {n: tuple(p.shape) for n, p in mine.named_parameters()} == \
        {n: tuple(p.shape) for n, p in ref.named_parameters()}
    with pytest.raises(ValueError, match="divisible"):
        nn.MultiheadAttention(8, 3)


CASES = {
    "plain": ({}, {}),
    "batch_first": ({"batch_first": True}, {}),
    "no_weights": ({}, {"need_weights": False}),
    "per_head_weights": ({"batch_first": True}, {"average_attn_weights": False}),
    "kdim_vdim": ({"kdim": 3, "vdim": 5}, {}),
    "kdim_vdim_batch_first": ({"kdim": 3, "vdim": 5, "batch_first": True}, {}),
    "no_bias": ({"bias": False}, {}),
    "bias_kv_zero_attn": ({"add_bias_kv": True, "add_zero_attn": True}, {}),
    "key_padding_mask": ({}, {"key_padding_mask": "bool"}),
    "float_key_padding_mask": ({"batch_first": True}, {"key_padding_mask": "float"}),
    "attn_mask_bool": ({}, {"attn_mask": "bool"}),
    "attn_mask_float_3d": ({}, {"attn_mask": "float3d"}),
    "causal_and_padding": ({"batch_first": True, "add_bias_kv": True},
                           {"attn_mask": "causal", "key_padding_mask": "bool",
                            "is_causal": True}),
}


def _masks(call: dict[str, Any], N: int, H: int, L: int, S: int) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    out = dict(call)
    pad = rng.random((N, S)) < 0.3
    pad[:, 0] = False
    if call.get("key_padding_mask") == "bool":
        out["key_padding_mask"] = pad
    elif call.get("key_padding_mask") == "float":
        out["key_padding_mask"] = rng.standard_normal((N, S))
    if call.get("attn_mask") == "bool":
        out["attn_mask"] = rng.random((L, S)) < 0.3
        out["attn_mask"][:, 0] = False
    elif call.get("attn_mask") == "float3d":
        out["attn_mask"] = rng.standard_normal((N * H, L, S))
    elif call.get("attn_mask") == "causal":
        out["attn_mask"] = np.triu(np.ones((L, S), dtype=bool), 1)
    return out


@needs_torch
@pytest.mark.parametrize("case", list(CASES))
def test_mha_matches_torch(case: str) -> None:
    ctor, call = CASES[case]
    N, H, L, S, E = 3, 2, 4, 6 if "causal" not in case else 4, 8
    ref, mine = _pair(E, H, **ctor)
    kdim, vdim = ctor.get("kdim", E), ctor.get("vdim", E)
    bf = ctor.get("batch_first", False)
    shape = (lambda n: (N, n)) if bf else (lambda n: (n, N))
    q, k, v = _rand(*shape(L), E, seed=1), _rand(*shape(S), kdim, seed=2), \
        _rand(*shape(S), vdim, seed=3)
    call = _masks(call, N, H, L, S)
    t_in = [_t(a, True) for a in (q, k, v)]
    d_in = [dlcore.tensor(a, requires_grad=True) for a in (q, k, v)]
    t_kw = {n: _t(a) if isinstance(a, np.ndarray) else a for n, a in call.items()}
    d_kw = {n: dlcore.tensor(a) if isinstance(a, np.ndarray) else a for n, a in call.items()}
    t_out, t_w = ref(*t_in, **t_kw)
    d_out, d_w = mine(*d_in, **d_kw)
    np.testing.assert_allclose(d_out.numpy(), t_out.detach().numpy(), **TOL)
    if t_w is None:
        assert d_w is None
    else:
        np.testing.assert_allclose(d_w.numpy(), t_w.detach().numpy(), **TOL)
    g = _rand(*t_out.shape, seed=9)
    loss_t = (t_out * torch.tensor(g)).sum() + (0 if t_w is None else t_w.sum())
    loss_d = (d_out * dlcore.tensor(g)).sum() + (0 if d_w is None else d_w.sum())
    loss_t.backward()
    loss_d.backward()
    for d, t in zip(d_in, t_in):
        np.testing.assert_allclose(d.grad.numpy(), t.grad.numpy(), **TOL)
    t_grads = dict(ref.named_parameters())
    for name, p in mine.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), t_grads[name].grad.numpy(), **TOL,
                                   err_msg=name)


@needs_torch
def test_mha_unbatched_matches_torch() -> None:
    ref, mine = _pair(8, 4)
    x, m = _rand(5, 8), np.array([False, False, True, False, True])
    t_out, t_w = ref(_t(x), _t(x), _t(x), key_padding_mask=_t(m))
    d_out, d_w = mine(dlcore.tensor(x), dlcore.tensor(x), dlcore.tensor(x),
                      key_padding_mask=dlcore.tensor(m))
    np.testing.assert_allclose(d_out.numpy(), t_out.detach().numpy(), **TOL)
    np.testing.assert_allclose(d_w.numpy(), t_w.detach().numpy(), **TOL)


def test_mha_is_causal_needs_a_mask() -> None:
    mine = nn.MultiheadAttention(8, 2)
    x = dlcore.ones(3, 2, 8)
    with pytest.raises(RuntimeError, match="attn_mask"):
        mine(x, x, x, is_causal=True)


def test_mha_dropout_only_in_training() -> None:
    dlcore.manual_seed(0)
    mine = nn.MultiheadAttention(8, 2, dropout=0.5, dtype="float64")
    x = dlcore.tensor(_rand(6, 2, 8))
    a, wa = mine(x, x, x)
    b, _ = mine(x, x, x)
    assert not np.allclose(a.numpy(), b.numpy())
    assert np.any(wa.numpy() == 0)  # dropped weights are returned, as in PyTorch
    mine.eval()
    c, wc = mine(x, x, x)
    d, _ = mine(x, x, x)
    np.testing.assert_array_equal(c.numpy(), d.numpy())
    np.testing.assert_allclose(wc.numpy().sum(-1), 1.0)
