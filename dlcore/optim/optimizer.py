"""Optimizer base class: parameter groups, flat per-group buffers, the step loop, state I/O.

Subclasses only say how one update goes (MLX's shape): ``init_single(param, state, group)``
creates missing state arrays and ``update_rule(grad, param, state, group, step)`` names the
update as a rule of the kernel family :mod:`dlcore.ops.optim` with its arguments: one fused
kernel from ``kernels/optim.cu`` on the ``cuda`` and ``emu`` devices, its NumPy twin (chunked
to stay in cache) on ``cpu``.

Layout. At the first ``step()`` the parameters of each group are split into buckets by
(device, dtype), and each bucket is flattened into ONE contiguous buffer: every parameter's
``.data`` becomes a view into it, and the optimizer state (``exp_avg``, ...) is one flat
array per name. A step then gathers the gradients into a flat gradient buffer (one
concatenate) and updates everything with one call of the update rule. ``p.data`` keeps
its shape, dtype and values, so autograd and ``Module`` are unaffected.

NOTE: a tensor that aliased a parameter's old array (``w = p.detach()`` taken *before* the
first step) no longer sees updates; take such aliases after the first step, or read ``p``.
If ``p.data`` is replaced later (``module.load_state_dict`` copies in place, but a user may
assign), the new values are adopted into the flat buffer at the next step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .. import autograd
from ..device import device_of_array
from ..ops import optim as update_rules
from ..tensor import Tensor


class _Required:
    """Marks a hyperparameter with no default that every group must set (``SGD(lr=...)``)."""

    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()


def array_module(array: Any) -> Any:
    """NumPy or CuPy, whichever holds ``array``."""
    return device_of_array(array).xp


def state_like(param: Any, fill: float = 0.0) -> Any:
    """A new state array shaped and typed like ``param``, on its device, set to ``fill``."""
    return array_module(param).full_like(param, fill)


class _Bucket:
    """The parameters of one group sharing a device and dtype, flattened into one buffer."""

    def __init__(self, params: list[Tensor]) -> None:
        p0 = params[0]
        self.device = p0.device
        self.dtype = p0.data.dtype
        xp = self.device.xp
        self.params = params
        sizes = [int(p.data.size) for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64).tolist()
        self.flat = xp.empty(self.offsets[-1], dtype=self.dtype)
        self.grad = xp.empty_like(self.flat)
        self.views: list[Any] = []
        self.grad_views: list[Any] = []  # each parameter's slice of the flat gradient buffer
        for i, p in enumerate(params):
            view = self.flat[self.offsets[i]:self.offsets[i + 1]].reshape(p.data.shape)
            xp.copyto(view, p.data)
            p.data = view
            self.views.append(view)
            self.grad_views.append(self.grad[self.offsets[i]:self.offsets[i + 1]]
                                   .reshape(p.data.shape))
        self.state: dict[str, Any] = {}
        # updates each parameter has had (a list: NumPy's per-call cost on a tiny array was
        # a tenth of a step's host time)
        self.steps = [0] * len(params)

    def moved(self) -> bool:
        """Whether a parameter now lives on another device or has another dtype (the model
        was moved or cast after the first step): the layout must be rebuilt."""
        return any(p.device is not self.device or p.data.dtype != self.dtype
                   for p in self.params)

    def adopt_replaced_data(self) -> None:
        """Take back parameters whose ``.data`` was reassigned since the last step."""
        for i, p in enumerate(self.params):
            view = self.views[i]
            if p.data is view:
                continue
            if p.data.shape != view.shape:
                raise RuntimeError(
                    f"optimizer: a parameter changed shape from {tuple(view.shape)} to "
                    f"{tuple(p.data.shape)} after the optimizer's first step; its state no "
                    "longer fits (create a new optimizer)")
            self.device.xp.copyto(view, p.data)
            p.data = view

    def runs(self) -> list[tuple[int, int]]:
        """Maximal ranges of parameters that have a gradient and the same step count: each
        is updated by one call (PyTorch skips parameters whose ``.grad`` is None)."""
        out: list[tuple[int, int]] = []
        start = None
        for i, p in enumerate(self.params):
            if p.grad is None:
                if start is not None:
                    out.append((start, i))
                    start = None
            elif start is None:
                start = i
            elif self.steps[i] != self.steps[start]:
                out.append((start, i))
                start = i
        if start is not None:
            out.append((start, len(self.params)))
        return out

    def gather_grads(self, first: int, last: int) -> Any:
        """The run's gradients copied into its slice of the flat gradient buffer."""
        lo, hi = self.offsets[first], self.offsets[last]
        dst = self.grad[lo:hi]
        if all(_grad_of(self.params[i]).data is self.grad_views[i] for i in range(first, last)):
            return dst  # already there (GradScaler.unscale_ gathered them)
        grads = [_grad_of(self.params[i]).data.reshape(-1) for i in range(first, last)]
        if len(grads) == 1:
            self.device.xp.copyto(dst, grads[0], casting="same_kind")
        else:
            self.device.xp.concatenate(grads, out=dst, casting="same_kind")
        return dst


