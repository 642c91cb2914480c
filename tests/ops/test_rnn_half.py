"""The recurrent layers in float16: the ``__half`` cell kernels (emu, cuda) and their NumPy twin
(cpu) round each stored value once from float32 arithmetic, the GEMMs around them run in
float32 on cpu and emu, and layers, modules and autocast regions stay float16 end to end.

The bounds, derived from one rule: every value a float16 layer stores is its float32 value
rounded to float16 once (checked bit for bit per cell below). So a float16 cell equals the
float32 cell on the same values, rounded; the kernels and the NumPy twin, whose float32 results
differ only in their last bits (FMA contraction, tanhf against NumPy's tanh), give float16
values equal or one ulp apart; and a float16 layer is the float32 layer with every stored value
moved by at most U = 2^-11 of itself (see ``test_layer_within_float16_bound_of_float32``).

Shape letters: T time, N batch, I input size, H hidden size, G gates.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

import dlcore
from dlcore import nn
from dlcore.device import device_count
from dlcore.ops.rnn import GATES, RNN_CELL, gemm_dtype, rnn_layer

U = 2.0**-11  # float16's unit roundoff: half an ulp, relative
# What each per-step cell method reads (before the step t) and writes (after it).
CELLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "rnn_forward": (("xg", "hg", "h_prev"), ("h_out", "y")),
    "rnn_backward": (("gy", "dh_state", "y"), ("dxg", "dh_direct")),
    "lstm_forward": (("xg", "hg", "h_prev", "c_prev"), ("h_out", "c_out", "y", "gates", "tanh_c")),
    "lstm_backward": (("gy", "dh_state", "dc_state", "gates", "c_prev", "tanh_c"),
                      ("dxg", "dh_direct", "dc_prev")),
    "gru_forward": (("xg", "hg", "b_hn", "h_prev"), ("h_out", "y", "gates", "hn")),
    "gru_backward": (("gy", "dh_state", "gates", "hn", "h_prev"), ("dxg", "dhg", "dh_direct")),
}
CELL_CASES = [(name, False) for name in CELLS] + [("rnn_forward", True), ("rnn_backward", True)]
CELL_IDS = [name + ("-relu" if relu else "") for name, relu in CELL_CASES]
N, H, STEP = 5, 70, 1  # 350 states: two blocks of 256 threads
LENGTHS = np.array([2, 0, 1, 3, 2], np.int32)  # at step 1 sequences 1 and 2 are padding


def _skip_without_gpu(device: str) -> None:
    if device == "cuda" and device_count() == 0:
        pytest.skip("no CUDA device")


def _shape(name: str, arg: str) -> tuple[int, ...]:
    """The shape of argument ``arg`` of cell method ``name``."""
    if arg == "b_hn":
        return (H,)
    G = GATES["rnn_tanh" if name.startswith("rnn") else name.partition("_")[0]]
    return (N, G * H) if arg in ("xg", "hg", "gates", "dxg", "dhg") else (N, H)


def _cell_inputs(name: str, seed: int = 0) -> list[np.ndarray]:
    """Float16 inputs of a cell method: pre-activations and gradients in [-3, 3], saved gates
    in (0, 1), saved tanh values in (-1, 1)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for arg in CELLS[name][0]:
        low, high = (0.01, 0.99) if arg == "gates" else (-1, 1) if arg == "tanh_c" else (-3, 3)
        arrays.append(rng.uniform(low, high, _shape(name, arg)).astype(np.float16))
    return arrays


