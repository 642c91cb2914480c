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
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tensor import Tensor


class _GradMode(threading.local):
    enabled = True


_mode = _GradMode()


def is_grad_enabled() -> bool:
    return _mode.enabled


class set_grad_enabled:
    """Context manager and decorator that sets gradient recording on or off."""

    def __init__(self, mode: bool) -> None:
        self.mode = bool(mode)
        self.prev = _mode.enabled
        _mode.enabled = self.mode  # like PyTorch: effective on construction too

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        _mode.enabled = self.prev

    def __call__(self, fn: Callable) -> Callable:
        mode = self.mode
        _mode.enabled = self.prev  # the decorator form must not change the mode now

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with set_grad_enabled(mode):
                return fn(*args, **kwargs)

        wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
        wrapper.__name__ = getattr(fn, "__name__", "wrapper")
        wrapper.__doc__ = fn.__doc__
        return wrapper


class _ModeContext:
    mode = True

    def __enter__(self) -> None:
        self.prev = _mode.enabled
        _mode.enabled = self.mode

    def __exit__(self, *exc: object) -> None:
        _mode.enabled = self.prev

    def __call__(self, fn: Callable) -> Callable:
        mode = self.mode

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with set_grad_enabled(mode):
                return fn(*args, **kwargs)

        wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
        wrapper.__name__ = getattr(fn, "__name__", "wrapper")
        wrapper.__doc__ = fn.__doc__
        return wrapper


class no_grad(_ModeContext):
    """Disable gradient recording: ``with dlcore.no_grad(): ...`` or ``@dlcore.no_grad()``."""

    mode = False


class enable_grad(_ModeContext):
    """Enable gradient recording inside a ``no_grad`` region."""

    mode = True


class Function:
    """Base class of differentiable operations.

    Subclasses implement ``forward(self, *arrays, **options) -> array | tuple[array, ...]``
    and ``backward(self, *grad_outputs) -> tuple[Tensor | None, ...]``. Class attributes
    say what backward needs: ``save_inputs`` (save all input Tensors, version-checked) and
    ``save_output`` (keep the output array). Anything else backward needs (shapes, masks)
    is stored on ``self`` by ``forward``.
    """

    save_inputs = False
    save_output = False
    num_outputs = 1
    differentiable_outputs: tuple[int, ...] | None = None  # None: all outputs

    # set by apply() only when the result requires grad
    next_functions: tuple[tuple[Any, int] | None, ...] = ()
    needs_input_grad: tuple[bool, ...] = ()
    device: Any = None
    _saved: tuple | None = None
    _versions: tuple[int, ...] = ()
    _out_arrays: Any = None
    _freed = False

    @classmethod
    def apply(cls, *inputs: Tensor, **options: Any) -> Any:
        from .tensor import Tensor  # noqa: PLC0415

        dev = inputs[0]._device
        for t in inputs:
            if t._device is not dev:
                _raise_device_mismatch(cls, inputs)
        fn = cls()
        fn.device = dev
        out = fn.forward(*[t.data for t in inputs], **options)
        requires = _mode.enabled and any(t.requires_grad for t in inputs)
        if not requires:
            if type(out) is tuple:
                return tuple(Tensor._make(o, dev) for o in out)
            return Tensor._make(out, dev)
        fn.needs_input_grad = tuple(t.requires_grad for t in inputs)
        fn.next_functions = tuple(t._edge() if t.requires_grad else None for t in inputs)
        if cls.save_inputs:
            fn._saved = inputs
            fn._versions = tuple(t._version[0] for t in inputs)
        if type(out) is tuple:
            fn.num_outputs = len(out)
            if cls.save_output:
                fn._out_arrays = out
            diff = cls.differentiable_outputs
            return tuple(
                Tensor._make(o, dev, fn, i) if diff is None or i in diff else Tensor._make(o, dev)
                for i, o in enumerate(out))
        if cls.save_output:
            fn._out_arrays = out
        return Tensor._make(out, dev, fn, 0)

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

    def output(self, index: int = 0) -> Tensor:
        """The saved forward output as a Tensor attached to this node (for backward)."""
        from .tensor import Tensor  # noqa: PLC0415

        if self._freed:
            _raise_freed(self)
        out = self._out_arrays
        arr = out[index] if type(out) is tuple else out
        return Tensor._make(arr, self.device, self if _mode.enabled else None, index)

    def _free(self) -> None:
        self._saved = None
        self._out_arrays = None
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
            else:
                # NOTE: copy, never alias: one gradient Tensor may flow to several leaves
                # (x + y hands the same grad to both), and later accumulation is in place.
                leaf.grad = grad.detach().clone()
        elif _mode.enabled or leaf.grad.requires_grad:
            leaf.grad = leaf.grad + grad  # create_graph: keep the graph of the sum
        else:
            leaf.grad.data += grad.data


