"""Helpers for the ``dlcore check`` cases that the kernel families declare beside their
Functions (``@FAMILY.check(name)``): seeded inputs, forward and backward on one device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..device import Device
from ..tensor import Tensor


def seeded_arrays(seed: int, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    """float32 standard-normal host arrays, the same numbers for every device."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def forward_backward(device: Device, seed: int, shapes: list[tuple[int, ...]],
                     op: Callable[..., Tensor], names: list[str]) -> dict[str, np.ndarray]:
    """``op(*inputs)`` on seeded inputs that require grad, then backward with a seeded
    upstream gradient; the forward output and every input's gradient, by name."""
    inputs = [Tensor(a, device=device, requires_grad=True) for a in seeded_arrays(seed, *shapes)]
    out = op(*inputs)
    upstream = np.random.default_rng(seed + 1).standard_normal(out.shape).astype(np.float32)
    out.backward(Tensor(upstream, device=device))
    result = {"forward": out.numpy()}
    for name, t in zip(names, inputs):
        assert t.grad is not None, f"no gradient reached input {name}"
        result[f"grad {name}"] = t.grad.numpy()
    return result


def kwargs_case(run: Callable[..., dict[str, np.ndarray]], **kwargs: Any
                ) -> Callable[[Device], dict[str, np.ndarray]]:
    """A check case ``case(device)`` that calls ``run(device, **kwargs)``."""
    def case(device: Device) -> dict[str, np.ndarray]:
        return run(device, **kwargs)
    return case
