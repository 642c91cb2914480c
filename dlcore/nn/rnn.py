"""Recurrent layers: RNN, LSTM, GRU and their single-step cells, with PyTorch's constructor
arguments, parameter names and shapes, gate order and default initialisation, so a PyTorch
``state_dict`` loads one to one.

Each layer (and direction) runs as one fused autograd node (:func:`dlcore.ops.rnn.rnn_layer`):
one GEMM for the input projection of all steps, per step one GEMM plus one fused cell update,
and backward through time in the same shape. The cells use the same op with one time step,
so a cell and a one-step layer compute bit-identical results. They take float16, float32 and
float64; under ``dlcore.autocast`` they run in the region's low dtype (the op casts), so their
input and states may then differ from the parameters' dtype, as in PyTorch.

Shape letters: T time, N batch, I input size, H hidden size, L layers, D directions (1 or 2).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..creation import empty, zeros
from ..device import Device
from ..dtypes import DTypeLike
from ..ops import cat, stack
from ..ops.rnn import GATES, rnn_layer
from ..precision import is_autocast_enabled
from ..tensor import Tensor
from . import functional as F
from . import init
from .module import Module
from .parameter import Parameter

_NONLINEARITIES = {"tanh": "rnn_tanh", "relu": "rnn_relu"}


def _rnn_mode(nonlinearity: str, owner: str) -> str:
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(f"{owner}: unknown nonlinearity {nonlinearity!r}; expected 'tanh' or "
                         "'relu'")
    return _NONLINEARITIES[nonlinearity]


_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def _check_float_like(owner: str, x: Tensor, weight: Tensor) -> None:
    if x.dtype != weight.dtype and not is_autocast_enabled(x.device.type):
        raise RuntimeError(f"{owner}: input dtype {x.dtype} does not match the parameters' "
                           f"dtype {weight.dtype}")
    if x.dtype not in _FLOAT_DTYPES:
        raise RuntimeError(f"{owner}: expected float16, float32 or float64 input, got {x.dtype}")


def _check_shape(owner: str, what: str, t: Tensor, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != expected:
        raise RuntimeError(f"{owner}: expected {what} of shape {expected}, got "
                           f"{tuple(t.shape)}")


# ---- cells ---------------------------------------------------------------------------------
class RNNCellBase(Module):
    """Shared parameters of the cells: weight_ih (G*H, I), weight_hh (G*H, H), bias_ih and
    bias_hh (G*H,), all initialised U(-1/sqrt(H), 1/sqrt(H)) as in PyTorch."""

    mode = "rnn_tanh"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device: str | Device | None = None, dtype: DTypeLike = None) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        gh = GATES[self.mode] * hidden_size
        self.weight_ih = Parameter(empty(gh, input_size, device=device, dtype=dtype))
        self.weight_hh = Parameter(empty(gh, hidden_size, device=device, dtype=dtype))
        if bias:
            self.bias_ih = Parameter(empty(gh, device=device, dtype=dtype))
            self.bias_hh = Parameter(empty(gh, device=device, dtype=dtype))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for p in self.parameters():
            init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.mode == "rnn_relu":
            s += ", nonlinearity='relu'"
        return s

    def _step(self, input: Tensor, hx: Any) -> tuple[Tensor, ...]:
        """One step through the fused layer op; accepts (I,) or (N, I) input and states."""
        owner = type(self).__name__
        if input.ndim not in (1, 2):
            raise ValueError(f"{owner}: expected input of 1 or 2 dims, got shape "
                             f"{tuple(input.shape)}")
        _check_float_like(owner, input, self.weight_ih)
        batched = input.ndim == 2
        x = input if batched else input.unsqueeze(0)
        if x.shape[1] != self.input_size:
            raise RuntimeError(f"{owner}: input has {x.shape[1]} features, expected "
                               f"{self.input_size} (input shape {tuple(input.shape)})")
        state_shape = (x.shape[0], self.hidden_size) if batched else (self.hidden_size,)
        lstm = self.mode == "lstm"
        if hx is None:
            states = [zeros(*state_shape, dtype=x.dtype, device=x.device)] * (2 if lstm else 1)
        else:
            states = list(hx) if lstm else [hx]
        for name, s in zip(("hx", "cx"), states):
            _check_shape(owner, name, s, state_shape)
        if not batched:
            states = [s.unsqueeze(0) for s in states]
        out = rnn_layer(x.unsqueeze(0), states[0], states[1] if lstm else None, self.weight_ih,
                        self.weight_hh, self.bias_ih, self.bias_hh, self.mode)[1:]
        return out if batched else tuple(o.squeeze(0) for o in out)


class RNNCell(RNNCellBase):
    """Elman cell ``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``, act tanh or relu.

    >>> RNNCell(3, 4)(dlcore.ones(2, 3)).shape
    (2, 4)
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device: str | Device | None = None,
                 dtype: DTypeLike = None) -> None:
        self.nonlinearity = nonlinearity
        self.mode = _rnn_mode(nonlinearity, "RNNCell")
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self._step(input, hx)[0]


