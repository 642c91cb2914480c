"""Transformer encoder/decoder layers, stacks and nn.Transformer against PyTorch: the same
parameter names (a PyTorch state_dict loads strictly), the same outputs in eval mode in
float64 (post- and pre-norm, relu and gelu, masks), gradients of a small model, and
dropout active only in training.

Shape letters: S source length, T target length, N batch, E model width.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import dlcore
import dlcore.nn as nn

try:  # the reference where installed (never a dependency); other tests run without it
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed")

TOL = {"rtol": 1e-9, "atol": 1e-11}
E, H, FF = 8, 2, 16


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _copy(ref: Any, mine: nn.Module) -> None:
    with torch.no_grad():  # LayerNorm and biases start at 1 and 0: perturb them
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    mine.load_state_dict({n: t.detach().numpy() for n, t in ref.state_dict().items()})
    assert sorted(n for n, _ in mine.named_parameters()) == \
        sorted(n for n, _ in ref.named_parameters())


def _check(mine_out: Any, ref_out: Any) -> None:
    np.testing.assert_allclose(mine_out.numpy(), ref_out.detach().numpy(), **TOL)


@needs_torch
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_encoder_layer_matches_torch(norm_first: bool, activation: str,
                                     batch_first: bool) -> None:
    torch.manual_seed(0)
    kw = {"dim_feedforward": FF, "activation": activation, "norm_first": norm_first,
          "batch_first": batch_first}
    ref = torch.nn.TransformerEncoderLayer(E, H, dtype=torch.float64, **kw).eval()
    mine = nn.TransformerEncoderLayer(E, H, dtype="float64", **kw).eval()
    _copy(ref, mine)
    x = _rand(*((3, 5) if batch_first else (5, 3)), E)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    _check(mine(dlcore.tensor(x)), ref(torch.tensor(x)))
    _check(mine(dlcore.tensor(x), src_mask=dlcore.tensor(mask.numpy()), is_causal=True),
           ref(torch.tensor(x), src_mask=mask, is_causal=True))


@needs_torch
def test_encoder_layer_callable_activation_and_padding_mask() -> None:
    torch.manual_seed(0)
    ref = torch.nn.TransformerEncoderLayer(E, H, FF, activation=torch.tanh,
                                           dtype=torch.float64).eval()
    mine = nn.TransformerEncoderLayer(E, H, FF, activation=dlcore.tanh,
                                      dtype="float64").eval()
    _copy(ref, mine)
    x, pad = _rand(5, 3, E), np.zeros((3, 5), dtype=bool)
    pad[1, 3:] = True
    _check(mine(dlcore.tensor(x), src_key_padding_mask=dlcore.tensor(pad)),
           ref(torch.tensor(x), src_key_padding_mask=torch.tensor(pad)))
    with pytest.raises(RuntimeError, match="relu/gelu"):
        nn.TransformerEncoderLayer(E, H, activation="swish")


@needs_torch
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_decoder_layer_matches_torch(norm_first: bool, activation: str) -> None:
    torch.manual_seed(0)
    kw = {"dim_feedforward": FF, "activation": activation, "norm_first": norm_first}
    ref = torch.nn.TransformerDecoderLayer(E, H, dtype=torch.float64, **kw).eval()
    mine = nn.TransformerDecoderLayer(E, H, dtype="float64", **kw).eval()
    _copy(ref, mine)
    tgt, mem = _rand(4, 3, E, seed=1), _rand(6, 3, E, seed=2)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(4, dtype=torch.float64)
    pad = np.zeros((3, 6), dtype=bool)
    pad[0, 4:] = True
    _check(mine(dlcore.tensor(tgt), dlcore.tensor(mem), tgt_mask=dlcore.tensor(mask.numpy()),
                memory_key_padding_mask=dlcore.tensor(pad), tgt_is_causal=True),
           ref(torch.tensor(tgt), torch.tensor(mem), tgt_mask=mask,
               memory_key_padding_mask=torch.tensor(pad), tgt_is_causal=True))


@needs_torch
def test_encoder_and_decoder_stacks_match_torch() -> None:
    torch.manual_seed(0)
    ref_enc = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(E, H, FF, dtype=torch.float64, batch_first=True),
        num_layers=2, norm=torch.nn.LayerNorm(E, dtype=torch.float64),
        enable_nested_tensor=False).eval()
    mine_enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(E, H, FF, dtype="float64", batch_first=True),
        num_layers=2, norm=nn.LayerNorm(E, dtype="float64")).eval()
    _copy(ref_enc, mine_enc)
    x = _rand(3, 5, E)
    _check(mine_enc(dlcore.tensor(x)), ref_enc(torch.tensor(x)))
    ref_dec = torch.nn.TransformerDecoder(
        torch.nn.TransformerDecoderLayer(E, H, FF, dtype=torch.float64), num_layers=2).eval()
    mine_dec = nn.TransformerDecoder(
        nn.TransformerDecoderLayer(E, H, FF, dtype="float64"), num_layers=2).eval()
    _copy(ref_dec, mine_dec)
    tgt, mem = _rand(4, 3, E, seed=1), _rand(6, 3, E, seed=2)
    _check(mine_dec(dlcore.tensor(tgt), dlcore.tensor(mem)),
           ref_dec(torch.tensor(tgt), torch.tensor(mem)))
    # the layers are copies, not one shared module
    assert mine_enc.layers[0].linear1.weight is not mine_enc.layers[1].linear1.weight


@needs_torch
@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")  # PyTorch's, seq-first
@pytest.mark.parametrize("batch_first", [False, True])
def test_transformer_matches_torch_with_gradients(batch_first: bool) -> None:
    torch.manual_seed(0)
    kw = {"d_model": E, "nhead": H, "num_encoder_layers": 2, "num_decoder_layers": 1,
          "dim_feedforward": FF, "batch_first": batch_first}
    ref = torch.nn.Transformer(dtype=torch.float64, **kw).eval()
    mine = nn.Transformer(dtype="float64", **kw).eval()
    _copy(ref, mine)
    src, tgt = _rand(*((3, 5) if batch_first else (5, 3)), E, seed=1), \
        _rand(*((3, 4) if batch_first else (4, 3)), E, seed=2)
    t_mask = torch.nn.Transformer.generate_square_subsequent_mask(4, dtype=torch.float64)
    d_mask = nn.Transformer.generate_square_subsequent_mask(4, dtype="float64")
    np.testing.assert_array_equal(d_mask.numpy(), t_mask.numpy())
    pad = np.zeros((3, 5), dtype=bool)
    pad[2, 3:] = True
    t_src, t_tgt = torch.tensor(src, requires_grad=True), torch.tensor(tgt, requires_grad=True)
    d_src, d_tgt = dlcore.tensor(src, requires_grad=True), dlcore.tensor(tgt, requires_grad=True)
    t_out = ref(t_src, t_tgt, tgt_mask=t_mask, src_key_padding_mask=torch.tensor(pad),
                memory_key_padding_mask=torch.tensor(pad), tgt_is_causal=True)
    d_out = mine(d_src, d_tgt, tgt_mask=d_mask, src_key_padding_mask=dlcore.tensor(pad),
                 memory_key_padding_mask=dlcore.tensor(pad), tgt_is_causal=True)
    _check(d_out, t_out)
    g = _rand(*t_out.shape, seed=3)
    t_out.backward(torch.tensor(g))
    d_out.backward(dlcore.tensor(g))
    np.testing.assert_allclose(d_src.grad.numpy(), t_src.grad.numpy(), **TOL)
    np.testing.assert_allclose(d_tgt.grad.numpy(), t_tgt.grad.numpy(), **TOL)
    t_params = dict(ref.named_parameters())
    for name, p in mine.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), t_params[name].grad.numpy(), **TOL,
                                   err_msg=name)


def test_transformer_init_and_checks() -> None:
    model = nn.Transformer(E, H, 1, 1, FF)
    w = model.encoder.layers[0].linear1.weight.numpy()  # xavier_uniform: bound sqrt(6/24)
    assert np.abs(w).max() <= np.sqrt(6 / (E + FF))
    assert np.all(model.encoder.norm.weight.numpy() == 1)
    with pytest.raises(RuntimeError, match="batch number"):
        model(dlcore.ones(5, 3, E), dlcore.ones(4, 2, E))
    with pytest.raises(RuntimeError, match="d_model"):
        model(dlcore.ones(5, 3, E + 1), dlcore.ones(4, 3, E + 1))


def test_dropout_only_in_training() -> None:
    dlcore.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.3, dtype="float64")
    x = dlcore.tensor(_rand(5, 3, E))
    assert not np.allclose(layer(x).numpy(), layer(x).numpy())
    layer.eval()
    np.testing.assert_array_equal(layer(x).numpy(), layer(x).numpy())


def test_encoder_layer_trains() -> None:
    dlcore.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, batch_first=True)
    opt = dlcore.optim.Adam(layer.parameters(), lr=1e-2)
    x = dlcore.randn(4, 6, E)
    target = x.flip(1)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((layer(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
