"""``dlcore check``: every kernel-backed operation on a device (``cuda``, or ``emu`` to run
the same kernels on the CPU emulator) against the NumPy path of the ``cpu`` device.

Each case builds small random float32 inputs from a fixed seed, runs forward and a
backward with a random upstream gradient (or three optimizer steps) on both devices and
compares every output and gradient: ``|device - cpu| <= atol + rtol * |cpu|``. The
tolerances allow float32 summation order (the kernels accumulate in another order than
BLAS) and nothing more. Exit status 1 when any comparison fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import optim
from ..creation import from_numpy
from ..device import Device
from ..nn.parameter import Parameter
from ..ops.conv import conv2d, conv_transpose2d
from ..ops.pool import avg_pool2d, max_pool2d
from ..ops.rnn import GATES, rnn_layer
from ..tensor import Tensor

RTOL, ATOL = 1e-4, 1e-5
Case = Callable[[Device], dict[str, np.ndarray]]


def _inputs(device: Device, seed: int, *shapes: tuple[int, ...]) -> list[Tensor]:
    """Seeded random tensors (the same numbers on every device) that require grad."""
    rng = np.random.default_rng(seed)
    return [from_numpy(rng.standard_normal(s).astype(np.float32)).to(device).requires_grad_()
            for s in shapes]


def _forward_backward(device: Device, seed: int, shapes: list[tuple[int, ...]],
                      op: Callable[..., Tensor], names: list[str]) -> dict[str, np.ndarray]:
    """``op(*inputs)``, then backward with a seeded upstream gradient; outputs by name."""
    inputs = _inputs(device, seed, *shapes)
    out = op(*inputs)
    upstream = np.random.default_rng(seed + 1).standard_normal(out.shape).astype(np.float32)
    out.backward(from_numpy(upstream).to(device))
    result = {"forward": out.numpy()}
    result.update({f"grad {n}": t.grad.numpy() for n, t in zip(names, inputs)})
    return result


def _conv(stride: int, padding: int, dilation: int, groups: int) -> Case:
    def case(device: Device) -> dict[str, np.ndarray]:
        return _forward_backward(
            device, 0, [(2, 4, 9, 9), (6, 4 // groups, 3, 3), (6,)],
            lambda x, w, b: conv2d(x, w, b, stride, padding, dilation, groups),
            ["input", "weight", "bias"])
    return case


def _conv_transpose(device: Device) -> dict[str, np.ndarray]:
    return _forward_backward(device, 1, [(2, 4, 5, 5), (4, 3, 4, 4), (3,)],
                             lambda x, w, b: conv_transpose2d(x, w, b, stride=2, padding=1),
                             ["input", "weight", "bias"])


def _pool(op: Callable[..., Tensor], **kwargs: Any) -> Case:
    def case(device: Device) -> dict[str, np.ndarray]:
        return _forward_backward(device, 2, [(2, 3, 9, 9)], lambda x: op(x, **kwargs),
                                 ["input"])
    return case


def _rnn(mode: str, reverse: bool = False, lengths: list[int] | None = None) -> Case:
    T, N, I, H = 6, 3, 4, 5
    g = GATES[mode] * H

    def case(device: Device) -> dict[str, np.ndarray]:
        shapes = [(T, N, I), (N, H), (g, I), (g, H), (g,), (g,)]
        names = ["input", "h0", "w_ih", "w_hh", "b_ih", "b_hh"]
        if mode == "lstm":
            shapes.insert(2, (N, H))
            names.insert(2, "c0")

        def op(x: Tensor, h0: Tensor, *rest: Tensor) -> Tensor:
            c0, weights = (rest[0], rest[1:]) if mode == "lstm" else (None, rest)
            outs = rnn_layer(x, h0, c0, *weights, mode=mode, reverse=reverse,
                             lengths=lengths)
            return outs[0] * 1.0 + outs[1].sum() + (outs[2].sum() if mode == "lstm" else 0.0)

        return _forward_backward(device, 3, shapes, op, names)
    return case


def _optimizer(name: str, **options: Any) -> Case:
    def case(device: Device) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(4)
        params = [Parameter(from_numpy(rng.standard_normal(s).astype(np.float32)).to(device))
                  for s in ((7, 5), (5,), (300,))]
        opt = getattr(optim, name)(params, **options)
        for _ in range(3):
            for p in params:
                p.grad = from_numpy(rng.standard_normal(p.shape).astype(np.float32)).to(device)
            opt.step()
        return {f"param {i}": p.numpy() for i, p in enumerate(params)}
    return case


CASES: dict[str, Case] = {
    "conv2d 3x3 pad 1": _conv(1, 1, 1, 1),
    "conv2d stride 2 dilation 2 groups 2": _conv(2, 2, 2, 2),
    "conv_transpose2d 4x4 stride 2": _conv_transpose,
    "max_pool2d 3x3 stride 2 pad 1": _pool(max_pool2d, kernel_size=3, stride=2, padding=1),
    "avg_pool2d 2x2": _pool(avg_pool2d, kernel_size=2),
    "rnn tanh cell": _rnn("rnn_tanh"),
    "rnn relu cell, reverse": _rnn("rnn_relu", reverse=True),
    "lstm cell": _rnn("lstm"),
    "lstm cell, lengths": _rnn("lstm", lengths=[6, 3, 1]),
    "gru cell": _rnn("gru"),
    "gru cell, reverse, lengths": _rnn("gru", reverse=True, lengths=[2, 6, 4]),
    "sgd momentum nesterov step": _optimizer("SGD", lr=0.1, momentum=0.9, nesterov=True,
                                             weight_decay=1e-2),
    "adam step": _optimizer("Adam", lr=1e-2),
    "adamw amsgrad step": _optimizer("AdamW", lr=1e-2, amsgrad=True),
    "rmsprop centered momentum step": _optimizer("RMSprop", lr=1e-2, momentum=0.9,
                                                 centered=True),
    "adagrad step": _optimizer("Adagrad", lr=1e-1),
}


def run_checks(device: Device) -> list[dict[str, Any]]:
    """One row per case and compared quantity: ``case``, ``quantity``, ``max_abs_error``,
    ``ok`` (a case that raises is one failed row with the error)."""
    rows = []
    for name, case in CASES.items():
        try:
            got, want = case(device), case(Device("cpu"))
        except Exception as exc:  # report and go on: one broken kernel must not hide others
            rows.append({"case": name, "quantity": "error", "max_abs_error": float("nan"),
                         "ok": False, "error": f"{type(exc).__name__}: {exc}"})
            continue
        for quantity, expected in want.items():
            actual = got[quantity]
            error = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
            ok = actual.shape == expected.shape and bool(
                np.allclose(actual, expected, rtol=RTOL, atol=ATOL))
            rows.append({"case": name, "quantity": quantity, "max_abs_error": error, "ok": ok})
    return rows
