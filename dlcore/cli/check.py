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
# ``--reference emu``: the same kernel source on the GPU and on the emulator. Integer outputs
# (pooling indices) must be bit-identical; a float output may differ only by the rounding of
# contractions the two compilers fuse differently (NVRTC's FMA contraction against g++'s
# -ffp-contract=fast), so its error is taken relative to the output's scale (max |emu|) and
# bounded by EMU_RTOL, unless the case's family states another bound for what else differs
# (the recurrent cases' cuBLAS GEMMs: dlcore/ops/rnn.py).
EMU_RTOL = 1e-6


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


def run_checks(device: Device, reference: str = "cpu") -> list[dict[str, Any]]:
    """One row per case and compared quantity: ``case``, ``quantity``, ``max_abs_error``,
    ``ok`` (a case that raises is one failed row with the error). float32 convolutions run
    without TF32 here (``cudnn.allow_tf32`` is set False for the run and restored): the
    tolerances are float32's, and the TF32 path has its own bound in the tests.

    ``reference="emu"`` compares ``device`` with the emulator running the same kernels instead
    of with the NumPy path: integer outputs exactly, float outputs to ``EMU_RTOL`` of their
    scale; ``max_abs_error`` is then that scale-relative error."""
    if reference not in ("cpu", "emu"):
        raise ValueError(f"dlcore check: reference must be 'cpu' or 'emu', got {reference!r}")
    previous = cudnn.allow_tf32
    cudnn.allow_tf32 = False
    try:
        return _run_checks(device, Device(reference))
    finally:
        cudnn.allow_tf32 = previous


def _run_checks(device: Device, reference: Device) -> list[dict[str, Any]]:
    rows = []
    for name, case in cases().items():
        try:
            got, want = case(device), case(reference)
        except Exception as exc:  # report and go on: one broken kernel must not hide others
            rows.append({"case": name, "quantity": "error", "max_abs_error": float("nan"),
                         "ok": False, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rtol, atol = tolerance(name)
        for quantity, expected in want.items():
            actual = got[quantity]
            if reference.runs_kernels:
                rows.append({"case": name, "quantity": quantity,
                             **_same_kernel_agreement(actual, expected, emu_tolerance(name))})
                continue
            error = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
            ok = actual.shape == expected.shape and bool(
                np.allclose(actual, expected, rtol=rtol, atol=atol))
            rows.append({"case": name, "quantity": quantity, "max_abs_error": error, "ok": ok})
    return rows


def emu_tolerance(name: str) -> float:
    """Case ``name``'s bound against the emulator: its family's stated one, else EMU_RTOL."""
    for family in families():
        if name in family.emu_tolerances:
            return family.emu_tolerances[name]
    return EMU_RTOL


def _same_kernel_agreement(actual: np.ndarray, expected: np.ndarray,
                           rtol: float) -> dict[str, Any]:
    """``max_abs_error`` (scale-relative for floats, absolute for integers) and ``ok`` of one
    output of the same kernel on two devices (``rtol`` of the output's scale; EMU_RTOL)."""
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return {"max_abs_error": float("nan"), "ok": False,
                "error": f"shape/dtype {actual.shape} {actual.dtype} vs "
                         f"{expected.shape} {expected.dtype}"}
    if not expected.size:
        return {"max_abs_error": 0.0, "ok": True}
    if not np.issubdtype(expected.dtype, np.floating):
        return {"max_abs_error": float(np.max(np.abs(actual.astype(np.int64)
                                                     - expected.astype(np.int64)))),
                "ok": bool(np.array_equal(actual, expected))}
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    same = (a == e) | (np.isnan(a) & np.isnan(e))  # equal infinities and NaN agree
    if same.all():
        return {"max_abs_error": 0.0, "ok": True}
    finite = np.isfinite(e)
    scale = float(np.max(np.abs(e[finite]))) if finite.any() else 1.0
    error = float(np.max(np.abs(a - e)[~same])) / (scale or 1.0)
    return {"max_abs_error": error, "ok": bool(error <= rtol)}