class LSTMCell(RNNCellBase):
    """LSTM cell, gates (input, forget, cell, output); returns ``(h', c')``.

    >>> h, c = LSTMCell(3, 4)(dlcore.ones(2, 3))
    >>> h.shape, c.shape
    ((2, 4), (2, 4))
    """

    mode = "lstm"

    def forward(self, input: Tensor,
                hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        h, c = self._step(input, hx)
        return h, c


class GRUCell(RNNCellBase):
    """GRU cell, gates (reset, update, new); the reset gate multiplies ``W_hn h + b_hn`` as in
    PyTorch.

    >>> GRUCell(3, 4)(dlcore.ones(3)).shape
    (4,)
    """

    mode = "gru"

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self._step(input, hx)[0]


# ---- multi-layer sequence layers -----------------------------------------------------------
class RNNBase(Module):
    """Stacked, optionally bidirectional recurrent layers over whole sequences.

    Parameters per layer k and direction: ``weight_ih_l{k}`` (G*H, I or D*H), ``weight_hh_l{k}``
    (G*H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (G*H,), with suffix ``_reverse`` for the
    backward direction, initialised U(-1/sqrt(H), 1/sqrt(H)).

    ``forward(input, hx=None, lengths=None)``: input (T, N, I), (N, T, I) with ``batch_first``,
    or unbatched (T, I). ``lengths`` (N ints in 1..T) makes padded steps inert: they neither
    update the state nor receive gradient, their outputs are zero, ``h_n`` is each sequence's
    state at its last valid step and the reverse direction starts there, as with PyTorch's
    packed sequences (the output keeps all T steps instead of being cut to ``max(lengths)``).
    """

    mode = "rnn_tanh"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device: str | Device | None = None,
                 dtype: DTypeLike = None) -> None:
        super().__init__()
        owner = type(self).__name__
        if not 0.0 <= dropout <= 1.0 or isinstance(dropout, bool):
            raise ValueError(f"{owner}: dropout should be a number in [0, 1], got {dropout!r}")
        if hidden_size <= 0 or num_layers <= 0:
            raise ValueError(f"{owner}: hidden_size and num_layers must be positive, got "
                             f"{hidden_size} and {num_layers}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{owner}: dropout={dropout} has no effect with num_layers=1 (it "
                          "applies between layers)", stacklevel=2)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = bidirectional
        gh, directions = GATES[self.mode] * hidden_size, 2 if bidirectional else 1
        self._weight_names: list[list[str]] = []
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * directions
            for suffix in ("", "_reverse")[:directions]:
                shapes: dict[str, tuple[int, ...]] = {"weight_ih": (gh, layer_in),
                                                      "weight_hh": (gh, hidden_size)}
                if bias:
                    shapes.update(bias_ih=(gh,), bias_hh=(gh,))
                names = []
                for kind, shape in shapes.items():
                    name = f"{kind}_l{layer}{suffix}"
                    setattr(self, name, Parameter(empty(*shape, device=device, dtype=dtype)))
                    names.append(name)
                self._weight_names.append(names)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        if self.mode == "rnn_relu":
            s += ", nonlinearity='relu'"
        return s

    def _layer_weights(self, index: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """weight_ih, weight_hh, bias_ih, bias_hh of layer-and-direction ``index``."""
        w = [getattr(self, n) for n in self._weight_names[index]]
        return (w[0], w[1], w[2], w[3]) if self.bias else (w[0], w[1], None, None)

    def _check_lengths(self, lengths: Any, T: int, N: int) -> np.ndarray:
        owner = type(self).__name__
        arr = np.asarray(lengths.tolist() if isinstance(lengths, Tensor) else lengths)
        if arr.shape != (N,) or arr.dtype.kind not in "iu":
            raise ValueError(f"{owner}: lengths must be {N} integers (one per sequence), got "
                             f"shape {arr.shape} and dtype {arr.dtype}")
        if arr.min() < 1 or arr.max() > T:
            raise ValueError(f"{owner}: lengths must lie in 1..{T} (the sequence length), got "
                             f"{arr.tolist()}")
        return arr.astype(np.int32)

    def flatten_parameters(self) -> None:
        """PyTorch compacts cuDNN's weight buffer here; dlcore's layers need no such step, so
        this is a no-op kept for ported code."""

    def forward(self, input: Tensor, hx: Tensor | tuple[Tensor, Tensor] | None = None,
                lengths: Tensor | Sequence[int] | np.ndarray | None = None
                ) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
        owner = type(self).__name__
        if input.ndim not in (2, 3):
            raise ValueError(f"{owner}: expected input of 2 (unbatched) or 3 dims, got shape "
                             f"{tuple(input.shape)}")
        _check_float_like(owner, input, self.weight_ih_l0)
        batched = input.ndim == 3
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        T, N, features = x.shape
        if T == 0:  # PyTorch refuses it too; a zero batch (N == 0) gives empty outputs
            raise RuntimeError(f"{owner}: expected a sequence length above 0, got input of "
                               f"shape {tuple(input.shape)}")
        if features != self.input_size:
            raise RuntimeError(f"{owner}: input has {features} features, expected "
                               f"{self.input_size} (input shape {tuple(input.shape)})")
        if lengths is not None:
            lengths = self._check_lengths(lengths, T, N)
        states = self._initial_states(hx, x, batched)
        lstm, directions = self.mode == "lstm", 2 if self.bidirectional else 1
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for d in range(directions):
                index = layer * directions + d
                w_ih, w_hh, b_ih, b_hh = self._layer_weights(index)
                res = rnn_layer(x, states[0][index], states[1][index] if lstm else None,
                                w_ih, w_hh, b_ih, b_hh, mode=self.mode, reverse=d == 1,
                                lengths=lengths)
                outputs.append(res[0])
                h_n.append(res[1])
                if lstm:
                    c_n.append(res[2])
            x = outputs[0] if directions == 1 else cat(outputs, dim=2)
            if layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, self.training)
        final = [stack(h_n)] + ([stack(c_n)] if lstm else [])
        if not batched:
            x, final = x.squeeze(1), [s.squeeze(1) for s in final]
        elif self.batch_first:
            x = x.transpose(0, 1)
        return x, (final[0], final[1]) if lstm else final[0]

    def _initial_states(self, hx: Any, x: Tensor, batched: bool) -> list[Tensor]:
        """h0 (and c0) as (L*D, N, H) tensors: zeros when ``hx`` is None, else validated."""
        owner = type(self).__name__
        lstm = self.mode == "lstm"
        LD = self.num_layers * (2 if self.bidirectional else 1)
        shape = (LD, x.shape[1], self.hidden_size)
        if hx is None:
            return [zeros(*shape, dtype=x.dtype, device=x.device)] * (2 if lstm else 1)
        if lstm and not (isinstance(hx, tuple | list) and len(hx) == 2):
            raise TypeError(f"{owner}: hx must be a tuple (h_0, c_0)")
        states = list(hx) if lstm else [hx]
        want = shape if batched else (LD, self.hidden_size)
        for name, s in zip(("h_0", "c_0"), states):
            _check_shape(owner, name, s, want)
            if s.dtype != x.dtype and not is_autocast_enabled(x.device.type):
                raise RuntimeError(f"{owner}: {name} dtype {s.dtype} does not match the "
                                   f"input's {x.dtype}")
        return states if batched else [s.unsqueeze(1) for s in states]


