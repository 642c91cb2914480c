"""Recurrent cells on the CPU: the per-step cell math of :mod:`dlcore.ops.rnn` as NumPy
expressions, argument for argument the twin of the kernels in ``kernels/rnn_cell.cu`` (and
the oracle they are tested against).

Shape letters: N batch, H hidden size; gates in PyTorch's order, LSTM (i, f, g, o), GRU
(r, z, n). Every method takes its input arrays, then the step ``t``, then the arrays it writes.

float16 is computed as the kernels compute ``__half`` (:class:`Float16Cells`): inputs widened to
float32, the float32 cell math, each output rounded to float16 once. NumPy's float16 ufuncs
would instead round after every operation (the sigmoid alone is four of them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from . import blas_cpu


def _sigmoid_(a: np.ndarray) -> np.ndarray:
    """In-place sigmoid as 0.5 * (1 + tanh(a / 2)): never overflows, same formula as the kernels."""
    a *= 0.5
    np.tanh(a, out=a)
    a += 1
    a *= 0.5
    return a


class Cells:
    """Per-step cell math on NumPy arrays (the ``cpu`` path). ``lengths`` (N int32, or None:
    every step valid) marks padded steps; ``relu`` picks the RNN nonlinearity."""

    def __init__(self, device: Any, dtype: np.dtype, lengths: np.ndarray | None, relu: bool,
                 N: int, H: int, T: int) -> None:
        self.lengths, self.relu = lengths, relu
        # the whole-layer LSTM path below applies (no padded steps, no float16 rounding)
        self.fused = lengths is None and type(self) is Cells

    def _valid(self, t: int) -> np.ndarray | None:
        return None if self.lengths is None else (t < self.lengths)[:, None]

    @staticmethod
    def _commit(valid: np.ndarray | None, new: np.ndarray, prev: np.ndarray, out: np.ndarray,
                y: np.ndarray | None = None) -> None:
        """State update and output with padded steps masked (state kept, output zero)."""
        if valid is None:
            out[...] = new
            if y is not None:
                y[...] = new
            return
        np.copyto(out, np.where(valid, new, prev))
        if y is not None:
            np.copyto(y, np.where(valid, new, 0))

    def _upstream(self, t: int, dh_state: np.ndarray, gy: np.ndarray,
                  dh_direct: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Gradient reaching this step's new h (zero at padded steps), and the pass-through of
        padded steps into ``dh_direct``."""
        valid = self._valid(t)
        dh = dh_state + gy
        if valid is None:
            dh_direct.fill(0)
            return dh, None
        np.copyto(dh_direct, np.where(valid, 0, dh_state))
        return np.where(valid, dh, 0), valid

    def rnn_forward(self, xg: np.ndarray, hg: np.ndarray, h_prev: np.ndarray, t: int,
                    h_out: np.ndarray, y: np.ndarray) -> None:
        a = xg + hg
        h = np.maximum(a, 0, out=a) if self.relu else np.tanh(a, out=a)
        self._commit(self._valid(t), h, h_prev, h_out, y)

    def rnn_backward(self, gy: np.ndarray, dh_state: np.ndarray, y: np.ndarray, t: int,
                     dxg: np.ndarray, dh_direct: np.ndarray) -> None:
        dh, _ = self._upstream(t, dh_state, gy, dh_direct)
        if self.relu:
            np.multiply(dh, y > 0, out=dxg)
        else:
            np.multiply(dh, 1 - y * y, out=dxg)

    def lstm_forward(self, xg: np.ndarray, hg: np.ndarray, h_prev: np.ndarray,
                     c_prev: np.ndarray, t: int, h_out: np.ndarray, c_out: np.ndarray,
                     y: np.ndarray, gates: np.ndarray, tanh_c: np.ndarray) -> None:
        H = h_prev.shape[1]
        np.add(xg, hg, out=gates)
        _sigmoid_(gates[:, :2 * H])
        np.tanh(gates[:, 2 * H:3 * H], out=gates[:, 2 * H:3 * H])
        _sigmoid_(gates[:, 3 * H:])
        i, f, g, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
        c = f * c_prev
        c += i * g
        np.tanh(c, out=tanh_c)
        valid = self._valid(t)
        self._commit(valid, o * tanh_c, h_prev, h_out, y)
        self._commit(valid, c, c_prev, c_out)

    def lstm_backward(self, gy: np.ndarray, dh_state: np.ndarray, dc_state: np.ndarray,
                      gates: np.ndarray, c_prev: np.ndarray, tanh_c: np.ndarray, t: int,
                      dxg: np.ndarray, dh_direct: np.ndarray, dc_prev: np.ndarray) -> None:
        H = c_prev.shape[1]
        i, f, g, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
        dh, valid = self._upstream(t, dh_state, gy, dh_direct)
        dc = dc_state + dh * o * (1 - tanh_c * tanh_c)
        if valid is not None:
            dc = np.where(valid, dc, 0)
        np.multiply(dc * g, i * (1 - i), out=dxg[:, :H])
        np.multiply(dc * c_prev, f * (1 - f), out=dxg[:, H:2 * H])
        np.multiply(dc * i, 1 - g * g, out=dxg[:, 2 * H:3 * H])
        np.multiply(dh * tanh_c, o * (1 - o), out=dxg[:, 3 * H:])
        np.multiply(dc, f, out=dc_prev)
        if valid is not None:
            np.copyto(dc_prev, dc_state, where=~valid)

    def gru_forward(self, xg: np.ndarray, hg: np.ndarray, b_hn: np.ndarray,
                    h_prev: np.ndarray, t: int, h_out: np.ndarray, y: np.ndarray,
                    gates: np.ndarray, hn: np.ndarray) -> None:
        H = h_prev.shape[1]
        np.add(xg[:, :2 * H], hg[:, :2 * H], out=gates[:, :2 * H])
        _sigmoid_(gates[:, :2 * H])
        r, z, n = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:]
        np.add(hg[:, 2 * H:], b_hn, out=hn)
        np.multiply(r, hn, out=n)
        n += xg[:, 2 * H:]
        np.tanh(n, out=n)
        h = h_prev - n
        h *= z
        h += n  # (1 - z) n + z h_prev
        self._commit(self._valid(t), h, h_prev, h_out, y)

    def gru_backward(self, gy: np.ndarray, dh_state: np.ndarray, gates: np.ndarray,
                     hn: np.ndarray, h_prev: np.ndarray, t: int, dxg: np.ndarray,
                     dhg: np.ndarray, dh_direct: np.ndarray) -> None:
        H = h_prev.shape[1]
        r, z, n = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:]
        dh, _ = self._upstream(t, dh_state, gy, dh_direct)
        dan = dh * (1 - z) * (1 - n * n)
        np.multiply(dan * hn, r * (1 - r), out=dxg[:, :H])
        np.multiply(dh * (h_prev - n), z * (1 - z), out=dxg[:, H:2 * H])
        dxg[:, 2 * H:] = dan
        dhg[:, :2 * H] = dxg[:, :2 * H]
        np.multiply(dan, r, out=dhg[:, 2 * H:])
        dh_direct += dh * z


