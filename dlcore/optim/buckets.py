"""The flat layout behind :mod:`dlcore.optim`: buckets, gradient slots and their bookkeeping.

A :class:`Bucket` is the parameters of one group that share a device and dtype, flattened
into one contiguous parameter buffer, one flat gradient buffer of the same layout (each
parameter's :class:`GradSlot` is its view of it) and one flat array per state name. Why and
how gradients reach the slots is the module docstring of :mod:`dlcore.optim.optimizer`.

Bookkeeping that keeps a step free of per-parameter Python work: :class:`FlatGrad` counts the
slots that hold their parameter's current gradient (autograd fills a slot through
:meth:`GradSlot.receive`, any assignment of ``.grad`` empties it through
:meth:`GradSlot.release`), and :attr:`Bucket.common_step` is the step count all parameters
share (None once they differ, as when some had no gradient at a step).

Capturable optimizers keep the step counts on the device as well (:attr:`Bucket.step_counts`,
one float32 per parameter, counted by the ``count_steps`` kernel, which skips a step GradScaler
found an inf in), so the host no longer knows them; it knows which steps each parameter took
part in, and :attr:`Bucket.histories` names that set: parameters with equal histories have
equal device counts, and one launch serves a run of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..autograd import device_work
from ..ops import optim as update_rules
from ..tensor import Tensor


class FlatGrad:
    """A bucket's flat gradient buffer and how many of its slots are filled. Slots point here
    rather than at their bucket, so parameters that outlive their optimizer keep its gradient
    memory (as ``.grad`` would) but not its state."""

    __slots__ = ("buffer", "device", "filled")

    def __init__(self, buffer: Any, device: Any) -> None:
        self.buffer = buffer
        self.device = device
        self.filled = 0


class GradSlot:
    """One parameter's view of its bucket's flat gradient buffer (``Tensor._grad_slot``).

    ``filled``: the parameter's ``.grad`` is a Tensor over ``view`` and has not been assigned
    since. Only :meth:`receive` (and the bucket, having checked identity) set it."""

    __slots__ = ("view", "flat", "filled")

    def __init__(self, view: Any, flat: FlatGrad) -> None:
        self.view = view
        self.flat = flat
        self.filled = False

    def __reduce__(self) -> tuple:
        # NOTE: a copy of a parameter (copy.deepcopy(model), pickle) belongs to no optimizer:
        # it gets no slot, rather than a copy of the whole flat gradient buffer
        return (_no_slot, ())

    def receive(self, leaf: Tensor, grad: Tensor) -> bool:
        """Autograd's first gradient for ``leaf`` since its ``.grad`` was None: copy it into
        the slot and make ``leaf.grad`` a new Tensor over the slot. False (nothing done) when
        the gradient does not fit the slot: another device, dtype or shape."""
        view, flat, data = self.view, self.flat, grad._data
        if grad._device is not flat.device or data.dtype != view.dtype or \
                data.shape != view.shape:
            return False
        flat.device.xp.copyto(view, data)
        leaf._grad = Tensor._make(view, flat.device)  # not .grad =, which would release
        self.mark_filled()
        return True

    def mark_filled(self) -> None:
        if not self.filled:
            self.filled = True
            self.flat.filled += 1

    def release(self) -> None:
        """The parameter's ``.grad`` was assigned: it may no longer be this slot's view."""
        if self.filled:
            self.filled = False
            self.flat.filled -= 1


def _no_slot() -> None:
    return None


class Bucket:
    """The parameters of one group sharing a device and dtype, flattened into one buffer,
    with their gradient slots, flat state and step counts."""

    def __init__(self, params: list[Tensor]) -> None:
        p0 = params[0]
        self.device = p0.device
        self.dtype = p0._data.dtype
        xp = self.device.xp
        self.params = params
        sizes = [int(p._data.size) for p in params]
        self.offsets: list[int] = np.concatenate([[0], np.cumsum(sizes)]).astype(
            np.int64).tolist()
        self.flat = xp.empty(self.offsets[-1], dtype=self.dtype)
        self.grads = FlatGrad(xp.empty_like(self.flat), self.device)
        self.views: list[Any] = []
        self.slots: list[GradSlot] = []
        for i, p in enumerate(params):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            view = self.flat[lo:hi].reshape(p._data.shape)
            xp.copyto(view, p._data)
            p._data = view
            self.views.append(view)
            slot = GradSlot(self.grads.buffer[lo:hi].reshape(view.shape), self.grads)
            if p._grad_slot is not None:  # another optimizer's: it loses this parameter
                p._grad_slot.release()
            p._grad_slot = slot
            self.slots.append(slot)
        self.state: dict[str, Any] = {}
        # updates each parameter has had (a list: NumPy's per-call cost on a tiny array was
        # a tenth of a step's host time), and the count they all share, or None
        self.steps = [0] * len(params)
        self.common_step: int | None = 0
        # capturable: the device step counts (float32, one per parameter; None until the first
        # capturable step, then made from `steps`), the 2 float64 step scalars count_steps
        # writes for the next update launch, and the histories (see the module doc)
        self.step_counts: Any = None
        self.step_scalars: Any = None
        self.histories = [0] * len(params)
        self.common_history: int | None = 0
        self._renamed: dict[int, int] = {}  # this step's old history -> new history
        self._next_history = 1
        self._aligned: tuple[tuple[int, ...], bool] | None = None  # (state ids, result)

    # ---- the steady state: O(1), or one identity test per parameter ------------------
    def data_in_place(self) -> bool:
        """Whether every parameter's ``.array`` is still its view of the flat buffer (nothing
        was moved, cast or assigned since): one identity test per parameter (a plain loop:
        measured faster than ``all(map(operator.is_, ...))`` on CPython 3.11)."""
        for p, view in zip(self.params, self.views):
            if p._data is not view:
                return False
        return True

    def grads_in_slots(self) -> bool:
        """Whether every parameter's ``.grad`` is its slot: the flat gradient buffer holds the
        gradients of the whole bucket. The count, then one identity test per parameter: a
        gradient whose array was replaced in place (``p.grad.data = t``, ``p.grad.set_(t)``)
        is still counted, and must be copied in, not read stale from the slot."""
        if self.grads.filled != len(self.params):
            return False
        for p, slot in zip(self.params, self.slots):
            g = p._grad
            if g is None or g._data is not slot.view:
                return False
        return True

    def aligned(self, lo: int) -> int:
        """``ALIGNED16`` if the bucket's arrays, sliced from element ``lo``, all start on a
        16-byte boundary, else 0 (their base addresses are checked again only when the set
        of state arrays changes)."""
        ids = tuple(map(id, self.state.values()))
        if self._aligned is None or ids != self._aligned[0]:
            base = update_rules.aligned16(self.flat, self.grads.buffer, *self.state.values())
            self._aligned = (ids, base)
        if self._aligned[1] and (lo * self.dtype.itemsize) % 16 == 0:
            return update_rules.ALIGNED16
        return 0

    def set_steps(self, first: int, last: int, step: int) -> None:
        history = self._renamed.get(self.histories[first])
        if history is None:
            history = self._renamed[self.histories[first]] = self._next_history
            self._next_history += 1
        if first == 0 and last == len(self.params):
            self.steps = [step] * last
            self.common_step = step
            self.histories = [history] * last
            self.common_history = history
        else:
            self.steps[first:last] = [step] * (last - first)
            self.common_step = step if self.steps.count(step) == len(self.steps) else None
            self.histories[first:last] = [history] * (last - first)
            self.common_history = history if self.histories.count(history) == len(
                self.histories) else None

    def begin_step(self) -> None:
        """A new optimizer step: parameters updated in it get new histories."""
        self._renamed.clear()

    def recount_steps(self) -> None:
        """After step counts were set one by one (loading a state dict): the device counts
        are made again from them, and equal counts are equal histories."""
        s0 = self.steps[0]
        self.common_step = s0 if self.steps.count(s0) == len(self.steps) else None
        self.histories = [-1 - s for s in self.steps]
        self.common_history = None if self.common_step is None else self.histories[0]
        self.step_counts = None

    def device_steps(self) -> tuple[Any, Any]:
        """The device step counts and step-scalar array (made on first use, from the host's
        counts, which are exact until a capturable step has run)."""
        if self.step_counts is None:
            with self.device:
                self.step_counts = self.device.asarray(np.asarray(self.steps, np.float32))
                self.step_scalars = self.device.xp.zeros(2, np.float64)
        return self.step_counts, self.step_scalars

    # ---- everything else: per parameter ----------------------------------------------
    def moved(self) -> bool:
        """Whether a parameter now lives on another device or has another dtype (the model
        was moved or cast after the optimizer was made): the layout must be rebuilt."""
        return any(p.device is not self.device or p._data.dtype != self.dtype
                   for p in self.params)

    def adopt_replaced_data(self) -> None:
        """Take back parameters whose ``.array`` was replaced since the last step."""
        for i, p in enumerate(self.params):
            view = self.views[i]
            if p._data is view:
                continue
            if p._data.shape != view.shape:
                raise RuntimeError(
                    f"optimizer: a parameter changed shape from {tuple(view.shape)} to "
                    f"{tuple(p._data.shape)} after the optimizer was made; its state no "
                    "longer fits (create a new optimizer)")
            self.device.xp.copyto(view, p._data)
            p._data = view

    def foreign_grads(self) -> list[int]:
        """The parameters whose ``.grad`` is not their slot's view (a user's tensor, one made
        by create_graph, another dtype, ...), in order; parameters whose ``.grad`` is their
        slot's view are counted as filled again."""
        out = []
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            slot = self.slots[i]
            # NOTE: the slot must also still be the parameter's: a later optimizer over the
            # same parameter took it over, and only that one hears of assignments now.
            if g._data is slot.view and p._grad_slot is slot:
                slot.mark_filled()
            else:
                slot.release()
                out.append(i)
        return out

    def copy_into_slot(self, i: int) -> None:
        """Copy parameter ``i``'s (foreign) gradient into its slot; it stays the user's."""
        g = self.params[i].grad
        assert g is not None  # foreign_grads() lists only parameters that have one
        view = self.slots[i].view
        if g.shape != view.shape:
            raise RuntimeError(f"optimizer: a gradient of shape {tuple(g.shape)} was assigned "
                               f"to a parameter of shape {tuple(view.shape)}")
        # raw device work: a CUDA graph capture on emu records it (autograd.device_work)
        device_work(self.device, lambda: self.device.xp.copyto(view, g._data,
                                                               casting="same_kind"), [view])

    def runs(self, key: list[int]) -> list[tuple[int, int]]:
        """Maximal ranges of parameters that have a gradient and the same ``key`` (their
        step counts, or histories): each is updated by one call (PyTorch skips parameters
        whose ``.grad`` is None)."""
        out: list[tuple[int, int]] = []
        start = None
        for i, p in enumerate(self.params):
            if p.grad is None:
                if start is not None:
                    out.append((start, i))
                    start = None
            elif start is None:
                start = i
            elif key[i] != key[start]:
                out.append((start, i))
                start = i
        if start is not None:
            out.append((start, len(self.params)))
        return out

    def slot_runs(self, foreign: list[int]) -> list[tuple[int, int]]:
        """Maximal ranges of parameters whose gradient is in their slot (``foreign`` from
        :meth:`foreign_grads`), as element ranges of the flat gradient buffer."""
        skip = set(foreign)
        out: list[tuple[int, int]] = []
        start = None
        for i, p in enumerate(self.params):
            if p.grad is None or i in skip:
                if start is not None:
                    out.append((self.offsets[start], self.offsets[i]))
                    start = None
            elif start is None:
                start = i
        if start is not None:
            out.append((self.offsets[start], self.offsets[-1]))
        return out
