"""Recurrent cells on a kernel device: launches ``kernels/rnn_cell.cu`` on ``cuda`` (CuPy
RawModule) or ``emu`` (the CPU emulator), with the per-step interface of
:class:`dlcore.ops.rnn_cpu.Cells`. One thread per (n, j) element of the (N, H) state. float16
arrays run the ``__half`` kernels (arithmetic in float, one rounding per stored value).
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from ..kernels import ctype, grid_1d

SOURCE = "rnn_cell.cu"
KERNEL_DTYPES = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32),
                 np.dtype(np.float64))
ENTRY_POINTS = ("rnn_cell_forward", "rnn_cell_backward", "lstm_cell_forward",
                "lstm_cell_backward", "gru_cell_forward", "gru_cell_backward")


class Cells:
    """The per-step interface of :class:`dlcore.ops.rnn_cpu.Cells` as kernel launches; the
    kernels always read ``lengths`` (all ``T`` when None)."""

    def __init__(self, device: Any, dtype: np.dtype, lengths: Any, relu: bool, N: int, H: int,
                 T: int) -> None:
        elem = ctype(dtype)
        self._fn = {name: device.kernels.function(SOURCE, f"{name}<{elem}>")
                    for name in ENTRY_POINTS}
        if lengths is None:
            lengths = device.xp.full(N, T, dtype=np.int32)
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


def cells(device: Any, dtype: np.dtype, lengths: Any, relu: bool, N: int, H: int,
          T: int) -> Cells:
    """The per-step cells of a layer on ``dtype`` arrays (every dtype: the kernels' own)."""
    return Cells(device, dtype, lengths, relu, N, H, T)