def _in_float32(method: Callable[..., None]) -> Callable[..., None]:
    """``method`` on float16 arrays: its inputs (the arrays before the step ``t``) widened to
    float32, exactly; its outputs (the arrays after ``t``) computed into float32 arrays and
    rounded into the float16 ones once. A state a padded step keeps goes through float32 and
    back unchanged."""
    @functools.wraps(method)
    def run(self: Cells, *args: Any) -> None:
        at = next(i for i, a in enumerate(args) if isinstance(a, int))  # the step t
        inputs = [a.astype(np.float32) for a in args[:at]]
        outputs = [np.empty(a.shape, np.float32) for a in args[at + 1:]]
        method(self, *inputs, args[at], *outputs)
        for half, wide in zip(args[at + 1:], outputs):
            np.copyto(half, wide, casting="same_kind")
    return run


class Float16Cells(Cells):
    """The cells on float16 arrays, computed in float32 with one rounding per stored value:
    the twin of the ``__half`` kernels."""

    rnn_forward = _in_float32(Cells.rnn_forward)
    rnn_backward = _in_float32(Cells.rnn_backward)
    lstm_forward = _in_float32(Cells.lstm_forward)
    lstm_backward = _in_float32(Cells.lstm_backward)
    gru_forward = _in_float32(Cells.gru_forward)
    gru_backward = _in_float32(Cells.gru_backward)


def cells(device: Any, dtype: np.dtype, lengths: np.ndarray | None, relu: bool, N: int, H: int,
          T: int) -> Cells:
    """The per-step cells of a layer on ``dtype`` arrays (see :class:`Cells`)."""
    kind = Float16Cells if dtype == np.float16 or dtype == ml_dtypes.bfloat16 else Cells
    return kind(device, dtype, lengths, relu, N, H, T)


# ---- a whole LSTM layer on the CPU, fused (float32/float64, no lengths) --------------------
#
# The per-step methods above are the kernels' oracle and keep their contracts; these run the
# same math over all steps of one layer with fewer, larger NumPy calls, for the ``cpu`` path
# only (:mod:`dlcore.ops.rnn` takes them when ``Cells.fused`` holds and the mode is LSTM).
# Measured on a 2-core VM (H=256, N=4, T=50): per step one GEMM plus 8 in-place ufuncs
# forward and 6 backward, against about 25 calls with temporaries through the per-step path.

