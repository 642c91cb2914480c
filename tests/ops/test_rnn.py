"""The fused recurrent layer op (dlcore.ops.rnn) against a step-by-step reference built from
basic dlcore ops (matmul, sigmoid, tanh, slicing, stack), whose autograd is the oracle for
every gradient; float64 gradchecks; the emulated kernels against the NumPy path.

Shape letters: T time, N batch, I input size, H hidden size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from op_check import on, rand

import dlcore
from dlcore.ops.rnn import GATES, rnn_layer
from dlcore.testing import gradcheck

MODES = tuple(GATES)


def reference_layer(x: Any, h0: Any, c0: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any,
                    mode: str, reverse: bool = False, lengths: Any = None) -> tuple:
    """One layer, one direction, one time step at a time, from basic differentiable ops."""
    T, H = x.shape[0], h0.shape[1]
    h, c = h0, c0
    ys: list[Any] = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        gi, gh = x[t] @ w_ih.mT, h @ w_hh.mT
        if b_ih is not None:
            gi, gh = gi + b_ih, gh + b_hh
        if mode == "lstm":
            a = gi + gh
            i, f, g, o = (a[:, :H].sigmoid(), a[:, H:2 * H].sigmoid(), a[:, 2 * H:3 * H].tanh(),
                          a[:, 3 * H:].sigmoid())
            c_new = f * c + i * g
            h_new = o * c_new.tanh()
        elif mode == "gru":
            r = (gi[:, :H] + gh[:, :H]).sigmoid()
            z = (gi[:, H:2 * H] + gh[:, H:2 * H]).sigmoid()
            n = (gi[:, 2 * H:] + r * gh[:, 2 * H:]).tanh()
            h_new = (1 - z) * n + z * h
        else:
            a = gi + gh
            h_new = a.relu() if mode == "rnn_relu" else a.tanh()
        if lengths is None:
            h, ys[t] = h_new, h_new
            if mode == "lstm":
                c = c_new
            continue
        m = on(x.device, (t < np.asarray(lengths))[:, None].astype(x.dtype))
        h, ys[t] = m * h_new + (1 - m) * h, m * h_new
        if mode == "lstm":
            c = m * c_new + (1 - m) * c
    y = dlcore.stack(ys)
    return (y, h, c) if mode == "lstm" else (y, h)


def make_inputs(mode: str, T: int, N: int, I: int, H: int, device: str, bias: bool = True,
                dtype: Any = np.float64, seed: int = 0) -> list:
    G = GATES[mode]
    arrays = [rand(T, N, I, seed=seed), rand(N, H, seed=seed + 1),
              rand(N, H, seed=seed + 2) if mode == "lstm" else None,
              rand(G * H, I, seed=seed + 3, low=-0.6, high=0.6),
              rand(G * H, H, seed=seed + 4, low=-0.6, high=0.6)]
    arrays += [rand(G * H, seed=seed + 5), rand(G * H, seed=seed + 6)] if bias else [None, None]
    return [None if a is None else on(device, a.astype(dtype), requires_grad=True)
            for a in arrays]


def grads_of(outputs: tuple, inputs: list, seed: int = 7) -> list:
    """Gradients of a random projection of all outputs with respect to every input."""
    rng = np.random.default_rng(seed)
    loss = None
    for o in outputs:
        w = on(o.device, rng.standard_normal(o.shape).astype(o.dtype))
        term = (o * w).sum()
        loss = term if loss is None else loss + term
    live = [t for t in inputs if t is not None]
    return list(dlcore.autograd.grad(loss, live))


def assert_close(a: Any, b: Any, tol: float = 1e-10) -> None:
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=tol, atol=tol)


def assert_matches_reference(out: tuple, inputs: list, **options: Any) -> None:
    """Outputs and every input's gradient against the reference built from basic ops."""
    ref = reference_layer(*inputs, **options)
    for o, r in zip(out, ref):
        assert o.shape == r.shape
        assert_close(o, r)
    for g, r in zip(grads_of(out, inputs), grads_of(ref, inputs)):
        assert_close(g, r)


