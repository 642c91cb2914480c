"""Reverse-mode automatic differentiation.

The graph is built while operations run (define-by-run). Every differentiable operation
is a :class:`Function` subclass: ``forward`` works on raw arrays, ``backward`` receives the
gradient of the output as a :class:`~dlcore.Tensor` and returns one gradient (Tensor or
``None``) per input, written with dlcore operations so that ``create_graph=True`` gives
differentiable gradients (second derivatives) for free.

A node points at the nodes that produced its inputs through ``next_functions``: edges
``(node, output_index)``. Leaves that require grad get an :class:`AccumulateGrad` node.
Nodes hold arrays, never their own output Tensors, so no reference cycles keep
activations alive; a saved output is re-materialised as a Tensor attached to its node
when backward needs it.

Backward is iterative (no recursion): dependencies are counted over the reachable graph,
then nodes run in topological order, so a chain of 100,000 operations is fine.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .tensor import Tensor


class _GradMode(threading.local):
    enabled = True


_mode = _GradMode()


def is_grad_enabled() -> bool:
    return _mode.enabled


def _decorate(fn: Callable, mode: bool) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        prev = _mode.enabled
        _mode.enabled = mode
        try:
            return fn(*args, **kwargs)
        finally:
            _mode.enabled = prev

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    wrapper.__name__ = getattr(fn, "__name__", "wrapper")
    wrapper.__doc__ = fn.__doc__
    return wrapper


class _ModeContext:
    """Sets gradient recording for a ``with`` block, or for every call of a decorated
    function."""

    mode = True

    def __enter__(self) -> None:
        self.prev = _mode.enabled
        _mode.enabled = self.mode

    def __exit__(self, *exc: object) -> None:
        _mode.enabled = self.prev

    def __call__(self, fn: Callable) -> Callable:
        return _decorate(fn, self.mode)


class set_grad_enabled(_ModeContext):
    """Context manager and decorator that sets gradient recording on or off. Like
    PyTorch's, it takes effect on construction, so a plain call works as a setter."""

    def __init__(self, mode: bool) -> None:
        self.mode = bool(mode)
        self.prev = _mode.enabled
        _mode.enabled = self.mode

    def __enter__(self) -> None:
        return None

    def __call__(self, fn: Callable) -> Callable:
        _mode.enabled = self.prev  # the decorator form must not change the mode now
        return _decorate(fn, self.mode)


class no_grad(_ModeContext):
    """Disable gradient recording: ``with dlcore.no_grad(): ...`` or ``@dlcore.no_grad()``."""

    mode = False


class inference_mode(_ModeContext):
    """PyTorch's ``inference_mode``: no gradient recording (dlcore's ``no_grad``; dlcore has
    no separate inference tensors). ``inference_mode(False)`` leaves the mode as it is."""

    def __init__(self, mode: bool = True) -> None:
        self.active = bool(mode)

    def __enter__(self) -> None:
        self.prev = _mode.enabled
        if self.active:
            _mode.enabled = False

    def __call__(self, fn: Callable) -> Callable:
        return _decorate(fn, False) if self.active else fn


class enable_grad(_ModeContext):
    """Enable gradient recording inside a ``no_grad`` region."""

    mode = True


