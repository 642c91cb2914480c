"""Optimizer base class: parameter groups, flat per-group buffers, the step loop, state I/O.

Subclasses only say how one update goes (MLX's shape): ``init_single(param, state, group)``
creates missing state arrays and ``update_rule(grad, param, state, group, step)`` names the
update as a rule of the kernel family :mod:`dlcore.ops.optim` with its arguments: one fused
kernel from ``kernels/optim.cu`` on the ``cuda`` and ``emu`` devices, its NumPy twin (chunked
to stay in cache) on ``cpu``.

Layout. When an optimizer is made (and for each ``add_param_group``) the parameters of each
group are split into buckets by (device, dtype), and each bucket is flattened
(:mod:`dlcore.optim.buckets`): ONE contiguous parameter buffer, of which every parameter's
``.array`` becomes a view; ONE flat gradient buffer of the same layout, of which every
parameter gets a *gradient slot* (a view); one flat array per state name (``exp_avg``, ...).
``p.array`` keeps its shape, dtype and values, so autograd and ``Module`` are unaffected.

Gradients live in their slots. PyTorch's AccumulateGrad rules, with one difference: when
backward brings a gradient to a leaf whose ``.grad`` is None and that has a slot, autograd
copies it into the slot and sets ``.grad`` to a new Tensor over the slot (PyTorch would steal
the incoming gradient); when ``.grad`` exists it accumulates in place, so it stays in the slot.
``zero_grad()`` (``set_to_none=True``) sets ``.grad`` to None and keeps the slot;
``zero_grad(set_to_none=False)`` zeroes the whole flat gradient buffer in one fill. A step then
finds the gradients of the whole bucket in the buffer and updates it with ONE kernel launch (or
one NumPy pass), and GradScaler's unscale and inf/NaN test is one fused pass over the same
buffer: no gather, and no Python work per parameter beyond one identity pass over ``.array``
(a parameter moved, cast or reassigned must be noticed).

How a step knows, cheaply: each bucket counts its *filled* slots (autograd filled it, and
``.grad`` has not been assigned since: ``Tensor.grad``'s setter tells the slot). All filled,
and every ``.grad``'s array still its slot's view (one identity test per parameter), is the
steady state. Otherwise the step falls back, per parameter: a ``.grad`` that is its slot's
view (identity of the array) is used where it is; any other (a tensor the user assigned, one
from ``dlcore.autograd.grad``, a ``create_graph`` gradient, another dtype) is copied into its
slot, and stays the user's tensor; a parameter whose ``.grad`` is None is skipped and its state
left alone (PyTorch's semantics), so such a step launches once per run of parameters that
have gradients and equal step counts.

NOTE: the slot is reused: a reference to an old ``p.grad`` kept across
``zero_grad(set_to_none=True)`` sees the next backward's values (clone() it to keep it). A
tensor that aliased a parameter's old array (``w = p.detach()`` taken *before* the optimizer
was made) no longer sees updates; take such aliases afterwards, or read ``p``. If ``p.array``
is replaced later (``module.load_state_dict`` copies in place, but a user may assign), the new
values are adopted into the flat buffer at the next step. Replacing the *array* of a gradient
in its slot (``p.grad.data = t``, ``p.grad.set_(t)``) is seen by the identity pass of
``Bucket.grads_in_slots``, and the new values are copied in as a user's gradient.

Nothing per step from the host (GradScaler without a sync, CUDA graphs). ``capturable=True``
(Adam, AdamW, RMSprop, and Adagrad as a dlcore extension; PyTorch's option) keeps each
parameter's step count on the device (:attr:`Bucket.step_counts`, float32, PyTorch's ``step``
tensor; ``state_dict`` copies it): before each update launch the ``count_steps`` kernel (one
thread) adds 1 and computes the step's scalars (Adam's bias corrections, Adagrad's decayed lr)
in float64 with the host's formulas, and the update kernel reads them, so a graph replays later
steps correctly and the update equals the non-capturable one (bit for bit on ``emu``; on
``cuda`` up to CUDA's double ``pow``, 2 ulp of float64 before the rounding to the parameter's
dtype). As in PyTorch, ``capturable`` needs parameters on a kernel device (``cuda``, ``emu``):
a step on ``cpu`` raises AssertionError. When GradScaler sets ``self.found_inf`` (a device
int32 flag: PyTorch's protocol for optimizers whose ``_step_supports_amp_scaling`` is true) the
kernels read it and do nothing when it is set, and the step counts stay; the host does not
read it. What stays on the host: the learning rate and other hyperparameters (a graph replays
them as captured, as PyTorch's with float lr), and the bookkeeping of which parameters had
gradients.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .. import autograd
from ..device import device_of_array
from ..dtypes import get_default_dtype
from ..ops import optim as update_rules
from ..tensor import Tensor
from .buckets import Bucket

SUPPORTED_CAPTURABLE = ("cuda", "emu")  # where capturable=True can step


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
        # NOTE: the state of a PyTorch-style optimizer (one that overrides step() and keeps
        # its own tensors in self.state[p], not an update_rule over the flat buffers)
        self._own_state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        self._buckets: list[list[Bucket] | None] = []
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
        self._group_buckets(len(self.param_groups) - 1)  # flatten now: see the module doc

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset gradients: drop them (default, saves memory and a pass; the slots stay) or
        zero them in place (one fill of each bucket's flat gradient buffer)."""
        with autograd.no_grad():
            for index, group in enumerate(self.param_groups):
                if set_to_none:
                    for p in group["params"]:
                        if p.grad is not None:
                            p.grad = None
                    continue
                for bucket in self._group_buckets(index):
                    # NOTE: filling slots whose parameter has no gradient is harmless: a
                    # slot's content means something only while its parameter's .grad is it
                    foreign = [] if bucket.grads_in_slots() else bucket.foreign_grads()
                    bucket.grads.buffer.fill(0)
                    for i in foreign:
                        grad = bucket.params[i].grad
                        assert grad is not None  # foreign_grads() lists only existing ones
                        grad.detach_()
                        grad.zero_()

    # ---- stepping ---------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; ``closure`` re-evaluates the loss
        (with gradients enabled) and its value is returned."""
        loss = None
        if closure is not None:
            with autograd.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)  # a Tensor GradScaler set, for this step
        with autograd.no_grad():
            for index, group in enumerate(self.param_groups):
                for bucket in self._group_buckets(index):
                    self._step_bucket(bucket, group, found_inf)
        return loss

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """Whether GradScaler may hand :meth:`step` its device found_inf flag (as
        ``self.found_inf``) instead of reading it on the host: when a step the kernels skip
        leaves no host state wrong, i.e. every group :meth:`skips_on_device`."""
        return all(self.skips_on_device(group) for group in self.param_groups)

    def skips_on_device(self, group: dict[str, Any]) -> bool:
        """Whether a step of ``group`` the kernels skip (found_inf set) is as good as no
        step: true for capturable groups, whose step counts are on the device."""
        return bool(group.get("capturable", False))

    def _bucket_devices(self) -> set[Any]:
        return {b.device for i in range(len(self.param_groups)) for b in self._group_buckets(i)}

    def _group_buckets(self, index: int) -> list[Bucket]:
        """Group ``index``'s buckets, after noticing parameters moved, cast or reassigned."""
        buckets = self._buckets[index]
        if buckets is not None and all([b.data_in_place() for b in buckets]):
            return buckets  # the steady state: one identity pass
        if buckets is not None and any(b.moved() for b in buckets):
            self._relayout(index, buckets)
            buckets = self._buckets[index]
        if buckets is None:
            by_kind: dict[tuple, list[Tensor]] = {}
            for p in self.param_groups[index]["params"]:
                by_kind.setdefault((p.device, p._data.dtype), []).append(p)
            buckets = self._buckets[index] = [Bucket(ps) for ps in by_kind.values()]
        for bucket in buckets:
            bucket.adopt_replaced_data()
        return buckets

    def _relayout(self, index: int, buckets: list[Bucket]) -> None:
        """Rebuild a group's buckets after its parameters moved or were cast (as PyTorch
        would, the state follows them to their new device and dtype)."""
        saved = {id(p): self._param_state(b, i) for b in buckets for i, p in enumerate(b.params)}
        self._buckets[index] = None
        group = self.param_groups[index]
        for bucket in self._group_buckets(index):
            self.init_single(bucket.flat, bucket.state, group)
            for i, p in enumerate(bucket.params):
                self._load_param_state(bucket, i, saved[id(p)])
            bucket.recount_steps()

    def _step_bucket(self, bucket: Bucket, group: dict[str, Any],
                     found_inf: Tensor | None) -> None:
        capturable = bool(group.get("capturable", False))
        if capturable and bucket.device.type not in SUPPORTED_CAPTURABLE:
            raise AssertionError(f"{type(self).__name__}: if capturable=True, params and "
                                 f"state_steps must be on supported devices: "
                                 f"{list(SUPPORTED_CAPTURABLE)}, got {bucket.device}")
        flag = None
        if found_inf is not None:
            if found_inf.device is not bucket.device:
                raise RuntimeError(f"{type(self).__name__}.step: found_inf is on "
                                   f"{found_inf.device}, parameters on {bucket.device}")
            flag = found_inf._data
        self.init_single(bucket.flat, bucket.state, group)
        bucket.begin_step()
        n = len(bucket.params)
        common = bucket.common_history if capturable else bucket.common_step
        if bucket.grads_in_slots() and common is not None:  # the steady state
            self._update(bucket, group, 0, n, bucket.steps[0] + 1, capturable, flag)
            return
        for i in bucket.foreign_grads():
            bucket.copy_into_slot(i)
        for first, last in bucket.runs(bucket.histories if capturable else bucket.steps):
            self._update(bucket, group, first, last, bucket.steps[first] + 1, capturable,
                         flag)

    def _update(self, bucket: Bucket, group: dict[str, Any], first: int, last: int,
                step: int, capturable: bool, found_inf: Any) -> None:
        """One launch (or NumPy pass) over parameters ``first:last``, whose gradients are in
        their slots and whose step counts all become ``step`` (on the host; capturable: the
        ``count_steps`` launch before it counts on the device, unless found_inf is set)."""
        lo, hi = bucket.offsets[first], bucket.offsets[last]
        if first == 0 and last == len(bucket.params):  # the usual case: the whole bucket
            state, param, grad = bucket.state, bucket.flat, bucket.grads.buffer
        else:
            state = {k: v[lo:hi] for k, v in bucket.state.items()}
            param, grad = bucket.flat[lo:hi], bucket.grads.buffer[lo:hi]
        # NOTE: capturable: the host's step scalars are replaced by the device's, and step 1's
        # are passed so that every launch has the same arguments (a CUDA graph replays them)
        if not capturable and self.update_arrays(grad, param, state, group, step):
            bucket.set_steps(first, last, step)
            return
        rule, arrays, scalars, flags = self.update_rule(grad, param, state, group,
                                                        1 if capturable else step)
        step_scalars = None
        if capturable:
            counts, step_scalars = bucket.device_steps()
            what, lr, a, b = self.step_count_rule(group)
            update_rules.count_steps(bucket.device, counts[first:last], lr, a, b, step_scalars,
                                     what, found_inf)
            step_scalars = step_scalars if what else None
        update_rules.update(bucket.device, rule, arrays, scalars, flags | bucket.aligned(lo),
                            found_inf, step_scalars)
        bucket.set_steps(first, last, step)

    def step_count_rule(self, group: dict[str, Any]) -> tuple[int, float, float, float]:
        """What ``count_steps`` computes for ``group``'s capturable steps, besides counting:
        ``(STEPS_ADAM, lr, beta1, beta2)``, ``(STEPS_ADAGRAD, lr, lr_decay, 0)``, or nothing
        (``0, 0, 0, 0``: a rule that does not depend on the step count)."""
        return 0, 0.0, 0.0, 0.0

    def init_single(self, param: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Create the state arrays ``group``'s options need and ``state`` lacks (flat, like
        ``param``); called before every step so options switched on later get state too."""

    def update_arrays(self, grad: Any, param: Any, state: dict[str, Any],
                      group: dict[str, Any], step: int) -> bool:
        """The update of ``param`` (and ``state``) from ``grad`` written with array operations
        (``array_module(param)``, in place; ``grad`` is read only) on the same flat slices
        :meth:`update_rule` gets, for a rule no fused kernel pays for; True when done. The
        base does nothing and says False: the kernel rule of :meth:`update_rule` runs."""
        return False

    def update_rule(self, grad: Any, param: Any, state: dict[str, Any],
                    group: dict[str, Any], step: int) -> tuple[str, tuple, tuple[float, ...], int]:
        """The update of ``param`` (and ``state``) from ``grad`` as a rule of
        :mod:`dlcore.ops.optim`: its name, its array arguments (``None`` for state an option
        leaves unused), its float scalars and its flag bits; ``step`` counts from 1."""
        raise NotImplementedError(f"{type(self).__name__}.update_rule")

    def _unscale_grads_(self, inv_scale: float) -> bool:
        """Multiply every gradient by ``inv_scale`` in place and say whether any was inf or
        NaN (for ``dlcore.amp.GradScaler``): one fused pass over each bucket's flat gradient
        buffer (the slots), one flag per device read back once; a gradient outside its slot
        is scaled and checked where it is (``step()`` then copies it in)."""
        flags: dict[Any, Any] = {}  # device -> int32 found-inf flag on it
        found_inf = False
        with autograd.no_grad():
            for index in range(len(self.param_groups)):
                for bucket in self._group_buckets(index):
                    flag = flags.get(bucket.device)
                    if flag is None:
                        flag = flags[bucket.device] = bucket.device.xp.zeros(1, np.int32)
                    buffer = bucket.grads.buffer
                    if bucket.grads_in_slots():
                        ranges, foreign = [(0, int(buffer.size))], []
                    else:
                        foreign = bucket.foreign_grads()
                        ranges = bucket.slot_runs(foreign)
                    for lo, hi in ranges:
                        update_rules.unscale_grads(bucket.device, buffer[lo:hi], inv_scale, flag,
                                                   bucket.aligned(lo))
                    for i in foreign:
                        found_inf = _unscale_one(bucket.params[i], inv_scale) or found_inf
        return found_inf or any(int(dev.to_host(flag)[0]) for dev, flag in flags.items())

    def _unscale_grads_device_(self, scale: Any, found_inf: Any) -> None:
        """GradScaler's pass with no host read: every gradient times ``1 / scale[0]`` (float32,
        taken in the kernel), ``found_inf[0]`` set on an inf or NaN; ``scale`` and
        ``found_inf`` (float32 and int32, 1 element) on the device of every bucket. The flat
        buffers in one launch per bucket, a gradient outside its slot in one launch of its
        own."""
        with autograd.no_grad():
            for index in range(len(self.param_groups)):
                for bucket in self._group_buckets(index):
                    buffer = bucket.grads.buffer
                    if bucket.grads_in_slots():
                        ranges, foreign = [(0, int(buffer.size))], []
                    else:
                        foreign = bucket.foreign_grads()
                        ranges = bucket.slot_runs(foreign)
                    for lo, hi in ranges:
                        update_rules.unscale_grads(bucket.device, buffer[lo:hi], scale,
                                                   found_inf, bucket.aligned(lo))
                    for i in foreign:
                        grad = bucket.params[i].grad
                        assert grad is not None  # foreign_grads() lists only existing ones
                        contiguous = grad._data.flags.c_contiguous
                        flat = (grad._data if contiguous else
                                grad.device.xp.ascontiguousarray(grad._data)).reshape(-1)
                        update_rules.unscale_grads(grad.device, flat, scale, found_inf)
                        if not contiguous:
                            grad._data[...] = flat.reshape(grad.shape)

    # ---- state -----------------------------------------------------------------------
    @property
    def state(self) -> dict[Tensor, dict[str, Any]]:
        """Per-parameter state as in PyTorch (``opt.state[p]["exp_avg"]``): Tensors that are
        views of the flat buffers (writing them changes the optimizer's state). An optimizer
        with no :meth:`update_rule` (PyTorch-style: it overrides ``step`` and keeps its own
        state) gets a persistent ``defaultdict(dict)``, as PyTorch's."""
        if self._keeps_own_state():
            return self._own_state
        out: dict[Tensor, dict[str, Any]] = {}
        for buckets in self._buckets:
            for bucket in buckets or ():
                for i, p in enumerate(bucket.params):
                    entry = self._param_state(bucket, i)
                    if entry:
                        out[p] = entry
        return out

    def _keeps_own_state(self) -> bool:
        """Whether the subclass steps by itself (no update rule): its state is ``_own_state``."""
        cls = type(self)
        return cls.update_rule is Optimizer.update_rule and \
            cls.update_arrays is Optimizer.update_arrays

    def _param_state(self, bucket: Bucket, i: int) -> dict[str, Any]:
        if bucket.steps[i] == 0:
            return {}
        lo, hi = bucket.offsets[i], bucket.offsets[i + 1]
        shape = bucket.views[i].shape
        entry: dict[str, Any] = {}
        if self.has_step_state:
            counts = bucket.step_counts
            # PyTorch's scalar dtype for "step": float64 under a float64 default dtype
            step_dtype = np.float64 if get_default_dtype() == np.float64 else np.float32
            entry["step"] = Tensor(float(bucket.steps[i]), dtype=step_dtype) if counts is None \
                else Tensor._make(counts[i:i + 1].reshape(()), bucket.device)
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
                if self._keeps_own_state():
                    if self._own_state.get(p):
                        state[index] = _copy_state(self._own_state[p])
                    index += 1
                    continue
                where = location.get(id(p))
                entry = self._param_state(*where) if where else {}
                if entry:
                    state[index] = {k: v.clone() for k, v in entry.items()}
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
            if self._keeps_own_state():
                for k, p in enumerate(group["params"]):
                    key = saved["params"][k]
                    self._own_state.pop(p, None)
                    entry = saved_state.get(key, saved_state.get(str(key)))
                    if entry:
                        self._own_state[p] = _copy_state(entry)
                continue
            for bucket in self._group_buckets(index):
                self.init_single(bucket.flat, bucket.state, group)
                for i, p in enumerate(bucket.params):
                    key = saved["params"][position[id(p)]]
                    entry = saved_state.get(key, saved_state.get(str(key)))
                    self._load_param_state(bucket, i, entry or {})
                bucket.recount_steps()

    def _load_param_state(self, bucket: Bucket, i: int, entry: dict[str, Any]) -> None:
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


def _copy_state(value: Any) -> Any:
    """A deep copy of per-parameter state: Tensors cloned (detached), containers rebuilt."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _copy_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_state(v) for v in value)
    return copy.deepcopy(value)


def _unscale_one(p: Tensor, inv_scale: float) -> bool:
    """Scale a gradient that is not in its slot in place; whether it had an inf or NaN."""
    grad = p.grad
    assert grad is not None  # foreign_grads() lists only existing ones
    xp = grad.device.xp
    bad = not bool(xp.isfinite(grad._data).all())
    # in float32 and rounded once, as the fused pass does (a float16 1/scale is exact only for
    # powers of two)
    scaled = grad._data.astype(np.float32) * np.float32(inv_scale) \
        if grad.dtype == np.float16 else grad._data * grad.dtype.type(inv_scale)
    grad._data[...] = scaled
    return bad
