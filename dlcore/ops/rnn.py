"""Recurrent layers as single autograd nodes: one Function runs a whole layer (one direction)
over all time steps, forward and backward through time.

Why one node: a per-step graph of small ops costs Python overhead per step and op, and a
2,000-step sequence would build tens of thousands of nodes. Here each layer (and direction)
is one :class:`RNNLayerFunction` with outputs ``(y, h_n)`` or ``(y, h_n, c_n)``:

* forward: the input projection of all steps in ONE GEMM (biases folded in), then per step one
  GEMM for the hidden projection and one fused cell update: a CUDA kernel from
  ``kernels/rnn_cell.cu`` on ``cuda`` and ``emu``, the same math as NumPy expressions on ``cpu``
  (the ``_NumpyCells`` methods are the kernels' twins and the tests' oracle for them);
* backward: per step one fused cell backward and one GEMM for the recurrent gradient; the
  weight gradients over all steps in one GEMM each at the end.

Saved for backward, the minimum the math needs: activated gates, the state entering each step
(h, and c for LSTM), tanh(c') for LSTM, ``W_hn h + b_hn`` for GRU, the output y for RNN.

Variable lengths: step ``t`` updates sequence ``n`` only where ``t < lengths[n]``; a padded step
keeps the state, outputs zero and passes gradient straight through. The reverse direction walks
``t = T-1 .. 0`` with the same rule, so each sequence starts at its own last valid step, as
PyTorch's packed sequences do.

Shape letters: T time, N batch, I input size, H hidden size, G gates (RNN 1, LSTM 4, GRU 3).
Gate order is PyTorch's: LSTM (i, f, g, o), GRU (r, z, n).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..autograd import Function, is_grad_enabled
from ..kernels import grid_1d
from ..tensor import Tensor

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def _sigmoid_(a: np.ndarray) -> np.ndarray:
    """In-place sigmoid as 0.5 * (1 + tanh(a / 2)): never overflows, same formula as the kernels."""
    a *= 0.5
    np.tanh(a, out=a)
    a += 1
    a *= 0.5
    return a


class _NumpyCells:
    """Per-step cell math on NumPy arrays (the ``cpu`` path), argument for argument the twin of
    the kernels in ``kernels/rnn_cell.cu``. Outputs are written into the given arrays."""

    def __init__(self, lengths: np.ndarray | None, relu: bool) -> None:
        self.lengths, self.relu = lengths, relu

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


class _KernelCells:
    """The same per-step interface as :class:`_NumpyCells`, launching ``kernels/rnn_cell.cu``
    (``cuda``: CuPy RawModule, ``emu``: the CPU emulator). One thread per (n, j) element."""

    def __init__(self, device: Any, dtype: np.dtype, lengths: Any, relu: bool, N: int,
                 H: int) -> None:
        runner, ctype = device.kernels, _CTYPES[np.dtype(dtype)]
        self._fn = {name: runner.function("rnn_cell.cu", f"{name}<{ctype}>") for name in (
            "rnn_cell_forward", "rnn_cell_backward", "lstm_cell_forward", "lstm_cell_backward",
            "gru_cell_forward", "gru_cell_backward")}
        self.lengths, self.relu = lengths, np.int32(relu)
        self.grid, self.sizes = grid_1d(N * H, 256, max_blocks=65535), (np.int32(N), np.int32(H))

    def _launch(self, name: str, *args: Any) -> None:
        self._fn[name](self.grid, (256,), args + self.sizes)

    def rnn_forward(self, xg: Any, hg: Any, h_prev: Any, t: int, h_out: Any, y: Any) -> None:
        self._launch("rnn_cell_forward", xg, hg, h_prev, self.lengths, np.int32(t), self.relu,
                     h_out, y)

    def rnn_backward(self, gy: Any, dh_state: Any, y: Any, t: int, dxg: Any,
                     dh_direct: Any) -> None:
        self._launch("rnn_cell_backward", gy, dh_state, y, self.lengths, np.int32(t), self.relu,
                     dxg, dh_direct)

    def lstm_forward(self, xg: Any, hg: Any, h_prev: Any, c_prev: Any, t: int, h_out: Any,
                     c_out: Any, y: Any, gates: Any, tanh_c: Any) -> None:
        self._launch("lstm_cell_forward", xg, hg, h_prev, c_prev, self.lengths, np.int32(t),
                     h_out, c_out, y, gates, tanh_c)

    def lstm_backward(self, gy: Any, dh_state: Any, dc_state: Any, gates: Any, c_prev: Any,
                      tanh_c: Any, t: int, dxg: Any, dh_direct: Any, dc_prev: Any) -> None:
        self._launch("lstm_cell_backward", gy, dh_state, dc_state, gates, c_prev, tanh_c,
                     self.lengths, np.int32(t), dxg, dh_direct, dc_prev)

    def gru_forward(self, xg: Any, hg: Any, b_hn: Any, h_prev: Any, t: int, h_out: Any, y: Any,
                    gates: Any, hn: Any) -> None:
        self._launch("gru_cell_forward", xg, hg, b_hn, h_prev, self.lengths, np.int32(t), h_out,
                     y, gates, hn)

    def gru_backward(self, gy: Any, dh_state: Any, gates: Any, hn: Any, h_prev: Any, t: int,
                     dxg: Any, dhg: Any, dh_direct: Any) -> None:
        self._launch("gru_cell_backward", gy, dh_state, gates, hn, h_prev, self.lengths,
                     np.int32(t), dxg, dhg, dh_direct)


class RNNLayerFunction(Function):
    """One layer, one direction, all time steps. Inputs ``(x, h0[, c0], w_ih, w_hh[, b_ih,
    b_hh])`` with x (T, N, I), h0 and c0 (N, H), w_ih (G*H, I), w_hh (G*H, H), biases (G*H,);
    outputs ``(y, h_n[, c_n])`` with y (T, N, H). Options: ``mode`` (a key of ``GATES``),
    ``reverse``, ``lengths`` (an int32 array of the device, or None: all steps valid)."""

    save_inputs = True

    def forward(self, x: Any, h0: Any, *rest: Any, mode: str, reverse: bool,
                lengths: Any) -> tuple:
        xp = self.device.xp
        lstm, gru = mode == "lstm", mode == "gru"
        params = rest[1:] if lstm else rest
        w_ih, w_hh = params[0], params[1]
        T, N, _ = x.shape
        H, GH = h0.shape[1], w_hh.shape[0]
        dtype = x.dtype
        self.mode, self.lstm, self.gru = mode, lstm, gru
        self.order = range(T - 1, -1, -1) if reverse else range(T)
        self.cells = self._cells(lengths, N, H, dtype)

        # the input projection of every step in one GEMM, with the biases folded in (GRU keeps
        # b_hn apart: the reset gate multiplies W_hn h + b_hn)
        xg = (x.reshape(T * N, -1) @ w_ih.T).reshape(T, N, GH)
        b_hn = xp.zeros(H, dtype) if gru else None
        if len(params) == 4:
            b_ih, b_hh = params[2], params[3]
            xg += b_ih
            if gru:
                xg[:, :, :2 * H] += b_hh[:2 * H]
                b_hn = xp.ascontiguousarray(b_hh[2 * H:])
            else:
                xg += b_hh

        # h_prev[t] (and c_prev[t]): the state entering the step at time t; the new state goes
        # straight into the slot of the next step to run, or into h_n after the last one.
        h_prev = xp.empty((T, N, H), dtype)
        h_prev[self.order[0]] = h0
        h_n = xp.empty((N, H), dtype)
        y = xp.empty((T, N, H), dtype)
        hg = xp.empty((N, GH), dtype)
        w_hh_t = w_hh.T
        gates = xp.empty((T, N, GH), dtype) if mode in ("lstm", "gru") else None
        if lstm:
            c_prev, c_n, tanh_c = (xp.empty((T, N, H), dtype), xp.empty((N, H), dtype),
                                   xp.empty((T, N, H), dtype))
            c_prev[self.order[0]] = rest[0]
        if gru:
            hn = xp.empty((T, N, H), dtype)
        cells = self.cells
        for k, t in enumerate(self.order):
            last = k == T - 1
            h_out = h_n if last else h_prev[self.order[k + 1]]
            xp.matmul(h_prev[t], w_hh_t, out=hg)
            if lstm:
                c_out = c_n if last else c_prev[self.order[k + 1]]
                cells.lstm_forward(xg[t], hg, h_prev[t], c_prev[t], t, h_out, c_out, y[t],
                                   gates[t], tanh_c[t])
            elif gru:
                cells.gru_forward(xg[t], hg, b_hn, h_prev[t], t, h_out, y[t], gates[t], hn[t])
            else:
                cells.rnn_forward(xg[t], hg, h_prev[t], t, h_out, y[t])
        self.h_prev, self.gates = h_prev, gates
        if lstm:
            self.c_prev, self.tanh_c = c_prev, tanh_c
            return y, h_n, c_n
        if gru:
            self.hn = hn
        else:
            self.y = y
        return y, h_n

    def _free(self) -> None:
        super()._free()
        self.h_prev = self.gates = self.c_prev = self.tanh_c = self.hn = self.y = None

    def _cells(self, lengths: Any, N: int, H: int, dtype: np.dtype) -> Any:
        relu = self.mode == "rnn_relu"
        if self.device.kernels is None:
            return _NumpyCells(lengths, relu)
        if lengths is None:
            lengths = self.device.xp.full(N, len(self.order), dtype=np.int32)
        return _KernelCells(self.device, dtype, lengths, relu, N, H)

    def backward(self, gy: Tensor | None, gh_n: Tensor | None,
                 gc_n: Tensor | None = None) -> tuple:
        if is_grad_enabled():
            raise RuntimeError("RNNLayerFunction: double backward (create_graph=True) through "
                               "a fused recurrent layer is not supported")
        xp = self.device.xp
        saved = self.saved_tensors
        k = 3 if self.lstm else 2  # position of w_ih among the inputs
        x, w_ih, w_hh = saved[0].data, saved[k].data, saved[k + 1].data
        T, N, H = self.h_prev.shape
        GH, dtype = w_hh.shape[0], x.dtype

        def grad_array(g: Tensor | None, shape: tuple) -> Any:
            return xp.zeros(shape, dtype) if g is None else xp.ascontiguousarray(g.data, dtype)

        gy_a = grad_array(gy, (T, N, H))
        dh = grad_array(gh_n, (N, H)).copy()
        dc = grad_array(gc_n, (N, H)).copy() if self.lstm else None
        dxg = xp.empty((T, N, GH), dtype)
        dhg = xp.empty((T, N, GH), dtype) if self.gru else dxg  # RNN, LSTM: the same values
        dh_direct, dh_next = xp.empty((N, H), dtype), xp.empty((N, H), dtype)
        dc_next = xp.empty((N, H), dtype) if self.lstm else None
        cells = self.cells
        for t in reversed(self.order):
            if self.lstm:
                cells.lstm_backward(gy_a[t], dh, dc, self.gates[t], self.c_prev[t],
                                    self.tanh_c[t], t, dxg[t], dh_direct, dc_next)
                dc, dc_next = dc_next, dc
            elif self.gru:
                cells.gru_backward(gy_a[t], dh, self.gates[t], self.hn[t], self.h_prev[t], t,
                                   dxg[t], dhg[t], dh_direct)
            else:
                cells.rnn_backward(gy_a[t], dh, self.y[t], t, dxg[t], dh_direct)
            xp.matmul(dhg[t], w_hh, out=dh_next)
            dh_next += dh_direct
            dh, dh_next = dh_next, dh

        # weight gradients over all steps: one GEMM each
        need = self.needs_input_grad
        dxg2, dhg2 = dxg.reshape(T * N, GH), dhg.reshape(T * N, GH)
        grads: list[Any] = [None] * len(need)
        if need[0]:
            grads[0] = (dxg2 @ w_ih).reshape(x.shape)
        grads[1] = dh
        if self.lstm:
            grads[2] = dc
        if need[k]:
            grads[k] = dxg2.T @ x.reshape(T * N, -1)
        if need[k + 1]:
            grads[k + 1] = dhg2.T @ self.h_prev.reshape(T * N, H)
        if len(need) > k + 2:
            grads[k + 2] = dxg2.sum(0)
            grads[k + 3] = dhg2.sum(0)
        return tuple(None if g is None or not n else Tensor._make(g, self.device)
                     for g, n in zip(grads, need))


def rnn_layer(input: Tensor, h0: Tensor, c0: Tensor | None, w_ih: Tensor,
              w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, mode: str,
              reverse: bool = False, lengths: Any = None) -> tuple[Tensor, ...]:
    """Run one recurrent layer in one direction over a (T, N, I) sequence.

    ``mode`` is ``"rnn_tanh"``, ``"rnn_relu"``, ``"lstm"`` (needs ``c0``) or ``"gru"``; weights
    in PyTorch's layout. ``lengths`` (N ints, each in 1..T) marks padded steps. Returns
    ``(y, h_n)``, or ``(y, h_n, c_n)`` for LSTM. Inputs are assumed valid (``dlcore.nn``'s
    layers check them).

    >>> x, h0 = dlcore.ones(5, 2, 3), dlcore.zeros(2, 4)
    >>> y, h_n = rnn_layer(x, h0, None, dlcore.ones(12, 3), dlcore.ones(12, 4), None, None, "gru")
    >>> tuple(y.shape), tuple(h_n.shape)
    ((5, 2, 4), (2, 4))
    """
    tensors = [input, h0] + ([c0] if mode == "lstm" else []) + [w_ih, w_hh]
    if b_ih is not None:
        tensors += [b_ih, b_hh]
    if lengths is not None:
        lengths = input.device.xp.asarray(
            lengths.numpy() if isinstance(lengths, Tensor) else lengths, dtype=np.int32)
    return RNNLayerFunction.apply(*tensors, mode=mode, reverse=reverse, lengths=lengths)