class Function:
    """Base class of differentiable operations.

    Subclasses implement ``forward(self, *arrays, **options) -> array | tuple[array, ...]``
    and ``backward(self, *grad_outputs) -> tuple[Tensor | None, ...]``. Class attributes
    say what backward needs: ``save_inputs`` (save all input Tensors, version-checked) and
    ``save_output`` (keep the output array, version-checked). Anything else backward needs
    (shapes, masks) is stored on ``self`` by ``forward``; a forward that keeps an output
    array that way sets ``self.guard_outputs = True``, so that an in-place change of the
    output is caught at backward as for ``save_output``.
    """

    save_inputs = False
    save_output = False
    guard_outputs = False
    num_outputs = 1
    differentiable_outputs: tuple[int, ...] | None = None  # None: all outputs

    # set by apply() only when the result requires grad
    next_functions: tuple[tuple[Any, int] | None, ...] = ()
    needs_input_grad: tuple[bool, ...] = ()
    device: Any = None
    _saved: tuple | None = None
    _versions: tuple[int, ...] = ()
    _out_arrays: Any = None
    _out_versions: tuple[list[int], ...] = ()  # the outputs' version counters, saved at 0
    _freed = False
    _forward_trace: Any = None  # anomaly mode: the stack that created the op (dlcore.anomaly)

    @classmethod
    def apply(cls, *inputs: Tensor, **options: Any) -> Any:
        # NOTE: the hot path of every op; kept free of generators and imports.
        x0 = inputs[0]
        dev = x0._device
        fn = cls.__new__(cls)
        fn.device = dev
        cap = _capture
        if cap is not None and cap.recording(dev):  # a CUDA graph capture on emu
            out = _forward_captured(cap, fn, inputs, options)
            requires = any([t._requires_grad for t in inputs])
        elif len(inputs) == 1:
            out = fn.forward(x0._data, **options)
            requires = x0._requires_grad
        else:
            requires = False
            arrays = []
            for t in inputs:
                if t._device is not dev:
                    _raise_device_mismatch(cls, inputs)
                requires = requires or t._requires_grad
                arrays.append(t._data)
            out = fn.forward(*arrays, **options)
        dev = fn.device  # forward may set it: outputs live where forward put them
        make = tensor.Tensor._make
        if isinstance(out, np.generic):  # NumPy reductions return scalars, not 0-d arrays
            out = np.asarray(out)
        elif type(out) is tuple:
            out = tuple([np.asarray(o) if isinstance(o, np.generic) else o for o in out])
        if _anomaly is not None:  # anomaly mode: record where, check the output
            _anomaly.forward(fn, inputs, out)
        if not (requires and _mode.enabled):
            if type(out) is tuple:
                return tuple([make(o, dev) for o in out])
            return make(out, dev)
        fn.needs_input_grad = tuple([t._requires_grad for t in inputs])
        fn.next_functions = tuple([t._edge() if t._requires_grad else None for t in inputs])
        if cls.save_inputs:
            fn._saved = inputs
            fn._versions = tuple([t._version[0] for t in inputs])
        guard = cls.save_output or fn.guard_outputs
        if cls.save_output:
            fn._out_arrays = out
        if type(out) is tuple:
            fn.num_outputs = len(out)
            diff = cls.differentiable_outputs
            outs = tuple([make(o, dev, fn, i) if diff is None or i in diff else make(o, dev)
                          for i, o in enumerate(out)])
            if guard:
                fn._out_versions = tuple([t._version for t in outs])
            return outs
        result = make(out, dev, fn, 0)
        if guard:
            fn._out_versions = (result._version,)
        return result

    if TYPE_CHECKING:
        # NOTE: each op states its own signatures (its arrays and options in forward, one
        # gradient per output in backward); the base class constrains neither.
        forward: Callable[..., Any]
        backward: Callable[..., Any]
    else:
        def forward(self, *arrays: Any, **options: Any) -> Any:
            raise NotImplementedError(f"{type(self).__name__}.forward")

        def backward(self, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
            raise RuntimeError(f"{type(self).__name__} is not differentiable")

    @property
    def saved_tensors(self) -> tuple[Tensor, ...]:
        if self._freed:
            _raise_freed(self)
        saved = self._saved or ()
        for t, v in zip(saved, self._versions):
            if t._version[0] != v:
                raise RuntimeError(
                    f"{type(self).__name__}: one of the tensors needed for gradient computation "
                    f"(shape {tuple(t.shape)}) was modified by an in-place operation after it "
                    f"was used (version {t._version[0]}, expected {v})")
        return saved

    def _check_outputs(self) -> None:
        """Raise if an output this node keeps for backward was changed in place since."""
        for i, version in enumerate(self._out_versions):
            if version[0] != 0:
                raise RuntimeError(
                    f"{type(self).__name__}: one of the tensors needed for gradient computation "
                    f"(output {i} of this op) was modified by an in-place operation after it "
                    f"was produced (version {version[0]}, expected 0); clone() it before "
                    "changing it in place")

    def output(self, index: int = 0) -> Tensor:
        """The saved forward output as a Tensor attached to this node (for backward)."""
        if self._freed:
            _raise_freed(self)
        out = self._out_arrays
        arr = out[index] if type(out) is tuple else out
        return tensor.Tensor._make(arr, self.device, self if _mode.enabled else None, index)

    def _free(self) -> None:
        self._saved = None
        self._out_arrays = None
        self._out_versions = ()
        self._freed = True

    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{type(self).__name__}Backward>"


class AccumulateGrad(Function):
    """The node of a leaf Tensor: adds incoming gradients to ``leaf.grad``."""

    def __init__(self, leaf: Tensor) -> None:
        self.leaf = leaf
        self.device = leaf._device

    def accumulate(self, grad: Tensor) -> None:
        leaf = self.leaf
        if leaf.grad is None:
            if _mode.enabled:  # create_graph: keep the gradient's own graph
                leaf.grad = grad
            elif leaf._grad_slot is not None and leaf._grad_slot.receive(leaf, grad):
                # NOTE: an optimizer's slot took it: copied into its flat gradient buffer,
                # leaf.grad is now a view of that (dlcore/optim/optimizer.py says why)
                pass
            else:
                # NOTE: copy, never alias: one gradient Tensor may flow to several leaves
                # (x + y hands the same grad to both), and later accumulation is in place.
                # order="K" keeps the gradient's layout (a channels-last one stays so).
                leaf.grad = tensor.Tensor._make(grad._data.copy(order="K"), leaf._device)
        elif _mode.enabled or leaf.grad.requires_grad:
            leaf.grad = leaf.grad + grad  # create_graph: keep the graph of the sum
        else:
            leaf.grad._data += grad._data


class RetainGrad(Function):
    """Identity node in front of a non-leaf that called ``retain_grad()``: stores the
    gradient flowing through it on the tensor (held weakly: the node must not keep it alive)."""

    tensor_ref: weakref.ref

    @classmethod
    def hook(cls, t: Tensor) -> RetainGrad:
        node = cls()
        node.device = t._device
        node.tensor_ref = weakref.ref(t)
        node.needs_input_grad = (True,)
        node.next_functions = (t._edge(),)
        return node

    def backward(self, g: Tensor) -> tuple:
        t = self.tensor_ref()
        if t is not None:
            gd = g if _mode.enabled else g.detach()
            t.grad = gd.clone() if t.grad is None else t.grad + gd
        return (g,)


# Anomaly mode's settings (dlcore.anomaly._AnomalyMode) while it is on, else None: global, as
# in PyTorch. Ops record their creation stack and backward checks gradients through it.
_anomaly: Any = None

# The recorder of a CUDA graph capture on emu (dlcore.graphs._EmuCapture), or None: set by
# dlcore.graphs for the duration of a capture. Ops, backward nodes and gradient accumulation
# are recorded through it so that a replay re-runs them on the same arrays.
_capture: Any = None


def device_work(device: Any, fn: Callable[[], Any], writes: Sequence[Any] = ()) -> Any:
    """Run ``fn()``: raw array work on ``device`` that is no op's forward (gradient clipping,
    an optimizer's bookkeeping), writing the arrays ``writes`` in place; returns what ``fn``
    returns (an array, a tuple of arrays, or None). Going through here lets a CUDA graph
    capture on emu record the work and replay it (dlcore.graphs); elsewhere it is ``fn()``."""
    cap = _capture
    if cap is not None and cap.recording(device):
        return cap.raw(fn, writes)
    return fn()


def _forward_captured(cap: Any, fn: Function, inputs: Sequence[Tensor], options: dict) -> Any:
    for t in inputs:
        if t._device is not fn.device:
            _raise_device_mismatch(type(fn), inputs)
    return cap.forward(fn, tuple([t._data for t in inputs]), options)


def _raise_device_mismatch(cls: type, inputs: Sequence[Tensor]) -> None:
    devs = ", ".join(f"{i}: {t._device}" for i, t in enumerate(inputs))
    raise RuntimeError(f"{cls.__name__}: expected all tensors on the same device, "
                       f"got inputs on different devices ({devs})")


def _raise_freed(fn: Function) -> None:
    raise RuntimeError(
        f"{fn.name()}: trying to backward through the graph a second time (its saved "
        "buffers were freed after the first backward); pass retain_graph=True to the first "
        "backward() if you need to backward twice")


def _topological_order(roots: Iterable[Function]) -> list[Function]:
    """Nodes reachable from the roots, each before every node it feeds gradient into
    (reverse post-order of an iterative DFS: no recursion, any graph depth)."""
    order: list[Function] = []
    visited: set[Function] = set()
    for r in roots:
        if r in visited:
            continue
        visited.add(r)
        stack = [(r, iter(r.next_functions))]
        while stack:
            node, it = stack[-1]
            for edge in it:
                if edge is not None and edge[0] not in visited:
                    child = edge[0]
                    visited.add(child)
                    stack.append((child, iter(child.next_functions)))
                    break
            else:
                stack.pop()
                order.append(node)
    order.reverse()
    return order


def _add_grad(pending: dict, node: Function, index: int, g: Tensor) -> None:
    """Sum gradients arriving at one output of a node (a Tensor per single-output node,
    a list for multi-output nodes)."""
    n = node.num_outputs
    if n == 1:
        prev = pending.get(node)
        pending[node] = g if prev is None else prev + g
        return
    slots = pending.get(node)
    if slots is None:
        slots = pending[node] = [None] * n
    prev = slots[index]
    slots[index] = g if prev is None else prev + g


def _run_backward(roots: Sequence[Tensor], grads: Sequence[Tensor], retain_graph: bool,
                  create_graph: bool, capture: dict | None = None) -> None:
    """The engine. ``capture`` maps (node, index) edges to None; when given, gradients
    arriving at those edges are stored there and leaves' ``.grad`` are left alone."""
    pending: dict[Function, Any] = {}
    root_nodes = []
    for t, g in zip(roots, grads):
        node, index = t._edge()
        _add_grad(pending, node, index, g)
        root_nodes.append(node)
    order = _topological_order(root_nodes)
    with set_grad_enabled(create_graph):
        for node in order:
            got = pending.pop(node, None)
            if got is None:
                continue
            gouts = (got,) if node.num_outputs == 1 else got
            if capture is not None:
                for i, g in enumerate(gouts):
                    if g is not None and (node, i) in capture:
                        prev = capture[(node, i)]
                        capture[(node, i)] = g if prev is None else prev + g
            cap = _capture
            if cap is not None and not cap.recording(node.device):
                cap = None
            if type(node) is AccumulateGrad:
                if capture is None:
                    node.accumulate(got) if cap is None else cap.accumulate(node, got)
                continue
            if node._freed:
                _raise_freed(node)
            versions = node._out_versions
            if versions and any([v[0] for v in versions]):
                node._check_outputs()
            in_grads = node.backward(*gouts) if cap is None else cap.backward(node, gouts)
            if type(in_grads) is not tuple:
                in_grads = (in_grads,)
            if _anomaly is not None:  # anomaly mode: a NaN/Inf gradient names its op
                _anomaly.backward(node, in_grads)
            for edge, g in zip(node.next_functions, in_grads):
                if edge is not None and g is not None:
                    _add_grad(pending, edge[0], edge[1], g)
            if not retain_graph and cap is None:  # a captured graph keeps its nodes
                node._free()


def backward(tensors: Tensor | Sequence[Tensor], grad_tensors: Any = None,
             retain_graph: bool | None = None, create_graph: bool = False) -> None:
    """Accumulate gradients of ``tensors`` into the ``.grad`` of the leaves."""
    roots, grads = _prepare_roots(tensors, grad_tensors, "backward")
    if retain_graph is None:
        retain_graph = create_graph
    _run_backward(roots, grads, retain_graph, create_graph)


def grad(outputs: Tensor | Sequence[Tensor], inputs: Tensor | Sequence[Tensor],
         grad_outputs: Any = None, retain_graph: bool | None = None,
         create_graph: bool = False, allow_unused: bool = False) -> tuple[Tensor | None, ...]:
    """Gradients of ``outputs`` with respect to ``inputs``, returned (not accumulated)."""
    roots, grads = _prepare_roots(outputs, grad_outputs, "grad")
    ins: list[Tensor] = [inputs] if isinstance(inputs, tensor.Tensor) else list(inputs)
    capture: dict = {}
    keys = []
    for t in ins:
        if not t.requires_grad:
            raise RuntimeError("grad: one of the inputs does not require grad")
        node, idx = t._edge()
        capture[(node, idx)] = None
        keys.append((node, idx))
    if retain_graph is None:
        retain_graph = create_graph
    _run_backward(roots, grads, retain_graph, create_graph, capture)
    result = []
    for t, key in zip(ins, keys):
        g = capture[key]
        if g is None and not allow_unused:
            raise RuntimeError(f"grad: an input of shape {tuple(t.shape)} was not used in the "
                               "graph; pass allow_unused=True if this is intended")
        result.append(g)
    return tuple(result)


def _prepare_roots(tensors: Any, grad_tensors: Any, op: str) -> tuple[list, list]:
    roots = [tensors] if isinstance(tensors, tensor.Tensor) else list(tensors)
    if grad_tensors is None:
        gs: list = [None] * len(roots)
    elif isinstance(grad_tensors, tensor.Tensor):
        gs = [grad_tensors]
    else:
        gs = list(grad_tensors)
    if len(gs) != len(roots):
        raise ValueError(f"{op}: got {len(roots)} outputs but {len(gs)} gradients")
    out_grads = []
    for t, g in zip(roots, gs):
        if not t.requires_grad:
            raise RuntimeError(f"{op}: element of shape {tuple(t.shape)} does not require grad "
                               "and has no grad_fn")
        if g is None:
            if t._data.size != 1:
                raise RuntimeError(
                    f"{op}: grad can be implicitly created only for scalar outputs; got an "
                    f"output of shape {tuple(t.shape)}, pass gradient= explicitly")
            g = tensor.Tensor._make(t._device.xp.ones_like(t._data), t._device)
        elif not isinstance(g, tensor.Tensor):
            g = tensor.Tensor._make(t._device.xp.asarray(g, dtype=t._data.dtype), t._device)
        if tuple(g.shape) != tuple(t.shape):
            raise RuntimeError(f"{op}: gradient has shape {tuple(g.shape)} but the output has "
                               f"shape {tuple(t.shape)}")
        out_grads.append(g)
    return roots, out_grads


# NOTE: tensor.py imports this module (Tensor's fields are autograd's), and the functions
# above build Tensors at run time; a plain module import after every definition here serves
# both orders of first import.
from . import tensor  # noqa: E402
from .anomaly import detect_anomaly, is_anomaly_enabled, set_detect_anomaly  # noqa: E402, F401