def _run_cell(device: str, name: str, relu: bool, inputs: list[np.ndarray],
              dtype: Any) -> list[np.ndarray]:
    """One launch (or NumPy call) of the cell method on ``device``; outputs start as NaN, so an
    element left unwritten shows."""
    dev = dlcore.device(device)
    xp = dev.xp
    with dev.use():
        cells = RNN_CELL.select(dev, np.dtype(dtype)).cells(
            dev, np.dtype(dtype), xp.asarray(LENGTHS), relu, N, H, 3)
        args = [xp.asarray(a.astype(dtype)) for a in inputs]
        outs = [xp.full(_shape(name, out), np.nan, dtype) for out in CELLS[name][1]]
        getattr(cells, name)(*args, STEP, *outs)
    return [dev.to_host(o) for o in outs]


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float16 ulps (adjacent float16 values are 1 apart; +0 and -0 are equal)."""
    def ordered(x: np.ndarray) -> np.ndarray:
        bits = x.astype(np.float16).view(np.uint16).astype(np.int64)
        return np.where(bits & 0x8000, -(bits & 0x7FFF), bits)
    return np.abs(ordered(a) - ordered(b))


@pytest.mark.parametrize("name, relu", CELL_CASES, ids=CELL_IDS)
def test_cells_round_once_from_float32(device: str, name: str, relu: bool) -> None:
    """Each float16 output of a cell is the float32 cell's output on the same (widened)
    inputs, rounded to float16 once: the same bits. On emu and cuda the __half kernel against
    the float one (the same code on float registers), on cpu Float16Cells against Cells."""
    inputs = _cell_inputs(name)
    half = _run_cell(device, name, relu, inputs, np.float16)
    wide = _run_cell(device, name, relu, inputs, np.float32)
    for out, h, w in zip(CELLS[name][1], half, wide):
        assert h.dtype == np.float16 and not np.isnan(h).any(), out
        np.testing.assert_array_equal(h, w.astype(np.float16), err_msg=out)


@pytest.mark.parametrize("kernel_device", ["emu", "cuda"])
@pytest.mark.parametrize("name, relu", CELL_CASES, ids=CELL_IDS)
def test_kernel_and_numpy_cells_agree_to_one_ulp(kernel_device: str, name: str,
                                                 relu: bool) -> None:
    """Both round float32 values once, and those differ in their last float32 bits (FMA,
    tanhf), so the float16 results are equal or adjacent."""
    _skip_without_gpu(kernel_device)
    inputs = _cell_inputs(name, seed=1)
    kernel = _run_cell(kernel_device, name, relu, inputs, np.float16)
    numpy = _run_cell("cpu", name, relu, inputs, np.float16)
    for out, a, b in zip(CELLS[name][1], kernel, numpy):
        assert _ulps(a, b).max() <= 1, out


# ---- whole layers ---------------------------------------------------------------------------
def contracting_inputs(mode: str, T: int, N: int, I: int, H: int, seed: int) -> list:
    """Float16 arrays ``(x, h0, c0, w_ih, w_hh, b_ih, b_hh)`` (c0 None unless LSTM) for which
    the layer damps its errors: |x|, |h0|, |c0| <= 1; each row of W_ih at most 1 in absolute
    sum, so |x W_ih^T| <= 1; ||W_hh||_inf <= 1/8; biases within 1/4, except the forget (LSTM)
    and update (GRU) gates', in [-3, -2.5], which keeps those gates below 1/4."""
    rng = np.random.default_rng(seed)
    G = GATES[mode]
    b_ih = rng.uniform(-0.25, 0.25, G * H)
    if mode in ("lstm", "gru"):  # the second gate block: LSTM's f, GRU's z
        b_ih[H:2 * H] = rng.uniform(-3, -2.5, H)
    arrays = [rng.uniform(-1, 1, (T, N, I)), rng.uniform(-1, 1, (N, H)),
              rng.uniform(-1, 1, (N, H)) if mode == "lstm" else None,
              rng.uniform(-1, 1, (G * H, I)) / I, rng.uniform(-1, 1, (G * H, H)) / (8 * H),
              b_ih, rng.uniform(-0.25, 0.25, G * H)]
    return [None if a is None else a.astype(np.float16) for a in arrays]


def _layer(device: str, arrays: list, dtype: Any, mode: str, reverse: bool,
           lengths: Any) -> tuple[list[np.ndarray], int, list[np.dtype]]:
    """Outputs, then the gradients of every input for a fixed float16 projection of the
    outputs as the loss; how many outputs; the dtypes of what forward saved for backward."""
    inputs = [None if a is None else dlcore.tensor(a.astype(dtype), device=device,
                                                   requires_grad=True) for a in arrays]
    out = rnn_layer(*inputs, mode=mode, reverse=reverse, lengths=lengths)
    node = out[0].grad_fn
    saved = [getattr(node, name).dtype for name in ("h_prev", "gates", "c_prev", "tanh_c", "hn",
                                                    "y") if getattr(node, name, None) is not None]
    rng = np.random.default_rng(9)
    loss = sum([(o * dlcore.tensor(rng.uniform(-1, 1, o.shape).astype(np.float16).astype(dtype),
                                   device=device)).float().sum() for o in out])
    grads = dlcore.autograd.grad(loss, [t for t in inputs if t is not None])
    return [o.numpy() for o in out] + [g.numpy() for g in grads], len(out), saved


# Forward: a step moves its state by at most R roundings' worth -- its own, the gates', the
# hidden projection's, and the input projection's (one on cpu and emu, which compute it in
# float32 with the biases folded in; up to three on cuda, whose float16 GEMM result gets the
# two biases added in float16): R <= 6 -- each at most U of a value of the quantity's scale
# (the inputs above keep every stored value within a few units, and every activation's slope
# is at most 1). An error entering at one step is damped by a factor rho <= 1/2 at each later
# one (||W_hh||_inf <= 1/8 bounds the projected part, the forget / update gates below 1/4 the
# carried part), so T steps add up to at most 1 / (1 - rho) = 2 steps' worth: 2 R U = 12 U of
# the quantity's largest value. Backward runs the transposed recurrence, damped alike, with
# its own roundings per step (the state gradients, the gate gradients) on top of the forward
# values it reads: twice that, 24 U. Measured on cpu and emu: at most 1.4 U forward, 3.3 U
# backward.
FORWARD_BOUND, GRADIENT_BOUND = 12 * U, 24 * U
LAYER_CASES = [  # mode, reverse, lengths
    ("rnn_tanh", False, None), ("rnn_relu", True, [8, 3, 5]), ("lstm", False, [8, 3, 5]),
    ("lstm", True, None), ("gru", False, None), ("gru", True, [2, 8, 6])]


