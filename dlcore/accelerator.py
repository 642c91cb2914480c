"""``dlcore.accelerator``: PyTorch's device-generic queries, as ported programs ask them::

    device = (dlcore.accelerator.current_accelerator()
              if dlcore.accelerator.is_available() else dlcore.device("cpu"))

The accelerator is CUDA (``emu`` is a test device, never picked here).
"""

from __future__ import annotations

from .device import Device, device_count

__all__ = ["current_accelerator", "device_count", "is_available"]


def is_available() -> bool:
    """Whether a CUDA GPU is usable (False, never an exception, without CuPy, driver or GPU)."""
    return device_count() > 0


def current_accelerator(check_available: bool = False) -> Device | None:
    """``device("cuda")`` (the current one) when there is an accelerator, else None; with
    ``check_available`` also None when it is present but unusable (PyTorch's argument)."""
    if device_count() == 0:
        return None
    return Device("cuda")
