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