@pytest.mark.parametrize("mode, reverse, lengths", LAYER_CASES)
def test_layer_within_float16_bound_of_float32(device: str, mode: str, reverse: bool,
                                               lengths: Any) -> None:
    """8 steps of a float16 layer against the float32 layer (cpu) on the same float16 values:
    outputs within FORWARD_BOUND and every gradient within GRADIENT_BOUND of each quantity's
    largest float32 value; the float16 layer's outputs, saved tensors and gradients are
    float16."""
    arrays = contracting_inputs(mode, 8, 3, 4, 6, seed=3)
    got, n_out, saved = _layer(device, arrays, np.float16, mode, reverse, lengths)
    want, _, _ = _layer("cpu", arrays, np.float32, mode, reverse, lengths)
    assert all(a.dtype == np.float16 for a in got) and set(saved) == {np.dtype(np.float16)}
    for k, (g, w) in enumerate(zip(got, want)):
        bound = (FORWARD_BOUND if k < n_out else GRADIENT_BOUND) * np.abs(w).max()
        error = np.abs(g.astype(np.float64) - w).max()
        assert error <= bound, f"quantity {k}: error {error:.3g} > bound {bound:.3g}"


def test_gemms_run_in_float32_on_numpy_devices_only() -> None:
    """NumPy has no float16 BLAS: cpu and emu widen the layer's GEMMs to float32 (and round
    each result once); CuPy's float16 GEMM is cuBLAS's, with float32 accumulation."""
    assert gemm_dtype(np, np.dtype(np.float16)) == np.float32
    assert gemm_dtype(np, np.dtype(np.float64)) == np.float64
    assert gemm_dtype(object(), np.dtype(np.float16)) == np.float16  # a non-NumPy module


# ---- modules and autocast -------------------------------------------------------------------
def _contracting_module(cls: type, input_size: int, hidden: int, layers: int,
                        bidirectional: bool) -> nn.Module:
    """A float32 module on emu whose parameters are float16 values with the damping of
    :func:`contracting_inputs`, layer by layer."""
    m = cls(input_size, hidden, num_layers=layers, bidirectional=bidirectional)
    mode = "lstm" if cls is nn.LSTM else "gru" if cls is nn.GRU else "rnn_tanh"
    for name, p in m.named_parameters():
        kind, _, suffix = name.partition("_l")
        layer = int(suffix.split("_")[0])
        fan_in = input_size if layer == 0 else hidden * (2 if bidirectional else 1)
        arrays = contracting_inputs(mode, 1, 1, fan_in, hidden, seed=layer + 10 * len(name))
        value = {"weight_ih": arrays[3], "weight_hh": arrays[4], "bias_ih": arrays[5],
                 "bias_hh": arrays[6]}[kind]
        p.array[...] = value.astype(np.float32)
    return m.to("emu")