def _raise_device_mismatch(cls: type, inputs: Sequence[Tensor]) -> None:
    devs = ", ".join(f"{i}: {t._device}" for i, t in enumerate(inputs))
    raise RuntimeError(f"{cls.__name__}: expected all tensors on the same device, "
                       f"got inputs on different devices ({devs})")


def _raise_freed(fn: Function) -> None:
    raise RuntimeError(
        f"{fn.name()}: trying to backward through the graph a second time (its saved "
        "buffers were freed after the first backward); pass retain_graph=True to the first "
        "backward() if you need to backward twice")


def _topological_order(roots: Iterable[Function]) -> tuple[list[Function], dict]:
    """Nodes reachable from the roots, each after all nodes that feed gradient into it,
    plus the count of incoming edges per node. Iterative DFS."""
    deps: dict[Function, int] = {}
    order: list[Function] = []
    visited: set[int] = set()
    stack: list[tuple[Function, int]] = []
    for r in roots:
        if id(r) not in visited:
            visited.add(id(r))
            stack.append((r, 0))
        while stack:
            node, i = stack[-1]
            nexts = node.next_functions
            if i < len(nexts):
                stack[-1] = (node, i + 1)
                edge = nexts[i]
                if edge is None:
                    continue
                child = edge[0]
                deps[child] = deps.get(child, 0) + 1
                if id(child) not in visited:
                    visited.add(id(child))
                    stack.append((child, 0))
            else:
                stack.pop()
                order.append(node)
    order.reverse()
    return order, deps


def _run_backward(roots: Sequence[Tensor], grads: Sequence[Tensor], retain_graph: bool,
                  create_graph: bool, capture: dict | None = None) -> None:
    """The engine. ``capture`` maps (node, index) edges to None; when given, gradients
    arriving at those edges are stored there and leaves' ``.grad`` are left alone."""
    pending: dict[tuple[int, int], Tensor] = {}
    root_nodes = []
    for t, g in zip(roots, grads):
        edge = t._edge()
        key = (id(edge[0]), edge[1])
        pending[key] = pending[key] + g if key in pending else g
        root_nodes.append(edge[0])
    order, _ = _topological_order(root_nodes)
    with set_grad_enabled(create_graph):
        for node in order:
            nouts = node.num_outputs
            gouts = [pending.pop((id(node), i), None) for i in range(nouts)]
            if capture is not None:
                for i, g in enumerate(gouts):
                    if (node, i) in capture and g is not None:
                        prev = capture[(node, i)]
                        capture[(node, i)] = g if prev is None else prev + g
            if all(g is None for g in gouts):
                continue
            if isinstance(node, AccumulateGrad):
                if capture is None:
                    node.accumulate(gouts[0])
                continue
            if node._freed:
                _raise_freed(node)
            if nouts == 1:
                in_grads = node.backward(gouts[0])
            else:
                in_grads = node.backward(*gouts)
            if type(in_grads) is not tuple:
                in_grads = (in_grads,)
            for edge, g in zip(node.next_functions, in_grads):
                if edge is None or g is None:
                    continue
                key = (id(edge[0]), edge[1])
                prev = pending.get(key)
                pending[key] = g if prev is None else prev + g
            if not retain_graph:
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
    from .tensor import Tensor  # noqa: PLC0415

    roots, grads = _prepare_roots(outputs, grad_outputs, "grad")
    single = isinstance(inputs, Tensor)
    ins = [inputs] if single else list(inputs)
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
    from .tensor import Tensor  # noqa: PLC0415

    roots = [tensors] if isinstance(tensors, Tensor) else list(tensors)
    if grad_tensors is None:
        gs: list = [None] * len(roots)
    elif isinstance(grad_tensors, Tensor):
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
            if t.data.size != 1:
                raise RuntimeError(
                    f"{op}: grad can be implicitly created only for scalar outputs; got an "
                    f"output of shape {tuple(t.shape)}, pass gradient= explicitly")
            g = Tensor._make(t._device.xp.ones_like(t.data), t._device)
        elif not isinstance(g, Tensor):
            g = Tensor._make(t._device.xp.asarray(g, dtype=t.data.dtype), t._device)
        if tuple(g.shape) != tuple(t.shape):
            raise RuntimeError(f"{op}: gradient has shape {tuple(g.shape)} but the output has "
                               f"shape {tuple(t.shape)}")
        out_grads.append(g)
    return roots, out_grads