# The per-step GEMMs of small batches ran faster in the other orientation, W h^T, for
# large H (OpenBLAS 0.3.31, one thread of a 2-core VM, min of interleaved runs, per step):
# forward H=1024 N=4 1.72 ms against 2.07, N=16 2.09 against 2.37, N=64 no gain; backward
# H=512 N=4 0.39 ms against 0.50, N=16 0.51 against 0.67, H=1024 N=4 1.65 against 2.13, and
# no loss elsewhere at H >= 512. At H=256 the plain orientation was as fast or faster.
# Below H=1024 the plain orientation goes through blas_cpu.matmul_into, which splits the
# product into OpenBLAS small-path blocks where that applies (batch 2-16 at H=256, 2-4 at
# H=512); there the split beat the flip (2026-12-02, one thread, other core busy, us per
# step): backward H=512 N=2 144 against 238, N=4 237 against 285; forward H=512 N=4 130
# against 264. At H=1024 the flip stays (backward N=2 1.90 ms against 2.33 split).
FORWARD_FLIP_MIN_H, FORWARD_FLIP_MAX_N, BACKWARD_FLIP_MIN_H = 1024, 16, 512
BACKWARD_SPLIT_MAX_H = 512
# the backward's block of steps (see lstm_layer_backward), in bytes of gates
BACKWARD_BLOCK_BYTES = 1 << 19


def lstm_gate_scale(H: int, dtype: np.dtype) -> np.ndarray:
    """(4H,) factors folded into the pre-activations of the fused path: 1/2 for the sigmoid
    gates (i, f, o), 1 for g, so one tanh over all gates gives tanh(a/2) for i, f, o
    (sigmoid(a) = 0.5 tanh(a/2) + 0.5) and tanh(a) for g. A power of two scales every
    rounding of the GEMM and the sums exactly, so the gates are those of ``lstm_forward``."""
    s = np.full(4 * H, 0.5, dtype)
    s[2 * H:3 * H] = 1
    return s


def lstm_layer_forward(gates: np.ndarray, w_hh_t: np.ndarray, h0: np.ndarray,
                       c0: np.ndarray, order: range, y: np.ndarray, h_prev: np.ndarray,
                       c_prev: np.ndarray, c_n: np.ndarray, tanh_c: np.ndarray) -> None:
    """All steps of one LSTM layer, in the order ``order`` (time indices).

    ``gates`` (T, N, 4H), on entry the input projection with both biases, pre-multiplied by
    :func:`lstm_gate_scale`; ``w_hh_t`` (H, 4H), ``W_hh^T`` pre-multiplied the same way, any
    layout (the transpose view of a C-contiguous scaled W_hh is copied only when the plain
    orientation runs). On exit ``gates`` holds the activated gates (i, f, g, o), ``y`` (T, N, H) the
    outputs, ``h_prev``/``c_prev`` (T, N, H) the state entering each step, ``c_n`` the final
    cell state and ``tanh_c`` tanh of each step's new cell state: what ``lstm_forward`` would
    save step by step. The final hidden state is ``y[order[-1]]``."""
    T, N, GH = gates.shape
    H = GH // 4
    dtype = gates.dtype
    scale = lstm_gate_scale(H, dtype)
    shift = np.full(GH, 0.5, dtype)
    shift[2 * H:3 * H] = 0
    ig = np.empty((N, H), dtype)
    h, c = h0, c0
    c_prev[order[0]] = c0
    # packed column blocks of W_hh^T where OpenBLAS's small path takes them (see
    # blas_cpu.PACK_WIDTH); else the flipped product at H >= 1024, else matmul_into's plan
    pack = blas_cpu.pack_plan(N, H, GH, dtype)
    packed = blas_cpu.PackedColumns(w_hh_t, pack) if pack else None
    flip = not packed and H >= FORWARD_FLIP_MIN_H and 1 < N <= FORWARD_FLIP_MAX_N  # N=1: GEMV
    w = (w_hh_t if packed else np.ascontiguousarray(w_hh_t.T) if flip  # (unused if packed)
         else blas_cpu.transposed(w_hh_t.T))
    hg = np.empty((GH, N) if flip else (N, GH), dtype)
    for k, t in enumerate(order):
        a = gates[t]
        if packed:
            packed.matmul_into(h, hg)
            a += hg
        elif flip:  # (W h^T)^T
            np.matmul(w, h.T, out=hg)
            a += hg.T
        else:
            blas_cpu.matmul_into(h, w, hg)
            a += hg
        np.tanh(a, out=a)
        a *= scale  # 0.5 tanh(a/2) + 0.5 = sigmoid(a) for i, f, o; g unchanged
        a += shift
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        c_new = c_n if k == T - 1 else c_prev[order[k + 1]]
        np.multiply(f, c, out=c_new)
        np.multiply(i, g, out=ig)
        c_new += ig
        np.tanh(c_new, out=tanh_c[t])
        h = np.multiply(o, tanh_c[t], out=y[t])
        c = c_new
    # the state entering each step: h0, then the previous step's output
    h_prev[order[0]] = h0
    if T > 1:
        if order.step > 0:
            h_prev[1:] = y[:-1]
        else:
            h_prev[:-1] = y[1:]