class RNN(RNNBase):
    """Elman RNN, ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)`` per layer; returns
    ``(output, h_n)`` with output (T, N, D*H) and h_n (L*D, N, H).

    >>> out, h_n = RNN(3, 4, num_layers=2)(dlcore.ones(5, 2, 3))
    >>> out.shape, h_n.shape
    ((5, 2, 4), (2, 2, 4))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False,
                 device: str | Device | None = None, dtype: DTypeLike = None) -> None:
        self.nonlinearity = nonlinearity
        self.mode = _rnn_mode(nonlinearity, "RNN")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype)


class LSTM(RNNBase):
    """LSTM, gates (input, forget, cell, output); returns ``(output, (h_n, c_n))``.

    >>> out, (h_n, c_n) = LSTM(3, 4, bidirectional=True)(dlcore.ones(5, 2, 3))
    >>> out.shape, c_n.shape
    ((5, 2, 8), (2, 2, 4))
    """

    mode = "lstm"


class GRU(RNNBase):
    """GRU, gates (reset, update, new) with the reset gate applied to ``W_hn h + b_hn``;
    returns ``(output, h_n)``.

    >>> out, h_n = GRU(3, 4, batch_first=True)(dlcore.ones(2, 5, 3))
    >>> out.shape
    (2, 5, 4)
    """

    mode = "gru"