def _grad_of(p: Tensor) -> Tensor:
    assert p.grad is not None  # runs() keeps only parameters that have one
    return p.grad


class Optimizer:
    """Base class of dlcore's optimizers (``torch.optim.Optimizer``'s interface).

    ``params`` is an iterable of Tensors or of dicts (parameter groups: ``{"params": [...],
    "lr": ...}``); options missing from a group come from ``defaults``.
    """

    has_step_state = True  # whether the saved per-parameter state includes "step"

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        if isinstance(params, Tensor):
            raise TypeError("optimizer: params should be an iterable of Tensors or dicts, "
                            f"but got a Tensor of shape {tuple(params.shape)}")
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self._buckets: list[list[_Bucket] | None] = []
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        return "\n".join(lines + [")"])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters with its own options (e.g. a lower lr for a backbone)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"add_param_group: expected a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, got {type(p).__name__}")
            if p.dtype.kind != "f":
                raise TypeError(f"optimizer can only optimize floating point Tensors, got one "
                                f"of dtype {p.dtype} (shape {tuple(p.shape)})")
            if not p.is_leaf:
                raise ValueError(f"optimizer: can't optimize a non-leaf Tensor (shape "
                                 f"{tuple(p.shape)}); optimize the leaves it is computed from")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("optimizer: a parameter group contains the same parameter twice")
        group["params"] = params
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"parameter group didn't specify a value of required "
                                 f"optimization parameter {name}")
            group.setdefault(name, default)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("optimizer: some parameters appear in more than one parameter group")
        self.param_groups.append(group)
        self._buckets.append(None)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset gradients: drop them (default, saves memory and a pass) or zero in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_()
                    with autograd.no_grad():
                        p.grad.zero_()

    # ---- stepping ---------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; ``closure`` re-evaluates the loss
        (with gradients enabled) and its value is returned."""
        loss = None
        if closure is not None:
            with autograd.enable_grad():
                loss = closure()
        with autograd.no_grad():
            for index, group in enumerate(self.param_groups):
                for bucket in self._group_buckets(index):
                    self._step_bucket(bucket, group)
        return loss

    def _group_buckets(self, index: int) -> list[_Bucket]:
        buckets = self._buckets[index]
        if buckets is not None and any(b.moved() for b in buckets):
            self._relayout(index, buckets)
            buckets = self._buckets[index]
        if buckets is None:
            by_kind: dict[tuple, list[Tensor]] = {}
            for p in self.param_groups[index]["params"]:
                by_kind.setdefault((p.device, p.data.dtype), []).append(p)
            buckets = self._buckets[index] = [_Bucket(ps) for ps in by_kind.values()]
        return buckets

    def _relayout(self, index: int, buckets: list[_Bucket]) -> None:
        """Rebuild a group's buckets after its parameters moved or were cast (as PyTorch
        would, the state follows them to their new device and dtype)."""
        saved = {id(p): self._param_state(b, i) for b in buckets for i, p in enumerate(b.params)}
        self._buckets[index] = None
        group = self.param_groups[index]
        for bucket in self._group_buckets(index):
            self.init_single(bucket.flat, bucket.state, group)
            for i, p in enumerate(bucket.params):
                self._load_param_state(bucket, i, saved[id(p)])

    def _step_bucket(self, bucket: _Bucket, group: dict[str, Any]) -> None:
        bucket.adopt_replaced_data()
        self.init_single(bucket.flat, bucket.state, group)
        for first, last in bucket.runs():
            grad = bucket.gather_grads(first, last)
            lo, hi = bucket.offsets[first], bucket.offsets[last]
            for i in range(first, last):
                bucket.steps[i] += 1
            step = bucket.steps[first]
            if lo == 0 and hi == bucket.flat.size:  # the usual case: the whole bucket
                state, param = bucket.state, bucket.flat
            else:
                state = {k: v[lo:hi] for k, v in bucket.state.items()}
                param = bucket.flat[lo:hi]
            rule, arrays, scalars, flags = self.update_rule(grad, param, state, group, step)
            update_rules.update(bucket.device, rule, arrays, scalars, flags)

    def init_single(self, param: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Create the state arrays ``group``'s options need and ``state`` lacks (flat, like
        ``param``); called before every step so options switched on later get state too."""

    def update_rule(self, grad: Any, param: Any, state: dict[str, Any],
                    group: dict[str, Any], step: int) -> tuple[str, tuple, tuple[float, ...], int]:
        """The update of ``param`` (and ``state``) from ``grad`` as a rule of
        :mod:`dlcore.ops.optim`: its name, its array arguments (``None`` for state an option
        leaves unused), its float scalars and its flag bits; ``step`` counts from 1."""
        raise NotImplementedError(f"{type(self).__name__}.update_rule")

    def _unscale_grads_(self, inv_scale: float) -> bool:
        """Multiply every gradient by ``inv_scale`` in place and say whether any is inf or
        NaN (for ``dlcore.amp.GradScaler``): per bucket, the gradients are gathered into the
        flat gradient buffer once, scaled and checked there in whole-buffer passes, and each
        ``p.grad`` becomes a view of its slice, so ``step()`` (and a clip_grad_norm_ between
        the two) work on the same memory without gathering again."""
        found_inf = False
        with autograd.no_grad():
            for index in range(len(self.param_groups)):
                for bucket in self._group_buckets(index):
                    for first, last in bucket.runs():
                        flat = bucket.gather_grads(first, last)
                        flat *= flat.dtype.type(inv_scale)
                        found_inf = found_inf or not bool(
                            bucket.device.xp.isfinite(flat).all())
                        for i in range(first, last):
                            grad = _grad_of(bucket.params[i])
                            grad.set_(Tensor._make(bucket.grad_views[i], bucket.device))
        return found_inf

    # ---- state -----------------------------------------------------------------------
    @property
    def state(self) -> dict[Tensor, dict[str, Any]]:
        """Per-parameter state as in PyTorch (``opt.state[p]["exp_avg"]``): Tensors that are
        views of the flat buffers (writing them changes the optimizer's state)."""
        out: dict[Tensor, dict[str, Any]] = {}
        for buckets in self._buckets:
            for bucket in buckets or ():
                for i, p in enumerate(bucket.params):
                    entry = self._param_state(bucket, i)
                    if entry:
                        out[p] = entry
        return out

    def _param_state(self, bucket: _Bucket, i: int) -> dict[str, Any]:
        if bucket.steps[i] == 0:
            return {}
        lo, hi = bucket.offsets[i], bucket.offsets[i + 1]
        shape = bucket.views[i].shape
        entry: dict[str, Any] = {}
        if self.has_step_state:
            entry["step"] = Tensor(float(bucket.steps[i]), dtype=np.float32)
        for name, flat in bucket.state.items():
            entry[name] = Tensor._make(flat[lo:hi].reshape(shape), bucket.device)
        return entry

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}`` as in
        PyTorch; indices number the parameters across groups in order. The state tensors are
        copies: the flat buffers keep changing, and a snapshot is what a checkpoint wants."""
        groups, state, index = [], {}, 0
        location = {}
        for buckets in self._buckets:
            for bucket in buckets or ():
                for i, p in enumerate(bucket.params):
                    location[id(p)] = (bucket, i)
        for group in self.param_groups:
            saved = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            saved["params"] = list(range(index, index + len(group["params"])))
            for p in group["params"]:
                where = location.get(id(p))
                entry = self._param_state(*where) if where else {}
                if entry:
                    state[index] = {k: v.clone() if k != "step" else v for k, v in entry.items()}
                index += 1
            groups.append(saved)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore options and state saved by :meth:`state_dict` (or by PyTorch)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"load_state_dict: loaded state dict has {len(saved_groups)} "
                             f"parameter groups, the optimizer has {len(self.param_groups)}")
        for i, (g, s) in enumerate(zip(self.param_groups, saved_groups)):
            if len(g["params"]) != len(s["params"]):
                raise ValueError(f"load_state_dict: parameter group {i} has "
                                 f"{len(g['params'])} parameters, the loaded one "
                                 f"{len(s['params'])}")
        saved_state = state_dict["state"]
        for index, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            options = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            group.update(options)
            position = {id(p): k for k, p in enumerate(group["params"])}
            for bucket in self._group_buckets(index):
                self.init_single(bucket.flat, bucket.state, group)
                for i, p in enumerate(bucket.params):
                    key = saved["params"][position[id(p)]]
                    entry = saved_state.get(key, saved_state.get(str(key)))
                    self._load_param_state(bucket, i, entry or {})

    def _load_param_state(self, bucket: _Bucket, i: int, entry: dict[str, Any]) -> None:
        xp = bucket.device.xp
        lo, hi = bucket.offsets[i], bucket.offsets[i + 1]
        step = entry.get("step")
        if step is None:
            bucket.steps[i] = 1 if entry else 0
        else:
            bucket.steps[i] = int(round(float(step.item() if isinstance(step, Tensor)
                                              else np.asarray(step).item())))
        for name, value in entry.items():
            if name == "step":
                continue
            if name not in bucket.state:
                bucket.state[name] = xp.zeros_like(bucket.flat)
            arr = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
            if arr.size != hi - lo:
                raise ValueError(f"load_state_dict: state {name!r} has {arr.size} elements, "
                                 f"its parameter {tuple(bucket.views[i].shape)} has {hi - lo}")
            bucket.state[name][lo:hi] = xp.asarray(arr.reshape(-1), dtype=bucket.dtype)