def lstm_layer_backward(gy: np.ndarray, dh: np.ndarray, dc: np.ndarray, gates: np.ndarray,
                        c_prev: np.ndarray, tanh_c: np.ndarray, w_hh: np.ndarray,
                        order: range, dxg: np.ndarray) -> None:
    """Backward through all steps of :func:`lstm_layer_forward`, last step first.

    ``gy`` (T, N, H) the gradient of the outputs; ``dh``, ``dc`` (N, H) on entry the gradients
    of the final state, on exit those of h0 and c0 (both overwritten in place); ``gates``,
    ``c_prev``, ``tanh_c`` as the forward saved them; ``w_hh`` (4H, H). Writes ``dxg``
    (T, N, 4H), the gradient of each step's gate pre-activations (the same for the input and
    the recurrent projection). Everything that does not depend on the recurrence (the gates'
    derivatives, times the factors they meet) is computed for all steps at once first; per
    step then remain six elementwise calls and the GEMM ``dxg[t] @ W_hh``."""
    T, N, GH = gates.shape
    H = GH // 4
    # the gates' derivatives as alpha + s (beta - s): s(1-s) for i, f, o and 1-g^2 for g
    alpha = np.zeros(GH, gates.dtype)
    alpha[2 * H:3 * H] = 1
    beta = 1 - alpha
    # Blocks of steps whose gates take about 512 KiB: the factors are computed for a block at
    # once, then its steps run while the block is still in cache (one pass over the whole
    # (T, N, 4H) arrays first was memory-bound: at N=64, H=256 it cost as much as the GEMMs).
    block = max(1, BACKWARD_BLOCK_BYTES // max(1, N * GH * gates.itemsize))  # N may be 0
    r_buf = np.empty((min(block, T), N, H), gates.dtype)
    tmp = np.empty_like(dh)
    pack = blas_cpu.pack_plan(N, GH, H, gates.dtype)
    packed = blas_cpu.PackedColumns(w_hh, pack) if pack else None
    split = H <= BACKWARD_SPLIT_MAX_H and blas_cpu.split_columns(dxg[0], w_hh) > 0
    flip = not packed and H >= BACKWARD_FLIP_MIN_H and N > 1 and not split
    # flipped: W_hh^T as a view; BLAS reads it transposed in place, as fast as a C-ordered
    # copy and with the same bits (2026-12-04: H=1024, N=4 and 16), without the 30 ms copy
    w = w_hh.T if flip else w_hh
    dh_t = np.empty((H, N) if flip else (0, 0), gates.dtype)
    steps = list(reversed(order))
    for s in range(0, T, block):
        ts = steps[s:s + block]
        lo, hi = min(ts), max(ts) + 1
        G, D = gates[lo:hi], dxg[lo:hi]
        i, f, g, o = G[..., :H], G[..., H:2 * H], G[..., 2 * H:3 * H], G[..., 3 * H:]
        # dxg = [dc g i(1-i), dc c_prev f(1-f), dc i (1-g^2), dh tanh_c o(1-o)]: the factors
        # of dc and dh first
        np.subtract(beta, G, out=D)
        D *= G
        D += alpha
        D[..., :H] *= g
        D[..., H:2 * H] *= c_prev[lo:hi]
        D[..., 2 * H:3 * H] *= i
        D[..., 3 * H:] *= tanh_c[lo:hi]
        # dc gets dh o (1 - tanh_c^2)
        r = r_buf[:hi - lo]
        np.multiply(tanh_c[lo:hi], tanh_c[lo:hi], out=r)
        np.subtract(1, r, out=r)
        r *= o
        d3 = D.reshape(hi - lo, N, 4, H)
        for t in ts:
            k = t - lo
            dh += gy[t]
            np.multiply(dh, r[k], out=tmp)
            dc += tmp
            d3[k, :, :3] *= dc[:, None, :]
            d3[k, :, 3] *= dh
            dc *= f[k]
            if packed:
                packed.matmul_into(dxg[t], dh)
            elif flip:  # (W_hh^T dxg^T)^T
                np.matmul(w, dxg[t].T, out=dh_t)
                np.copyto(dh, dh_t.T)
            else:
                blas_cpu.matmul_into(dxg[t], w, dh)
