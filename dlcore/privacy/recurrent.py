"""Per-sample gradients of recurrent layers (RNN, LSTM, GRU and their cells).

A recurrent layer applies the same weights at every step, so a sample's gradient is a sum
over time of per-step products: with ``gi_t = x_t W_ih^T + b_ih`` and ``gh_t = h_{t-1}
W_hh^T + b_hh`` (the gate pre-activations, G*H wide),

    W_ih_n = sum_t dgi_{t,n}^T x_{t,n},   W_hh_n = sum_t dgh_{t,n}^T h_{t-1,n},
    b_ih_n = sum_t dgi_{t,n},             b_hh_n = sum_t dgh_{t,n}.

Why an unrolled forward: dlcore's fused layer (:func:`dlcore.ops.rnn.rnn_layer`) is one
autograd node for all steps, and the gate gradients ``dgi``, ``dgh`` exist only inside its
backward, never as tensors a caller can ask for. So while per-sample gradients are captured
(:class:`~dlcore.privacy.grad_sample.Capture`), a recurrent module's ``forward`` is swapped
for the same math written step by step in dlcore ops over the module's own parameters (the
cell-by-cell formulation with shared weights, as Opacus's DPLSTM does): ``gi`` for all steps
in one GEMM, then per step ``gh_t`` and the cell update, with PyTorch's gate order (LSTM i, f,
g, o; GRU r, z, n with ``r * (W_hn h + b_hn)``). The gradients of ``gi`` and of every ``gh_t``
come out of the one batched backward pass, and the products above are batched over samples
and steps. The cost is a per-step graph (Python overhead per step), paid only by private
training; ``lengths`` (padded steps inert), stacked layers, dropout between them and both
directions behave as the fused layer's.

Shape letters: T time, N batch, I input size, H hidden size, G*H gate width.
"""

from __future__ import annotations

import functools
from typing import Any

from .. import nn
from ..creation import zeros
from ..nn import functional as F
from ..ops import cat, sigmoid, stack, tanh
from ..tensor import Tensor

SUPPORTED = (nn.RNNBase, nn.RNNCellBase)


def _cell(mode: str, gi: Tensor, gh: Tensor, h: Tensor, c: Tensor | None
          ) -> tuple[Tensor, Tensor | None]:
    """One step from the two pre-activations: the new (h, c)."""
    H = h.shape[-1]
    if mode == "lstm":
        g = gi + gh
        i, f = sigmoid(g[:, :H]), sigmoid(g[:, H:2 * H])
        cand, o = tanh(g[:, 2 * H:3 * H]), sigmoid(g[:, 3 * H:])
        c_new = f * c + i * cand
        return o * tanh(c_new), c_new
    if mode == "gru":
        r = sigmoid(gi[:, :H] + gh[:, :H])
        z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        n = tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        return (1 - z) * n + z * h, None
    pre = gi + gh
    return (F.relu(pre) if mode == "rnn_relu" else tanh(pre)), None


def _run_direction(module: Any, capture: Any, x: Tensor, h: Tensor, c: Tensor | None,
                   weights: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
                   names: list[str], reverse: bool, mask: Tensor | None
                   ) -> tuple[Tensor, Tensor, Tensor | None]:
    """One layer, one direction over x (T, N, I): (y (T, N, H), h_n, c_n), with the record
    of its pre-activations added to ``capture``."""
    from .grad_sample import Record

    w_ih, w_hh, b_ih, b_hh = weights
    T = x.shape[0]
    gi = F.linear(x, w_ih, b_ih)  # (T, N, G*H): every step's input projection at once
    capture.track(gi)
    order = range(T - 1, -1, -1) if reverse else range(T)
    ys: list[Any] = [None] * T
    h_prev: list[Any] = [None] * T
    ghs: list[Any] = [None] * T
    for t in order:
        h_prev[t] = h._data
        ghs[t] = F.linear(h, w_hh, b_hh)
        capture.track(ghs[t])
        h_new, c_new = _cell(module.mode, gi[t], ghs[t], h, c)
        if mask is None:
            h, c, ys[t] = h_new, c_new, h_new
        else:  # padded steps keep the state, output zero, pass no gradient to the gates
            m = mask[t]
            h = m * h_new + (1 - m) * h
            if c is not None and c_new is not None:
                c = m * c_new + (1 - m) * c
            ys[t] = m * h_new
    xp = x._device.xp
    if gi.requires_grad:  # under no_grad (evaluation) there is nothing to record
        capture.add(Record(module, _rule, (x._data, xp.stack(h_prev), names),
                           [gi] + ghs))
    return stack(ys), h, c


