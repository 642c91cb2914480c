"""``dlcore check``: every kernel-backed operation on a device (``cuda``, or ``emu`` to run
the same kernels on the CPU emulator) against the NumPy path of the ``cpu`` device.

Each case (declared by its kernel family, beside the family's Functions) builds small random
float32 inputs from a fixed seed, runs forward and a backward with a random upstream gradient
(or three optimizer updates) on both devices and compares every output and gradient:
``|device - cpu| <= atol + rtol * |cpu|``. The tolerances allow float32 summation order (the
kernels accumulate in another order than BLAS) and nothing more. Exit status 1 when any
comparison fails.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import numpy as np

from .. import ops
from ..backends import cudnn
from ..device import Device
from ..kernels import families
from ..kernels.family import CheckCase

RTOL, ATOL = 1e-4, 1e-5


def cases() -> dict[str, CheckCase]:
    """Every check case, as the kernel families declare them beside their Functions
    (``@FAMILY.check(name)`` in ``dlcore/ops/<family>.py``). Every module of ``dlcore.ops`` is
    imported first, so a new family's cases count without being listed anywhere."""
    for module in pkgutil.iter_modules(ops.__path__):
        importlib.import_module(f"{ops.__name__}.{module.name}")
    return {name: case for family in families() for name, case in family.checks.items()}


def tolerance(name: str) -> tuple[float, float]:
    """``(rtol, atol)`` of case ``name``: its family's stated bound, else float32's."""
    for family in families():
        if name in family.tolerances:
            rtol, atol = family.tolerances[name]
            return (RTOL if rtol is None else rtol, ATOL if atol is None else atol)
    return RTOL, ATOL


def run_checks(device: Device) -> list[dict[str, Any]]:
    """One row per case and compared quantity: ``case``, ``quantity``, ``max_abs_error``,
    ``ok`` (a case that raises is one failed row with the error). float32 convolutions run
    without TF32 here (``cudnn.allow_tf32`` is set False for the run and restored): the
    tolerances are float32's, and the TF32 path has its own bound in the tests."""
    previous = cudnn.allow_tf32
    cudnn.allow_tf32 = False
    try:
        return _run_checks(device)
    finally:
        cudnn.allow_tf32 = previous


def _run_checks(device: Device) -> list[dict[str, Any]]:
    rows = []
    for name, case in cases().items():
        try:
            got, want = case(device), case(Device("cpu"))
        except Exception as exc:  # report and go on: one broken kernel must not hide others
            rows.append({"case": name, "quantity": "error", "max_abs_error": float("nan"),
                         "ok": False, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rtol, atol = tolerance(name)
        for quantity, expected in want.items():
            actual = got[quantity]
            error = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
            ok = actual.shape == expected.shape and bool(
                np.allclose(actual, expected, rtol=rtol, atol=atol))
            rows.append({"case": name, "quantity": quantity, "max_abs_error": error, "ok": ok})
    return rows
