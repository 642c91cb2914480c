"""Anomaly detection for autograd: PyTorch's ``torch.autograd.detect_anomaly``.

In anomaly mode every op records, as it runs forward, where it was created (the Python stack
at that moment), and backward checks each node's gradients: a node that returns a NaN or
infinite gradient raises a RuntimeError naming the op and the line of the user's code that
created it::

    with dlcore.autograd.detect_anomaly():
        loss = model(x).sqrt().sum()
        loss.backward()  # RuntimeError: SqrtBackward returned nan values in its 0th output
                         # ... created at File "train.py", line 12: loss = model(x)...

``check_forward=True`` (a dlcore extension) also checks every op's forward output and names
the first op whose output is not finite; it is off by default because some programs make
infinities on purpose (``-inf`` attention masks, an ``inf`` initial minimum). The mode is
global (as in PyTorch), not per thread, and costs a stack capture per op: for debugging only.
Off, the ops pay one ``is not None`` check (``dlcore.autograd._anomaly``).

Inside a CUDA-graph capture nothing is checked: the arrays then hold no values yet.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import autograd
from .dtypes import bfloat16

STACK_LIMIT = 64  # frames kept per op: enough to reach the user's code from deep models

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
# dlcore's own op machinery: frames here are never "the line that created the op"
_MACHINERY = tuple(_PACKAGE + p for p in ("ops" + os.sep, "nn" + os.sep, "tensor.py",
                                          "autograd.py", "anomaly.py", "creation.py",
                                          "precision.py"))


class _AnomalyMode:
    """The settings of anomaly mode while it is on (``autograd._anomaly``)."""

    def __init__(self, check_nan: bool, check_forward: bool) -> None:
        self.check_nan, self.check_forward = check_nan, check_forward

    def forward(self, fn: autograd.Function, inputs: Sequence[Any], out: Any) -> None:
        """Called by ``Function.apply`` after ``fn``'s forward computed ``out``."""
        if _capturing():
            return
        # frame 0 is this method, 1 is Function.apply: the op's caller is frame 2
        stack = traceback.StackSummary.extract(traceback.walk_stack(sys._getframe(2)),
                                               limit=STACK_LIMIT, lookup_lines=False)
        stack.reverse()  # oldest first, as tracebacks print
        fn._forward_trace = stack
        if not (self.check_forward and self.check_nan):
            return
        outs = out if type(out) is tuple else (out,)
        for i, o in enumerate(outs):
            bad = _nonfinite(fn.device, o)
            if bad:
                upstream = [j for j, t in enumerate(inputs) if _nonfinite(t._device, t._data)]
                note = (f"; its input {upstream[0]} already held non-finite values (a leaf "
                        "or the data, or an op run before anomaly mode was on)"
                        if upstream else "")
                raise RuntimeError(f"{fn.name()} returned {bad} values in its {i}th output "
                                   f"(forward check of detect_anomaly){note}.\n"
                                   + describe(fn))

    def backward(self, node: autograd.Function, in_grads: Sequence[Any]) -> None:
        """Called by the backward engine with the gradients ``node.backward`` returned."""
        if not self.check_nan or _capturing():
            return
        for i, g in enumerate(in_grads):
            bad = None if g is None else _nonfinite(g._device, g._data)
            if bad:
                raise RuntimeError(f"{node.name()}Backward returned {bad} values in its {i}th "
                                   f"output (the gradient of its input {i}).\n"
                                   + describe(node))


def _capturing() -> bool:
    from . import graphs  # at call time: graphs imports autograd, which imports this module

    return graphs.is_current_stream_capturing()


def _nonfinite(device: Any, array: Any) -> str | None:
    """``"nan"``, ``"inf"`` or None (finite, or not a floating-point array)."""
    dtype = getattr(array, "dtype", None)
    if dtype is None:
        return None
    if dtype == bfloat16:
        array = array.astype(np.float32)
    elif dtype.kind not in "fc":  # integers, bools; bfloat16 on cuda is uint16 words
        return None
    xp = device.xp
    if bool(xp.isnan(array).any()):
        return "nan"
    if bool(xp.isinf(array).any()):
        return "inf"
    return None


def _user_frame(stack: traceback.StackSummary) -> traceback.FrameSummary | None:
    """The innermost frame outside dlcore, else the innermost outside its op machinery
    (a model's forward in dlcore.models, a trainer's step)."""
    for outside in (lambda f: not f.startswith(_PACKAGE),
                    lambda f: not f.startswith(_MACHINERY)):
        for frame in reversed(stack):
            if outside(os.path.abspath(frame.filename)):
                return frame
    return None


def describe(fn: autograd.Function) -> str:
    """Where ``fn`` was created, as the error messages of anomaly mode show it."""
    stack = fn._forward_trace
    if stack is None:
        return (f"{fn.name()} was created outside anomaly mode, so where is not known: run "
                "the forward pass under detect_anomaly() too")
    frame = _user_frame(stack)
    where = ("" if frame is None else
             f"{fn.name()} was created at {frame.filename}:{frame.lineno}, in {frame.name}: "
             f"{(frame.line or '').strip()}\n")
    return (where + "Traceback of the forward call that created it (most recent call last):\n"
            + "".join(traceback.format_list(stack)).rstrip())


def _set(mode: bool, check_nan: bool, check_forward: bool) -> Any:
    previous = autograd._anomaly
    autograd._anomaly = _AnomalyMode(check_nan, check_forward) if mode else None
    return previous


class detect_anomaly:
    """Context manager and decorator turning anomaly mode on (see the module's docstring).

    >>> x = dlcore.tensor([-1.0], requires_grad=True)
    >>> with detect_anomaly():
    ...     x.sqrt().sum().backward()  # doctest: +SKIP
    Traceback (most recent call last):
    RuntimeError: SqrtBackward returned nan values in its 0th output ...
    """

    def __init__(self, check_nan: bool = True, check_forward: bool = False) -> None:
        self.check_nan, self.check_forward = bool(check_nan), bool(check_forward)

    def __enter__(self) -> None:
        self.previous = _set(True, self.check_nan, self.check_forward)

    def __exit__(self, *exc: object) -> None:
        autograd._anomaly = self.previous

    def __call__(self, fn: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with detect_anomaly(self.check_nan, self.check_forward):
                return fn(*args, **kwargs)

        wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
        wrapper.__name__ = getattr(fn, "__name__", "wrapper")
        wrapper.__doc__ = fn.__doc__
        return wrapper


class set_detect_anomaly:
    """Anomaly mode on or off; as PyTorch's, it takes effect on construction (a plain call
    sets it) and, used as a context manager, restores the previous mode on exit."""

    def __init__(self, mode: bool, check_nan: bool = True, check_forward: bool = False) -> None:
        self.previous = _set(bool(mode), bool(check_nan), bool(check_forward))

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        autograd._anomaly = self.previous


def is_anomaly_enabled() -> bool:
    return autograd._anomaly is not None


def is_anomaly_check_nan_enabled() -> bool:
    mode = autograd._anomaly
    return mode is not None and mode.check_nan
