"""Kernel families: the one selector of (family, device, dtype) -> implementation.

A kernel family is an op family with CUDA kernels of its own (conv2d, pool2d, the recurrent
cells, the optimizer updates). It has the same three files in ``dlcore/ops``: ``<family>.py``
(autograd Functions, argument checks, output shapes), ``<family>_cpu.py`` (NumPy) and
``<family>_cuda.py`` (launches, shared by ``cuda`` and ``emu``). The two implementation modules
provide the same array-level functions, device first; the family file declares itself once::

    CONV2D = KernelFamily("conv2d", "conv2d.cu", cpu=conv_cpu, kernel=conv_cuda)
    impl = CONV2D.select(device, x.dtype, "conv2d")   # conv_cpu or conv_cuda
    impl.conv2d_forward(device, x, w, ...)

The policy, stated here and nowhere else:

* a device with a kernel runner (``cuda``; ``emu``, which runs the same kernels on the CPU
  emulator) runs the family's kernels, for the dtypes the family has kernels for;
* the ``cpu`` device runs the family's NumPy path, for the dtypes it declares;
* any other (family, device, dtype) raises one :class:`TypeError` naming the op, the dtype,
  the device and the dtypes supported there. Never a silent fallback from the kernels to
  array-module code: a GPU user who asks for a dtype without a kernel must learn that it is
  missing, not get a slow path that looks like ours.

Families also carry their ``dlcore check`` cases (``@FAMILY.check("name")`` beside their
Functions); :func:`families` lists every family imported so far.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["CTYPES", "FLOAT_DTYPES", "FLOAT_DTYPES_BF16", "KERNEL_DTYPES", "CheckCase",
           "KernelFamily", "ctype", "families"]

# The one dtype -> C type table of the kernels' template arguments. bfloat16 arrays are
# ml_dtypes' on emu and uint16 words on cuda (dlcore.dtypes): both are __nv_bfloat16's bits.
CTYPES: dict[np.dtype, str] = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
                               np.dtype(np.float16): "__half",
                               np.dtype(ml_dtypes.bfloat16): "__nv_bfloat16"}
# What a family's kernels take unless it says otherwise (families with __half kernels add it).
KERNEL_DTYPES: tuple[np.dtype, ...] = (np.dtype(np.float32), np.dtype(np.float64))
# What NumPy computes in: the cpu path of every family takes these unless it says otherwise
# (float16 computed in float32 and rounded once per result).
FLOAT_DTYPES: tuple[np.dtype, ...] = (np.dtype(np.float16), np.dtype(np.float32),
                                      np.dtype(np.float64))
# The cpu dtypes of the families whose NumPy path also takes bfloat16 (ml_dtypes), computed
# the same way (conv2d, pool2d, the recurrent cells). NOTE: an opt-in rather than the default,
# so a family (the optimizer updates) does not take bfloat16 before its code was checked for it.
FLOAT_DTYPES_BF16: tuple[np.dtype, ...] = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16),
                                           np.dtype(np.float32), np.dtype(np.float64))

CheckCase = Callable[[Any], dict[str, np.ndarray]]


def ctype(dtype: Any) -> str:
    """The C type of a kernel template argument for ``dtype`` (``float32`` -> ``"float"``;
    uint16, which is no tensor dtype, is cuda's bfloat16 storage -> ``"__nv_bfloat16"``)."""
    dt = np.dtype(dtype)
    if dt == _BF16_WORDS:
        return "__nv_bfloat16"
    try:
        return CTYPES[dt]
    except KeyError:
        raise TypeError(f"no CUDA kernel element type for {np.dtype(dtype)}; kernels take "
                        f"{_names(KERNEL_DTYPES)}") from None


def _names(dtypes: Iterable[np.dtype]) -> str:
    return ", ".join(str(d) for d in dtypes)


class KernelFamily:
    """One op family with kernels: its source file, its two implementations and the dtypes
    each takes. ``select`` applies the policy of this module."""

    def __init__(self, name: str, source: str, *, cpu: ModuleType | type,
                 kernel: ModuleType | type,
                 kernel_dtypes: Iterable[Any] = KERNEL_DTYPES,
                 cpu_dtypes: Iterable[Any] = FLOAT_DTYPES) -> None:
        self.name, self.source = name, source
        self.cpu, self.kernel = cpu, kernel
        self.kernel_dtypes = tuple(np.dtype(d) for d in kernel_dtypes)
        self.cpu_dtypes = tuple(np.dtype(d) for d in cpu_dtypes)
        for d in self.kernel_dtypes:
            ctype(d)  # every kernel dtype has a C type
        self.checks: dict[str, CheckCase] = {}
        self.tolerances: dict[str, tuple[float | None, float | None]] = {}
        self.emu_tolerances: dict[str, float] = {}
        self._selected: dict[tuple[Any, np.dtype], Any] = {}  # (device, dtype) -> impl
        _FAMILIES[name] = self

    def __repr__(self) -> str:
        return f"<KernelFamily {self.name} ({self.source})>"

    def select(self, device: Any, dtype: Any, op: str | None = None) -> Any:
        """The implementation for ``device`` and ``dtype`` (the ``kernel`` one where the device
        runs kernels, else ``cpu``), or a TypeError naming ``op`` and what is supported."""
        hit = self._selected.get((device, dtype))
        if hit is not None:
            return hit
        on_kernels = device.kernels is not None
        supported = self.kernel_dtypes if on_kernels else self.cpu_dtypes
        dt = np.dtype(dtype)
        if dt == _BF16_WORDS and device.is_cuda:  # cuda holds bfloat16 as its uint16 words
            dt = np.dtype(ml_dtypes.bfloat16)
        if dt not in supported:
            path = (f"the {self.name} kernels take" if on_kernels
                    else f"the {self.name} cpu path takes")
            raise TypeError(f"{op or self.name}: dtype {dt} is not supported on device "
                            f"{device}; {path} {_names(supported)}")
        impl = self.kernel if on_kernels else self.cpu
        self._selected[(device, dt)] = impl
        return impl

    def check(self, name: str, rtol: float | None = None, atol: float | None = None,
              emu_rtol: float | None = None) -> Callable[[CheckCase], CheckCase]:
        """Register a ``dlcore check`` case: ``case(device) -> {quantity: array}``, run on the
        checked device and on ``cpu`` and compared quantity by quantity, to float32's
        tolerances unless the case states its own (``rtol``, ``atol``: a 16-bit case's bound,
        derived from its roundings where it is declared). ``emu_rtol``: the case's bound, as a
        fraction of each output's largest magnitude, when the GPU is compared with the
        emulator (``dlcore check --reference emu``), where a case does more than run the same
        kernels (cuBLAS GEMMs beside them, 16-bit storage); 1e-6 otherwise."""
        def register(case: CheckCase) -> CheckCase:
            if name in self.checks:
                raise ValueError(f"{self.name}: check case {name!r} registered twice")
            self.checks[name] = case
            if rtol is not None or atol is not None:
                self.tolerances[name] = (rtol, atol)
            if emu_rtol is not None:
                self.emu_tolerances[name] = emu_rtol
            return case
        return register


_BF16_WORDS = np.dtype(np.uint16)
_FAMILIES: dict[str, KernelFamily] = {}


def families() -> list[KernelFamily]:
    """Every kernel family declared so far (``import dlcore`` declares them all)."""
    return list(_FAMILIES.values())
