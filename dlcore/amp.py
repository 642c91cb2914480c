"""Mixed-precision training: ``autocast`` and ``GradScaler``, PyTorch's ``torch.amp`` names.

float16 gradients underflow: small ones round to zero. ``GradScaler`` multiplies the loss by a
large scale before backward, so the gradients are scaled too, then divides them back before
the optimizer step, skipping the step when the scale was too large (a gradient is inf or NaN)
and adapting the scale: halve it after such a step, double it after ``growth_interval`` clean
steps in a row (PyTorch's rules, so the same inf/NaN pattern gives the same scale sequence)::

    scaler = dlcore.amp.GradScaler("cuda")
    for x, y in loader:
        opt.zero_grad()
        with dlcore.autocast("cuda"):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)      # unscales (unless unscale_ ran), skips the step on inf/NaN
        scaler.update()

The unscale and the inf/NaN check are one fused pass over each optimizer bucket's flat
gradient buffer, where backward put the gradients (one kernel launch per bucket on ``cuda`` and
``emu``), not tensor by tensor and without gathering; ``clip_grad_norm_`` between ``unscale_``
and ``step`` then works on the same memory. As in PyTorch, the test is on the scaled gradients,
before dividing.

No host sync (CUDA graphs can capture the whole step). The state lives on the scaler's device,
as PyTorch's tensors do: ``scale`` (float32, 1 element), ``growth_tracker`` (int32) and one int32
found_inf flag per optimizer of the iteration. ``scale(outputs)`` multiplies by the scale tensor
(a differentiable product with a 0-d float32 tensor: PyTorch's dtype rules, so a float16 tensor
stays float16 and a 0-d float16 loss becomes float32); ``unscale_`` launches the unscale kernel,
which reads the scale and takes 1 / scale in float32 itself and sets the optimizer's flag;
``step`` hands the flag to the optimizer's kernels (``optimizer.found_inf``, PyTorch's protocol
for optimizers whose ``_step_supports_amp_scaling``: capturable Adam/AdamW/RMSprop/Adagrad, and
SGD unless it has momentum with dampening), which do nothing when it is set; ``update`` is one
one-thread kernel (PyTorch's ``_amp_update_scale_``), which also clears the flags. Nothing is
read back: ``step`` returns None, since whether the step ran is not known on the host without a
sync. Optimizers that keep per-step state on the host (non-capturable Adam, RMSprop, Adagrad)
need the flag read back at ``step`` (a sync, as PyTorch's non-fused optimizers), and so do
optimizers with parameters on another device than the scaler's, which are unscaled with a
host-computed ``1 / scale``. ``get_scale()`` and ``state_dict()`` read the device values back
(syncs, for outside a captured region). On ``cpu`` the same code runs on NumPy arrays.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from . import cuda
from .device import Device
from .ops import optim as update_rules
from .precision import autocast
from .tensor import Tensor

__all__ = ["GradScaler", "autocast"]

_READY, _UNSCALED, _STEPPED = "ready", "unscaled", "stepped"


class GradScaler:
    """Loss scaling for float16 training (``torch.amp.GradScaler``'s interface and rules)."""

    def __init__(self, device: str = "cuda", init_scale: float = 2.0 ** 16,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True) -> None:
        if not growth_factor > 1.0:
            raise ValueError(f"GradScaler: growth_factor must be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"GradScaler: backoff_factor must be in (0, 1), got "
                             f"{backoff_factor}")
        if not (isinstance(growth_interval, int) and growth_interval > 0):
            raise ValueError(f"GradScaler: growth_interval must be a positive int, got "
                             f"{growth_interval!r}")
        self.device = Device(device)
        if enabled and self.device.is_cuda and not cuda.is_available():
            warnings.warn("GradScaler is enabled, but CUDA is not available; disabling it "
                          "(as PyTorch does)", UserWarning, stacklevel=2)
            enabled = False
        self._enabled = bool(enabled)
        self._growth_factor, self._backoff_factor = float(growth_factor), float(backoff_factor)
        self._growth_interval = growth_interval
        # this iteration's optimizers (by id) -> stage, found_inf slot, and found_inf when known
        # on the host; slots are handed out in the order of first use, so an iteration that
        # repeats itself (a captured one) uses the same flags every time
        self._per_optimizer: dict[int, dict[str, Any]] = {}
        if self._enabled:
            xp = self.device.xp
            with self.device:
                # float32, as PyTorch keeps its scale in a float32 tensor
                self._scale = xp.full(1, init_scale, dtype=np.float32)
                self._growth_tracker = xp.zeros(1, dtype=np.int32)
                self._found_inf = xp.zeros(4, dtype=np.int32)

    def is_enabled(self) -> bool:
        return self._enabled

    def get_scale(self) -> float:
        """The current scale (1.0 when disabled): a read from the device, so a sync."""
        return float(self.device.to_host(self._scale)[0]) if self._enabled else 1.0

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def scale(self, outputs: Any) -> Any:
        """``outputs`` (a Tensor, or lists/tuples of them) times the scale."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, Tensor):
            scale = Tensor._make(self._scale.reshape(()), self.device)
            if outputs.device is not self.device:
                scale = scale.to(outputs.device)
            if outputs.ndim > 0 and outputs.dtype.itemsize < 4:
                # NOTE: PyTorch's rule: a 16-bit tensor times a 0-d float32 one stays 16-bit,
                # the product taken in float32 and rounded once (its opmath)
                return (outputs.float() * scale).to(outputs.dtype)
            return outputs * scale
        if isinstance(outputs, list | tuple):
            return type(outputs)(self.scale(o) for o in outputs)
        raise TypeError(f"GradScaler.scale: expected a Tensor or a list/tuple of Tensors, got "
                        f"{type(outputs).__name__}")

    def _state(self, optimizer: Any) -> dict[str, Any]:
        state = self._per_optimizer.get(id(optimizer))
        if state is None:
            slot = len(self._per_optimizer)
            if slot == self._found_inf.size:  # more optimizers than flags: twice as many
                with self.device:
                    grown = self.device.xp.zeros(2 * slot, dtype=np.int32)
                    grown[:slot] = self._found_inf
                self._found_inf = grown
            state = self._per_optimizer[id(optimizer)] = {"stage": _READY, "slot": slot,
                                                          "found_inf": None}
        return state

    def _flag(self, state: dict[str, Any]) -> Any:
        """The optimizer's found_inf flag: a 1-element int32 view on the scaler's device."""
        return self._found_inf[state["slot"]:state["slot"] + 1]

    def unscale_(self, optimizer: Any) -> None:
        """Divide ``optimizer``'s gradients by the scale in place (once per step: call it
        before clipping gradients, then ``step``)."""
        if not self._enabled:
            return
        state = self._state(optimizer)
        if state["stage"] == _UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the "
                               "last update()")
        if state["stage"] == _STEPPED:
            raise RuntimeError("unscale_() is being called after step()")
        flag = self._flag(state)
        if optimizer._bucket_devices() <= {self.device}:
            optimizer._unscale_grads_device_(self._scale, flag)  # found_inf stays on the device
        else:  # parameters elsewhere: 1 / scale and the flags through the host
            inv_scale = float(np.float32(1.0) / np.float32(self.get_scale()))  # float32, as PyTorch
            state["found_inf"] = optimizer._unscale_grads_(inv_scale)
            flag.fill(int(state["found_inf"]))
        state["stage"] = _UNSCALED

    def step(self, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        """Unscale (unless done) and run ``optimizer.step()``, unless a gradient is inf or
        NaN: then the step is skipped (and ``update`` lowers the scale). Without a sync (an
        optimizer whose ``_step_supports_amp_scaling``, on the scaler's device) the optimizer's
        kernels skip it and the host does not know whether they did: returns None. Otherwise
        the flag is read back and the result is what ``optimizer.step()`` returns, or None
        when skipped."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("GradScaler.step: closure use is not supported when the "
                               "scaler is enabled")
        state = self._state(optimizer)
        if state["stage"] == _STEPPED:
            raise RuntimeError("step() has already been called since the last update()")
        if state["stage"] == _READY:
            self.unscale_(optimizer)
        found_inf = state["found_inf"]
        result = None
        if found_inf is None and getattr(optimizer, "_step_supports_amp_scaling", False):
            # PyTorch's protocol: the optimizer reads these attributes during its step
            optimizer.found_inf = Tensor._make(self._flag(state), self.device)
            optimizer.grad_scale = None  # the gradients are unscaled already
            try:
                optimizer.step(*args, **kwargs)
            finally:
                del optimizer.found_inf, optimizer.grad_scale
        else:
            if found_inf is None:  # an optimizer with host step state: read the flag (a sync)
                found_inf = bool(self.device.to_host(self._flag(state))[0])
            result = None if found_inf else optimizer.step(*args, **kwargs)
        state["stage"] = _STEPPED
        return result

    def update(self, new_scale: float | Tensor | None = None) -> None:
        """Adapt the scale after this iteration's steps: times ``backoff_factor`` when any
        optimizer found an inf/NaN (and the growth count restarts), else count a clean step
        and times ``growth_factor`` after ``growth_interval`` of them; or set ``new_scale``."""
        if not self._enabled:
            return
        if new_scale is not None:
            with self.device:
                if isinstance(new_scale, Tensor):  # copied on the device, no host read
                    value = new_scale.to(self.device)._data.reshape(-1)
                    self._scale[...] = value.astype(np.float32)
                else:
                    self._scale.fill(np.float32(new_scale))
                self._found_inf.fill(0)
        else:
            if not self._per_optimizer:
                raise RuntimeError("GradScaler.update: no inf checks were recorded before "
                                   "update() (call step() or unscale_() first)")
            update_rules.update_scale(self.device, self._scale, self._growth_tracker,
                                      self._found_inf, self._growth_factor,
                                      self._backoff_factor, self._growth_interval)
        self._per_optimizer.clear()

    def state_dict(self) -> dict[str, Any]:
        """PyTorch's keys: scale, growth_factor, backoff_factor, growth_interval and
        _growth_tracker (empty when disabled)."""
        if not self._enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor,
                "growth_interval": self._growth_interval,
                "_growth_tracker": int(self.device.to_host(self._growth_tracker)[0])}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._enabled:
            return
        if not state_dict:
            raise RuntimeError("GradScaler.load_state_dict: the state dict is empty (saved "
                               "from a disabled scaler?)")
        with self.device:
            self._scale.fill(np.float32(state_dict["scale"]))
            self._growth_tracker.fill(np.int32(state_dict["_growth_tracker"]))
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])

