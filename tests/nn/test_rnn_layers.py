"""RNN, LSTM, GRU and their cells against a step-by-step reference of basic dlcore ops
(outputs, final states, and the gradients of every parameter, input and initial state),
PyTorch's parameter layout, variable lengths, dropout, and the emulated kernels.

Shape letters: T time, N batch, I input size, H hidden size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from op_check import on, rand
from ops.test_rnn import grads_of, reference_layer  # the per-layer oracle of the op tests

import dlcore
from dlcore.nn.rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNBase, RNNCell
from dlcore.testing import gradcheck


def reference_model(m: RNNBase, x: Any, hx: Any = None, lengths: Any = None) -> tuple:
    """What ``m(x, hx, lengths)`` must return, layer by layer and step by step."""
    lstm, batched = m.mode == "lstm", x.ndim == 3
    D = 2 if m.bidirectional else 1
    x = x if batched else x.unsqueeze(1)
    x = x.transpose(0, 1) if batched and m.batch_first else x
    if hx is None:
        zero = dlcore.zeros(m.num_layers * D, x.shape[1], m.hidden_size, dtype=x.dtype)
        states = [zero, zero]
    else:
        states = list(hx) if lstm else [hx, None]
        states = states if batched else [s if s is None else s.unsqueeze(1) for s in states]
    h_n, c_n = [], []
    for layer in range(m.num_layers):
        outs = []
        for d in range(D):
            def p(kind: str) -> Any:
                return getattr(m, f"{kind}_l{layer}{'_reverse' if d else ''}", None)  # noqa: B023

            res = reference_layer(x, states[0][layer * D + d],
                                  states[1][layer * D + d] if lstm else None, p("weight_ih"),
                                  p("weight_hh"), p("bias_ih"), p("bias_hh"), m.mode,
                                  reverse=d == 1, lengths=lengths)
            outs.append(res[0])
            h_n.append(res[1])
            c_n.extend(res[2:])
        x = dlcore.cat(outs, dim=2)
    final = [dlcore.stack(h_n)] + ([dlcore.stack(c_n)] if lstm else [])
    if not batched:
        x, final = x.squeeze(1), [s.squeeze(1) for s in final]
    elif m.batch_first:
        x = x.transpose(0, 1)
    return (x, *final)


def flat(result: tuple) -> tuple:
    out, state = result
    return (out, *state) if isinstance(state, tuple) else (out, state)


def assert_close(a: Any, b: Any, tol: float = 1e-10) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=tol, atol=tol)


LAYER_CASES = [  # class, kwargs, T, N, batched, with_hx, lengths
    (RNN, {}, 4, 3, True, False, None),
    (RNN, {"nonlinearity": "relu", "num_layers": 2, "bidirectional": True}, 3, 2, True,
     True, [3, 1]),
    (LSTM, {}, 1, 1, True, True, None),
    (LSTM, {"num_layers": 2, "batch_first": True}, 4, 3, True, True, [2, 4, 1]),
    (LSTM, {"num_layers": 3, "bidirectional": True, "bias": False}, 3, 2, True, False,
     [3, 2]),
    (LSTM, {"bidirectional": True}, 4, 1, False, True, None),
    (GRU, {"bidirectional": True, "batch_first": True}, 5, 3, True, True, [5, 3, 1]),
    (GRU, {"num_layers": 3}, 2, 2, True, False, None),
    (GRU, {"num_layers": 2, "bidirectional": True}, 1, 1, False, False, None),
]


@pytest.mark.parametrize("cls,kwargs,T,N,batched,with_hx,lengths", LAYER_CASES)
def test_layer_matches_reference(cls: type, kwargs: dict, T: int, N: int, batched: bool,
                                 with_hx: bool, lengths: Any) -> None:
    dlcore.manual_seed(0)
    I, H = 3, 4
    m = cls(I, H, **kwargs).double()
    D = 2 if m.bidirectional else 1
    shape = ((N, T, I) if m.batch_first else (T, N, I)) if batched else (T, I)
    x = on("cpu", rand(*shape, seed=1), requires_grad=True)
    hx = None
    if with_hx:
        state_shape = (m.num_layers * D, N, H) if batched else (m.num_layers * D, H)
        hs = [on("cpu", rand(*state_shape, seed=s), requires_grad=True) for s in (2, 3)]
        hx = (hs[0], hs[1]) if cls is LSTM else hs[0]
    got = flat(m(x, hx, lengths=lengths))
    want = reference_model(m, x, hx, lengths)
    for g, w in zip(got, want):
        assert_close(g, w)
    leaves = [x, *([] if hx is None else (hx if isinstance(hx, tuple) else [hx])),
              *m.parameters()]
    for g, w in zip(grads_of(got, leaves), grads_of(want, leaves)):
        assert_close(g, w)


@pytest.mark.parametrize("cls,kwargs", [(RNNCell, {}), (RNNCell, {"nonlinearity": "relu"}),
                                        (LSTMCell, {}), (GRUCell, {"bias": False})])
@pytest.mark.parametrize("batched", [True, False])
def test_cells_match_reference(cls: type, kwargs: dict, batched: bool) -> None:
    dlcore.manual_seed(1)
    cell = cls(3, 4, **kwargs).double()
    x = on("cpu", rand(*((2, 3) if batched else (3,)), seed=4), requires_grad=True)
    state = (2, 4) if batched else (4,)
    lstm = cls is LSTMCell
    hs = [on("cpu", rand(*state, seed=s), requires_grad=True) for s in (5, 6)]
    hx = (hs[0], hs[1]) if lstm else hs[0]
    got = cell(x, hx)
    got = got if lstm else (got,)

    def unsq(t: Any) -> Any:
        return t if batched else t.unsqueeze(0)

    ref = reference_layer(unsq(x).unsqueeze(0), unsq(hs[0]), unsq(hs[1]) if lstm else None,
                          cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, cell.mode)
    want = [r if batched else r.squeeze(0) for r in ref[1:]]
    for g, w in zip(got, want):
        assert_close(g, w)
    leaves = [x, *hs[:1 + lstm], *cell.parameters()]
    for g, w in zip(grads_of(got, leaves), grads_of(tuple(want), leaves)):
        assert_close(g, w)
    assert tuple(cell(x)[0].shape if lstm else cell(x).shape) == state  # zero initial state


@pytest.mark.parametrize("cls", [RNNCell, LSTMCell, GRUCell])
def test_cell_gradcheck(cls: type) -> None:
    cell = cls(2, 3).double()
    x = on("cpu", rand(2, 2, seed=7), requires_grad=True)
    hs = [on("cpu", rand(2, 3, seed=s), requires_grad=True) for s in (8, 9)]
    if cls is LSTMCell:
        assert gradcheck(lambda a, h, c: cell(a, (h, c)), [x, *hs])
    else:
        assert gradcheck(lambda a, h: cell(a, h), [x, hs[0]])


def test_parameters_follow_pytorch_layout_and_init() -> None:
    m = LSTM(3, 5, num_layers=2, bidirectional=True)
    names = [f"{k}_l{layer}{sfx}" for layer in range(2) for sfx in ("", "_reverse")
             for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert list(m.state_dict()) == names
    assert m.weight_ih_l0.shape == (20, 3) and m.weight_ih_l1.shape == (20, 10)
    assert m.weight_hh_l1_reverse.shape == (20, 5) and m.bias_hh_l0.shape == (20,)
    bound = 1 / np.sqrt(5)
    assert all(np.abs(p.numpy()).max() <= bound for p in m.parameters())
    cell = GRUCell(3, 4, bias=False)
    assert list(cell.state_dict()) == ["weight_ih", "weight_hh"]
    assert cell.weight_hh.shape == (12, 4)


def test_loads_pytorch_state_dict() -> None:
    """A state_dict of NumPy arrays with PyTorch's names and shapes loads, and drives the
    forward pass (checked against the reference fed with the same arrays)."""
    m = GRU(3, 4, num_layers=2, batch_first=True)
    rng = np.random.default_rng(0)
    sd = {k: rng.standard_normal(tuple(v.shape)).astype(np.float32)
          for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    np.testing.assert_array_equal(m.weight_hh_l1.numpy(), sd["weight_hh_l1"])
    x = dlcore.randn(2, 5, 3)
    for g, w in zip(flat(m(x)), reference_model(m, x)):
        assert_close(g, w, tol=1e-5)


def test_lengths_match_sequences_run_alone() -> None:
    """Padded batch == each sequence run alone at its own length (bidirectional, so the reverse
    direction must start at each sequence's last valid step); padded steps get zero output and
    zero gradient."""
    dlcore.manual_seed(2)
    m = LSTM(2, 3, bidirectional=True, num_layers=2).double()
    lengths = [4, 2, 1]
    x = on("cpu", rand(4, 3, 2, seed=3), requires_grad=True)
    out, (h_n, c_n) = m(x, lengths=lengths)
    out.sum().backward()
    for n, L in enumerate(lengths):
        alone, (h1, c1) = m(x[:L, n:n + 1].detach())
        assert_close(out[:L, n:n + 1], alone)
        assert_close(h_n[:, n:n + 1], h1)
        assert_close(c_n[:, n:n + 1], c1)
        assert not out[L:, n].numpy().any() and not x.grad[L:, n].numpy().any()


def test_dropout_between_layers_only_in_training() -> None:
    dlcore.manual_seed(3)
    m = GRU(3, 8, num_layers=2, dropout=0.5)
    x = dlcore.randn(4, 2, 3)
    m.eval()
    out_eval = m(x)[0]
    assert_close(m(x)[0], out_eval, tol=0)
    m.train()
    assert not np.allclose(m(x)[0].numpy(), out_eval.numpy())
    with pytest.warns(UserWarning, match="no effect"):
        RNN(3, 4, dropout=0.2)


def test_emulated_kernels_match_cpu() -> None:
    results = []
    for device in ("cpu", "emu"):
        dlcore.manual_seed(4)
        m = LSTM(2, 4, bidirectional=True, batch_first=True).to(device)
        x = on(device, rand(2, 3, 2, seed=5).astype(np.float32), requires_grad=True)
        got = flat(m(x, lengths=[3, 2]))
        results.append([o.numpy() for o in got] +
                       [g.numpy() for g in grads_of(got, [x, *m.parameters()])])
    # float32 cells in another operation order with FMA on emu (see tests/ops/test_rnn.py):
    # a few ulps per step over the sequence and back
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6)


def test_long_sequence_trains() -> None:
    """2,000 steps through two layers: a handful of graph nodes, no recursion error."""
    m = GRU(4, 8, num_layers=2)
    out, h_n = m(dlcore.randn(2000, 2, 4))
    (out.mean() + h_n.mean()).backward()
    assert np.isfinite(m.weight_ih_l0.grad.numpy()).all()


@pytest.mark.parametrize("call,match", [
    (lambda: LSTM(3, 4)(dlcore.ones(2, 1, 5)), "5 features"),
    (lambda: GRU(3, 4)(dlcore.ones(2, 1, 3), dlcore.zeros(2, 1, 4)), "h_0"),
    (lambda: LSTM(3, 4)(dlcore.ones(2, 1, 3), dlcore.zeros(1, 1, 4)), "tuple"),
    (lambda: RNN(3, 4)(dlcore.ones(2, 2, 3), lengths=[3, 1]), "1..2"),
    (lambda: RNN(3, 4)(dlcore.ones(2, 2, 3), lengths=[1]), "2 integers"),
    (lambda: RNN(3, 4)(dlcore.ones(2, 1, 3, dtype=dlcore.float64)), "dtype"),
    (lambda: RNNCell(3, 4, nonlinearity="gelu"), "nonlinearity"),
    (lambda: LSTMCell(3, 4)(dlcore.ones(2, 3), (dlcore.zeros(2, 4), dlcore.zeros(1, 4))),
     "cx"),
])
def test_validation_messages(call: Any, match: str) -> None:
    with pytest.raises((ValueError, RuntimeError, TypeError), match=match):
        call()
