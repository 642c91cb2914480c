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
gradient buffer, where backward put the gradients (``Optimizer._unscale_grads_``: one kernel
launch per bucket on ``cuda`` and ``emu``, whose inf flags are read back once), not tensor by
tensor and without gathering; ``clip_grad_norm_`` between ``unscale_`` and ``step`` then works
on the same memory. As in PyTorch, the test is on the scaled gradients, before dividing.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from . import cuda
from .device import Device
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
        # float32 arithmetic, as PyTorch keeps its scale in a float32 tensor
        self._scale = np.float32(init_scale)
        self._growth_factor, self._backoff_factor = float(growth_factor), float(backoff_factor)
        self._growth_interval = growth_interval
        self._growth_tracker = 0
        self._per_optimizer: dict[int, dict[str, Any]] = {}

    def is_enabled(self) -> bool:
        return self._enabled

    def get_scale(self) -> float:
        """The current scale (1.0 when disabled)."""
        return float(self._scale) if self._enabled else 1.0

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
            return outputs * float(self._scale)
        if isinstance(outputs, list | tuple):
            return type(outputs)(self.scale(o) for o in outputs)
        raise TypeError(f"GradScaler.scale: expected a Tensor or a list/tuple of Tensors, got "
                        f"{type(outputs).__name__}")

    def _state(self, optimizer: Any) -> dict[str, Any]:
        return self._per_optimizer.setdefault(id(optimizer), {"stage": _READY,
                                                              "found_inf": False})

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
        inv_scale = float(np.float32(1.0) / self._scale)  # float32, as PyTorch computes it
        state["found_inf"] = optimizer._unscale_grads_(inv_scale)
        state["stage"] = _UNSCALED

    def step(self, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        """Unscale (unless done) and run ``optimizer.step()``, unless a gradient is inf or
        NaN: then the step is skipped (and ``update`` lowers the scale). Returns what the
        optimizer's step returns, or None when skipped."""
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
        result = None if state["found_inf"] else optimizer.step(*args, **kwargs)
        state["stage"] = _STEPPED
        return result

    def update(self, new_scale: float | Tensor | None = None) -> None:
        """Adapt the scale after this iteration's steps: times ``backoff_factor`` when any
        optimizer found an inf/NaN (and the growth count restarts), else count a clean step
        and times ``growth_factor`` after ``growth_interval`` of them; or set ``new_scale``."""
        if not self._enabled:
            return
        if new_scale is not None:
            self._scale = np.float32(new_scale.item() if isinstance(new_scale, Tensor)
                                     else new_scale)
        else:
            if not self._per_optimizer:
                raise RuntimeError("GradScaler.update: no inf checks were recorded before "
                                   "update() (call step() or unscale_() first)")
            if any(s["found_inf"] for s in self._per_optimizer.values()):
                self._scale = np.float32(self._scale * np.float32(self._backoff_factor))
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self._growth_interval:
                    self._scale = np.float32(self._scale * np.float32(self._growth_factor))
                    self._growth_tracker = 0
        self._per_optimizer.clear()

    def state_dict(self) -> dict[str, Any]:
        """PyTorch's keys: scale, growth_factor, backoff_factor, growth_interval and
        _growth_tracker (empty when disabled)."""
        if not self._enabled:
            return {}
        return {"scale": float(self._scale), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor,
                "growth_interval": self._growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._enabled:
            return
        if not state_dict:
            raise RuntimeError("GradScaler.load_state_dict: the state dict is empty (saved "
                               "from a disabled scaler?)")
        self._scale = np.float32(state_dict["scale"])
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._growth_tracker = int(state_dict["_growth_tracker"])