def _rule(module: Any, saved: Any, grads: list[Any]) -> dict[str, Any]:
    x, h_prev, names = saved
    xp = _xp(x)
    dgi, dgh = grads[0], xp.stack(grads[1:])  # (T, N, G*H) each
    out = {names[0]: dgi.transpose(1, 2, 0) @ x.transpose(1, 0, 2),
           names[1]: dgh.transpose(1, 2, 0) @ h_prev.transpose(1, 0, 2)}
    if len(names) == 4:
        out[names[2]] = dgi.sum(axis=0)
        out[names[3]] = dgh.sum(axis=0)
    return out


def _xp(array: Any) -> Any:
    from ..device import device_of_array
    return device_of_array(array).xp


def _layer_forward(module: nn.RNNBase, capture: Any, input: Tensor, hx: Any = None,
                   lengths: Any = None) -> tuple[Tensor, Any]:
    """:meth:`nn.RNNBase.forward`, unrolled (same arguments, results and checks)."""
    owner = type(module).__name__
    if input.ndim not in (2, 3):
        raise ValueError(f"{owner}: expected input of 2 (unbatched) or 3 dims, got shape "
                         f"{tuple(input.shape)}")
    batched = input.ndim == 3
    x = input if batched else input.unsqueeze(1)
    if batched and module.batch_first:
        x = x.transpose(0, 1)
    T, N, features = x.shape
    if features != module.input_size:
        raise RuntimeError(f"{owner}: input has {features} features, expected "
                           f"{module.input_size} (input shape {tuple(input.shape)})")
    mask = None
    if lengths is not None:
        steps = module._check_lengths(lengths, T, N)
        valid = (x._device.xp.arange(T)[:, None] < x._device.xp.asarray(steps)[None, :])
        mask = Tensor._make(valid.astype(x.dtype)[:, :, None], x._device)
    states = module._initial_states(hx, x, batched)
    lstm, directions = module.mode == "lstm", 2 if module.bidirectional else 1
    h_n, c_n = [], []
    for layer in range(module.num_layers):
        outputs = []
        for d in range(directions):
            index = layer * directions + d
            y, h, c = _run_direction(module, capture, x, states[0][index],
                                     states[1][index] if lstm else None,
                                     module._layer_weights(index),
                                     module._weight_names[index], d == 1, mask)
            outputs.append(y)
            h_n.append(h)
            if c is not None:
                c_n.append(c)
        x = outputs[0] if directions == 1 else cat(outputs, dim=2)
        if layer < module.num_layers - 1:
            x = F.dropout(x, module.dropout, module.training)
    final = [stack(h_n)] + ([stack(c_n)] if lstm else [])
    if not batched:
        x, final = x.squeeze(1), [s.squeeze(1) for s in final]
    elif module.batch_first:
        x = x.transpose(0, 1)
    return x, (final[0], final[1]) if lstm else final[0]


def _cell_forward(module: nn.RNNCellBase, capture: Any, input: Tensor,
                  hx: Any = None) -> Any:
    """A cell's forward, unrolled: (I,) or (N, I) input; h' (and c' for LSTMCell)."""
    batched = input.ndim == 2
    x = input if batched else input.unsqueeze(0)
    lstm = module.mode == "lstm"
    shape = (x.shape[0], module.hidden_size)
    if hx is None:
        states = [zeros(*shape, dtype=x.dtype, device=x.device)] * (2 if lstm else 1)
    else:
        states = list(hx) if lstm else [hx]
        if not batched:
            states = [s.unsqueeze(0) for s in states]
    names = [n for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
             if module._parameters.get(n) is not None]
    weights = (module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh)
    _, h, c = _run_direction(module, capture, x.unsqueeze(0), states[0],
                             states[1] if lstm else None, weights, names, False, None)
    out = [o for o in (h, c) if o is not None]
    if not batched:
        out = [o.squeeze(0) for o in out]
    return (out[0], out[1]) if lstm else out[0]


def swap_forward(module: Any, capture: Any) -> None:
    """Run ``module`` unrolled, recording into ``capture``, until :func:`restore_forward`."""
    fn = _layer_forward if isinstance(module, nn.RNNBase) else _cell_forward
    object.__setattr__(module, "forward", functools.partial(fn, module, capture))


def restore_forward(module: Any) -> None:
    module.__dict__.pop("forward", None)