def count_packed_products(monkeypatch: pytest.MonkeyPatch) -> list:
    """Force blas_cpu's packed recurrent weights (taken where OpenBLAS has its small path,
    which CI's kernel set lacks) and record each packed product's chunk count."""
    from dlcore.ops import blas_cpu
    monkeypatch.setattr(blas_cpu, "small_path", lambda: True)
    calls: list = []
    real = blas_cpu.PackedColumns.matmul_into
    monkeypatch.setattr(blas_cpu.PackedColumns, "matmul_into",
                        lambda self, a, out: calls.append(self.chunks) or real(self, a, out))
    return calls


CASES = [  # mode, T, N, I, H, reverse, lengths, bias
    ("rnn_tanh", 4, 3, 2, 3, False, None, True),
    ("rnn_relu", 4, 3, 2, 3, True, [4, 1, 2], True),
    ("lstm", 5, 3, 2, 3, False, [5, 2, 3], True),
    ("lstm", 5, 3, 2, 3, True, None, False),
    ("lstm", 1, 1, 2, 3, True, None, True),
    ("gru", 5, 3, 2, 3, False, None, True),
    ("gru", 5, 3, 2, 3, True, [1, 5, 3], True),
    ("gru", 1, 1, 1, 2, False, [1], False),
]


@pytest.mark.parametrize("mode,T,N,I,H,reverse,lengths,bias", CASES)
def test_layer_matches_step_by_step_reference(mode: str, T: int, N: int, I: int, H: int,
                                              reverse: bool, lengths: Any, bias: bool) -> None:
    inputs = make_inputs(mode, T, N, I, H, "cpu", bias)
    out = rnn_layer(*inputs, mode=mode, reverse=reverse, lengths=lengths)
    assert_matches_reference(out, inputs, mode=mode, reverse=reverse, lengths=lengths)


@pytest.mark.parametrize("mode,lengths", [("rnn_tanh", None), ("rnn_relu", [4, 1, 3]),
                                          ("gru", None), ("gru", [2, 4, 4]),
                                          ("lstm", [4, 2, 3])])