def _module_run(m: nn.Module, x: np.ndarray, dtype: Any, lengths: list[int]) -> list:
    x_t = dlcore.tensor(x.astype(dtype), device="emu", requires_grad=True)
    y, state = m(x_t, lengths=lengths)
    states = list(state) if isinstance(state, tuple) else [state]
    loss = sum([o.float().sum() * (k + 1) for k, o in enumerate([y, *states])])
    loss.backward()
    return [y, *states, x_t.grad, *(p.grad for p in m.parameters())]


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
def test_module_in_float16_end_to_end(cls: type) -> None:
    """A 2-layer bidirectional module made float16 (``.half()``) on emu, with padded
    sequences: outputs, states and every gradient float16, within twice the layer bounds
    (two layers in series, the second reading the first's output) of the float32 module."""
    m32 = _contracting_module(cls, 3, 5, 2, True)
    m16 = copy.deepcopy(m32).half()
    x = np.random.default_rng(4).uniform(-1, 1, (6, 2, 3)).astype(np.float16)
    got, want = _module_run(m16, x, np.float16, [6, 4]), _module_run(m32, x, np.float32, [6, 4])
    n_out = 3 if cls is nn.LSTM else 2
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == dlcore.float16
        bound = 2 * (FORWARD_BOUND if k < n_out else GRADIENT_BOUND) * np.abs(w.numpy()).max()
        assert np.abs(g.numpy().astype(np.float64) - w.numpy()).max() <= bound, k


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
def test_modules_under_autocast(cls: type) -> None:
    """Under ``dlcore.autocast("emu")`` float32 modules run the float16 kernels: the first
    casts its float32 input and parameters, the second takes the first's float16 output with
    its float32 parameters (PyTorch's rule: no dtype mismatch error inside a region); the
    parameters' gradients come back float32, within twice the layer bounds (the parameters are
    float16 values, so the casts are exact) of a float32 run."""
    first, second = _contracting_module(cls, 3, 5, 1, False), _contracting_module(cls, 5, 5, 1,
                                                                                 False)
    x = dlcore.tensor(np.random.default_rng(5).uniform(-1, 1, (6, 2, 3)).astype(np.float16)
                      .astype(np.float32), device="emu")
    results = []
    for enabled in (True, False):
        for p in [*first.parameters(), *second.parameters()]:
            p.grad = None
        with dlcore.autocast("emu", enabled=enabled):
            y1, _ = first(x)
            y2, _ = second(y1)
        assert y1.dtype == y2.dtype == (dlcore.float16 if enabled else dlcore.float32)
        (y2.float().sum() + y1.float().sum()).backward()
        grads = [p.grad for p in [*first.parameters(), *second.parameters()]]
        assert all(g.dtype == dlcore.float32 for g in grads)
        results.append([y1.numpy(), y2.numpy()] + [g.numpy() for g in grads])
    for k, (g, w) in enumerate(zip(*results)):
        bound = 2 * (FORWARD_BOUND if k < 2 else GRADIENT_BOUND) * np.abs(w).max()
        assert np.abs(g.astype(np.float64) - w).max() <= bound, k


# ---- bfloat16: the __nv_bfloat16 kernels (emu) and the NumPy twin (cpu) ----------------------
# The same storage rule with bfloat16's unit roundoff U_BF16 = 2^-8 (8 significand bits), so
# the derivations above carry over with U_BF16 for U. (cuda: no bfloat16 GEMM in CuPy, so a
# bfloat16 layer raises there; see test_bfloat16_layer_raises_on_cuda in tests/test_bfloat16.py.)
BF16 = np.dtype(dlcore.bfloat16)
U_BF16 = 2.0**-8


@pytest.mark.parametrize("device", ["cpu", "emu"])
@pytest.mark.parametrize("name, relu", CELL_CASES, ids=CELL_IDS)
def test_bfloat16_cells_round_once_from_float32(device: str, name: str, relu: bool) -> None:
    """Each bfloat16 output of a cell is the float32 cell's output on the same (widened)
    inputs rounded to bfloat16 once, bit for bit (ml_dtypes' rounding is the reference)."""
    inputs = [a.astype(BF16) for a in _cell_inputs(name, seed=2)]
    low = _run_cell(device, name, relu, inputs, BF16)
    wide = _run_cell(device, name, relu, inputs, np.float32)
    for out, b, w in zip(CELLS[name][1], low, wide):
        assert b.dtype == BF16 and not np.isnan(b.astype(np.float32)).any(), out
        np.testing.assert_array_equal(b.view(np.uint16), w.astype(BF16).view(np.uint16),
                                      err_msg=out)


@pytest.mark.parametrize("device", ["cpu", "emu"])
@pytest.mark.parametrize("mode, reverse, lengths", LAYER_CASES[::2] + [LAYER_CASES[5]])
def test_layer_within_bfloat16_bound_of_float32(device: str, mode: str, reverse: bool,
                                                lengths: Any) -> None:
    """8 steps of a bfloat16 layer against the float32 layer (cpu) on the same bfloat16
    values, within 12 U_BF16 (outputs) and 24 U_BF16 (gradients) of each quantity's largest
    value (the loss projection's weights are float16 values rounded to bfloat16 on one side:
    half a U_BF16 more, inside the margin); everything stored is bfloat16."""
    arrays = [None if a is None else a.astype(BF16)
              for a in contracting_inputs(mode, 8, 3, 4, 6, seed=3)]
    got, n_out, saved = _layer(device, arrays, BF16, mode, reverse, lengths)
    want, _, _ = _layer("cpu", arrays, np.float32, mode, reverse, lengths)
    assert all(a.dtype == BF16 for a in got) and set(saved) == {BF16}
    worst = 0.0
    for k, (g, w) in enumerate(zip(got, want)):
        bound = (12 if k < n_out else 24) * U_BF16 * np.abs(w).max()
        error = np.abs(g.astype(np.float64) - w).max()
        assert error <= bound, f"quantity {k}: error {error:.3g} > bound {bound:.3g}"
        worst = max(worst, error / np.abs(w).max())
    assert worst > 2.0**-12  # really rounded to bfloat16, not kept in float32