def test_per_step_layers_with_packed_weights(monkeypatch: pytest.MonkeyPatch, mode: str,
                                             lengths: Any) -> None:
    """The per-step path (RNN, GRU, an LSTM with lengths) with its recurrent weights packed
    (blas_cpu.PackedColumns, taken where OpenBLAS has its small path: forced here), forward
    and backward, against the reference built from basic ops."""
    calls = count_packed_products(monkeypatch)
    N, H = 3, 64  # G*H >= 64 columns forward, H = 64 backward: both packed
    inputs = make_inputs(mode, 4, N, 3, H, "cpu", seed=29)
    inputs[4] = on("cpu", inputs[4].numpy() / 8, requires_grad=True)  # W_hh: off saturation
    out = rnn_layer(*inputs, mode=mode, lengths=lengths)
    assert not out[0].grad_fn.fused
    assert_matches_reference(out, inputs, mode=mode, lengths=lengths)
    assert len(calls) == 8  # every step of the forward and of the backward


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode: str) -> None:
    inputs = make_inputs(mode, 3, 2, 2, 2, "cpu", seed=3)
    lengths = [3, 2]
    assert gradcheck(lambda *a: rnn_layer(*a, mode=mode, reverse=True, lengths=lengths), inputs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emulated_kernels_match_numpy(mode: str, dtype: Any) -> None:
    # The cells compute the same formulas in another order (the kernel fuses and contracts
    # a*b+c into FMA; NumPy rounds each step), a few float32 ulps per step, compounded
    # over the 3 steps and through backward's products: under 2e-5 for values of order 1.
    tol = 2e-5 if dtype == np.float32 else 1e-10
    for reverse, lengths in ((False, None), (True, [3, 1])):
        results = []
        for device in ("cpu", "emu"):
            inputs = make_inputs(mode, 3, 2, 3, 4, device, dtype=dtype, seed=11)
            out = rnn_layer(*inputs, mode=mode, reverse=reverse, lengths=lengths)
            results.append([o.numpy() for o in out] +
                           [g.numpy() for g in grads_of(out, inputs)])
        for a, b in zip(*results):
            np.testing.assert_allclose(b, a, rtol=tol, atol=tol)


def test_gradcheck_on_emulator() -> None:
    inputs = make_inputs("lstm", 2, 2, 2, 2, "emu", seed=5)
    assert gradcheck(lambda *a: rnn_layer(*a, mode="lstm", lengths=[2, 1]), inputs)


def test_gradient_only_for_outputs_used() -> None:
    """Unused outputs get None gradients from the engine; a loss on h_n alone still works."""
    inputs = make_inputs("gru", 4, 2, 3, 3, "cpu", seed=2)
    _, h_n = rnn_layer(*inputs, mode="gru")
    _, ref_h = reference_layer(*inputs, mode="gru")
    for g, r in zip(grads_of((h_n,), inputs), grads_of((ref_h,), inputs)):
        assert_close(g, r)


def test_long_sequence_is_one_node() -> None:
    """2,000 steps: one graph node, no recursion, gradients reach the input."""
    x = dlcore.randn(2000, 2, 3, requires_grad=True)
    inputs = make_inputs("lstm", 1, 2, 3, 4, "cpu", dtype=np.float32)
    y, h_n, c_n = rnn_layer(x, *inputs[1:], mode="lstm")
    assert all(e is None or e[0] is not y.grad_fn for e in y.grad_fn.next_functions)
    (y.sum() + h_n.sum()).backward()
    assert x.grad.shape == (2000, 2, 3) and np.isfinite(x.grad.numpy()).all()


def test_double_backward_is_refused() -> None:
    inputs = make_inputs("rnn_tanh", 2, 1, 1, 2, "cpu")
    y, _ = rnn_layer(*inputs, mode="rnn_tanh")
    with pytest.raises(RuntimeError, match="double backward"):
        dlcore.autograd.grad(y.sum(), inputs[0], create_graph=True)


# ---- the whole-layer LSTM path of the cpu (rnn_cpu.lstm_layer_forward/backward) -----------

@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("block_bytes", [1, 1 << 19])
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_lstm_matches_step_by_step_reference(monkeypatch: pytest.MonkeyPatch, flip: bool,
                                                   block_bytes: int, reverse: bool) -> None:
    """The fused path (taken: cpu, no lengths, float64) in both GEMM orientations and with
    one step per backward block as well as all steps in one, against the reference built
    from basic ops."""
    from dlcore.ops import rnn_cpu
    big = 10 ** 9
    monkeypatch.setattr(rnn_cpu, "FORWARD_FLIP_MIN_H", 1 if flip else big)
    monkeypatch.setattr(rnn_cpu, "FORWARD_FLIP_MAX_N", big if flip else 0)
    monkeypatch.setattr(rnn_cpu, "BACKWARD_FLIP_MIN_H", 1 if flip else big)
    monkeypatch.setattr(rnn_cpu, "BACKWARD_BLOCK_BYTES", block_bytes)
    inputs = make_inputs("lstm", 6, 3, 4, 5, "cpu", seed=21)  # N > 1: flips
    out = rnn_layer(*inputs, mode="lstm", reverse=reverse)
    assert out[0].grad_fn.fused
    assert_matches_reference(out, inputs, mode="lstm", reverse=reverse)


@pytest.mark.parametrize("chunks", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_lstm_with_packed_weights(monkeypatch: pytest.MonkeyPatch, chunks: bool,
                                        reverse: bool) -> None:
    """The packed recurrent GEMMs (blas_cpu.PackedColumns: taken where OpenBLAS has its small
    path, so forced here): forward W_hh^T in 64-wide blocks, backward W_hh in 32-wide ones,
    and with the small-path limit lowered both 64 wide with the reduction in chunks; against
    the reference built from basic ops."""
    from dlcore.ops import blas_cpu
    calls = count_packed_products(monkeypatch)
    N, H = 3, (64 if chunks else 32)
    if chunks:
        monkeypatch.setattr(blas_cpu, "PACK_MNK", N * 32 * 64)
        monkeypatch.setattr(blas_cpu, "PACK_MIN_CHUNK", 8)
        assert blas_cpu.pack_plan(N, H, 4 * H, np.float64) == (64, 2)
        assert blas_cpu.pack_plan(N, 4 * H, H, np.float64) == (64, 8)
    else:
        assert blas_cpu.pack_plan(N, H, 4 * H, np.float64) == (64, 1)
        assert blas_cpu.pack_plan(N, 4 * H, H, np.float64) == (32, 1)
    inputs = make_inputs("lstm", 5, N, 4, H, "cpu", seed=27)
    for i in (3, 4):  # keep the gates off saturation at H=32-64
        inputs[i] = on("cpu", inputs[i].numpy() / 4, requires_grad=True)
    out = rnn_layer(*inputs, mode="lstm", reverse=reverse)
    assert out[0].grad_fn.fused
    assert_matches_reference(out, inputs, mode="lstm", reverse=reverse)
    assert len(calls) == 10  # every step of the forward and of the backward


def test_fused_lstm_matches_per_step_cells() -> None:
    """Lengths all T take the per-step cells (the kernels' oracle), None the fused path: the
    same values, to float64 rounding."""
    results = []
    for lengths in (None, [7, 7]):
        inputs = make_inputs("lstm", 7, 2, 3, 4, "cpu", seed=23)
        out = rnn_layer(*inputs, mode="lstm", lengths=lengths)
        assert out[0].grad_fn.fused == (lengths is None)
        results.append([o.numpy() for o in out] + [g.numpy() for g in grads_of(out, inputs)])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def numpy_lstm(x: np.ndarray, h: np.ndarray, c: np.ndarray, w_ih: np.ndarray,
               w_hh: np.ndarray, b: np.ndarray) -> tuple:
    """The LSTM forward as the obvious float64 NumPy loop."""
    H = h.shape[1]
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    ys = []
    for t in range(x.shape[0]):
        a = x[t] @ w_ih.T + h @ w_hh.T + b
        i, f, o = sig(a[:, :H]), sig(a[:, H:2 * H]), sig(a[:, 3 * H:])
        g = np.tanh(a[:, 2 * H:3 * H])
        c = f * c + i * g
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys), h, c


def test_fused_lstm_float32_against_numpy_loop() -> None:
    """float32 through the fused path at H=512, N=4, where both per-step GEMMs go through
    blas_cpu's column blocks (asserted; H=1024 would flip them, covered above by the
    thresholds), against a float64 NumPy loop."""
    from dlcore.ops import blas_cpu
    assert blas_cpu.split_columns(np.zeros((4, 512), np.float32),
                                  np.zeros((512, 2048), np.float32)) > 0
    assert blas_cpu.split_columns(np.zeros((4, 2048), np.float32),
                                  np.zeros((2048, 512), np.float32)) > 0
    inputs = make_inputs("lstm", 3, 4, 8, 512, "cpu", dtype=np.float32, seed=25)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = (t.numpy().astype(np.float64) for t in inputs)
    w_ih, w_hh = w_ih / 8, w_hh / 8  # keep the gates off saturation
    inputs[3] = on("cpu", w_ih.astype(np.float32), requires_grad=True)
    inputs[4] = on("cpu", w_hh.astype(np.float32), requires_grad=True)
    out = rnn_layer(*inputs, mode="lstm")
    assert out[0].grad_fn.fused and out[0].dtype == np.float32
    for o, r in zip(out, numpy_lstm(x, h0, c0, w_ih, w_hh, b_ih + b_hh)):
        np.testing.assert_allclose(o.numpy(), r, rtol=1e-5, atol=1e-5)
    # backward against the float64 run of the same layer (checked against the reference above)
    grads32 = grads_of(out, inputs)
    inputs64 = [on("cpu", t.numpy().astype(np.float64), requires_grad=True) for t in inputs]
    grads64 = grads_of(rnn_layer(*inputs64, mode="lstm"), inputs64)
    for g32, g64 in zip(grads32, grads64):
        np.testing.assert_allclose(g32.numpy(), g64.numpy(), rtol=2e-4, atol=2e-4)
