"""Devices: the one place that decides where arrays live and which code runs on them.

A :class:`Device` owns everything that differs by device:

* ``device.xp`` -- the array module (``numpy`` for ``cpu`` and ``emu``, ``cupy`` for ``cuda``);
* ``device.kernels`` -- the kernel runner for our CUDA sources (``cupy.RawModule`` on
  ``cuda``, the CPU emulator on ``emu``, ``None`` on ``cpu``);
* ``device.asarray(data)`` / ``device.to_host(array)`` -- every host/device copy;
* ``device.new_generator(seed)`` -- its random number generator;
* ``with device:`` (or ``device.use()``) -- the current CUDA device for allocations and
  launches, and ``device.is_cuda`` / ``device.is_usable()`` for the few callers that must
  know (the data loader's pinned-memory path, checkpoint loading).

Operations never test ``isinstance(x, cupy.ndarray)`` nor ``device.type``; they ask the
tensor's device. This module is the only importer of CuPy (the kernel loader and
:mod:`dlcore.cuda` ask :func:`cupy_module`).
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

import numpy as np

from .dtypes import (BF16_WORDS, bfloat16, bfloat16_bits, bfloat16_value, check_supported,
                     get_default_dtype)

_KINDS = ("cpu", "cuda", "emu")

_cupy: Any = None
_cupy_error: str | None = None
_cupy_checked = False
_lock = threading.Lock()


def cupy_module() -> Any:
    """Return the ``cupy`` module, or ``None`` when it cannot be imported (reason in
    :func:`cupy_import_error`). Importing CuPy works without a GPU; using it does not."""
    global _cupy, _cupy_error, _cupy_checked
    if not _cupy_checked:
        with _lock:
            if not _cupy_checked:
                try:
                    import cupy  # the one guarded import of CuPy

                    _cupy = cupy
                except Exception as exc:  # ImportError, or a broken CUDA install
                    _cupy_error = f"{type(exc).__name__}: {exc}"
                _cupy_checked = True
    return _cupy


def cupy_import_error() -> str | None:
    cupy_module()
    return _cupy_error


class Device:
    """A place for tensors: ``cpu``, ``cuda[:i]`` or ``emu[:i]`` (NumPy arrays, CUDA kernels
    run by the CPU emulator). Devices are interned: ``device("cuda") is device("cuda:0")``,
    ``device("emu") is device("emu:0")``. Like CUDA's, the emulated devices have a current one
    per thread (``with device:``), and a kernel launched for another raises, so code that
    would touch the wrong GPU fails here too."""

    __slots__ = ("type", "index", "_xp", "_kernels", "_contexts")
    _interned: dict[tuple[str, int | None], Device] = {}

    type: str  # "cpu", "cuda" or "emu"
    index: int | None  # the ordinal on cuda and on emu:1.., None on cpu and emu (emu:0)
    _xp: Any  # the array module, resolved on first use
    _kernels: Any  # the KernelRunner, built on first use
    _contexts: threading.local  # per-thread stack of `with device:` contexts

    def __new__(cls, spec: str | Device = "cpu", index: int | None = None) -> Device:
        if isinstance(spec, Device):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"device: expected a string such as 'cpu' or 'cuda:0', got {spec!r}")
        kind, _, idx = spec.strip().lower().partition(":")
        if kind not in _KINDS:
            raise ValueError(f"device: unknown device type {kind!r} in {spec!r}; "
                             f"expected one of {', '.join(_KINDS)}")
        if idx:
            if not idx.isdigit():
                raise ValueError(f"device: bad device index in {spec!r}")
            index = int(idx)
        if kind == "cuda":
            index = 0 if index is None else index
        elif kind == "emu" and index not in (None, 0):
            if not 0 < index < EMU_DEVICES:
                raise ValueError(f"device: the emulator has devices emu:0 .. "
                                 f"emu:{EMU_DEVICES - 1}, not emu:{index}")
        elif index not in (None, 0):
            raise ValueError(f"device: {kind} has no device index {index}")
        else:
            index = None  # cpu, and emu:0 which is plain "emu"
        key = (kind, index)
        dev = cls._interned.get(key)
        if dev is None:
            dev = object.__new__(cls)
            dev.type, dev.index, dev._xp, dev._kernels = kind, index, None, None
            dev._contexts = threading.local()
            cls._interned[key] = dev
        return dev

    @property
    def xp(self) -> Any:
        """The array module for this device."""
        xp = self._xp
        if xp is None:
            if self.type == "cuda":
                xp = _require_cuda(self)
            else:
                xp = np
            self._xp = xp
        return xp

    @property
    def kernels(self) -> Any:
        """The kernel runner for ``kernels/*.cu`` on this device (``None`` on ``cpu``)."""
        if self._kernels is None and self.runs_kernels:
            from . import kernels  # the loader imports this module

            self._kernels = kernels.runner_for(self)
        return self._kernels

    @property
    def runs_kernels(self) -> bool:
        """Whether our CUDA kernels run here: on the GPU (``cuda``) or the emulator (``emu``)."""
        return self.type != "cpu"

    @property
    def is_cuda(self) -> bool:
        """Whether arrays live in GPU memory (CuPy) on this device."""
        return self.type == "cuda"

    def is_usable(self) -> bool:
        """Whether this machine has this device (a ``cuda:i`` needs CuPy, a driver and at least
        i + 1 GPUs; ``cpu`` and ``emu`` always exist)."""
        return self.index is None or self.index < device_count()

    def use(self) -> Any:
        """Context manager making this device current for allocations and launches (CuPy's
        current device on cuda, the emulator's on emu)."""
        if self.type == "cuda":
            return self.xp.cuda.Device(self.index)
        if self.type == "emu":
            return _EmuCurrent(self.index or 0)
        return _NullContext()

    def is_current(self) -> bool:
        """Whether this is the current device of its kind in this thread (always true on cpu):
        kernels for it must be launched only then."""
        if self.type == "cuda":
            return int(self.xp.cuda.runtime.getDevice()) == self.index
        if self.type == "emu":
            return getattr(_emu_current, "index", 0) == (self.index or 0)
        return True

    def synchronize(self) -> None:
        """Wait until this device has finished the work queued on it (a no-op off the GPU,
        where every operation is synchronous)."""
        if self.type == "cuda":
            self.xp.cuda.Device(self.index).synchronize()

    def __enter__(self) -> Device:
        """``with device:`` -- :meth:`use` as a statement; nests, per thread."""
        stack = self._contexts.__dict__.setdefault("stack", [])
        if self.type == "cpu" or self.is_current():
            stack.append(None)  # already current: nothing to switch (the common case)
            return self
        ctx = self.use()
        stack.append(ctx)
        ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        ctx = self._contexts.stack.pop()
        if ctx is not None:
            ctx.__exit__(*exc)

    # ---- copies ---------------------------------------------------------------------
    def asarray(self, data: Any, dtype: np.dtype | None = None, copy: bool = False) -> Any:
        """``data`` (a NumPy or CuPy array, anything with ``__cuda_array_interface__``, or
        Python data) as an array of this device, cast to ``dtype`` if given; ``copy`` forces
        a new array even when ``data`` already is one of this device. Python floats become
        the default float dtype (as in PyTorch), Python ints int64; arrays keep their dtype."""
        if isinstance(data, np.ndarray | np.generic) or hasattr(data, "__cuda_array_interface__"):
            src = np.dtype(data.dtype)
            if src == BF16_WORDS and not isinstance(data, np.ndarray | np.generic):
                src = bfloat16  # a GPU array of uint16 (no tensor dtype) is bfloat16's words
            check_supported(src if dtype is None else np.dtype(dtype), "tensor")
            if self.type == "cuda" and (dtype == bfloat16 or src == bfloat16):
                return self._bfloat16_words(data, dtype, copy)
            if src == bfloat16 and data.dtype == BF16_WORDS:  # cuda words to the host
                data = Device("cuda").to_host(data)
            if self.type != "cuda":
                if not isinstance(data, np.ndarray | np.generic):
                    data = data.get()  # a CuPy array to the host
                return np.array(data, dtype=dtype, copy=True) if copy else \
                    np.asarray(data, dtype=dtype)
            with self.use():
                xp = self.xp
                return xp.array(data, dtype=dtype, copy=True) if copy else \
                    xp.asarray(data, dtype)
        try:
            host = np.array(data, dtype=dtype)
        except ValueError:  # ragged nesting, or strings under a numeric dtype
            raise TypeError(f"tensor: cannot build a tensor from {type(data).__name__} of "
                            "ragged or non-numeric elements") from None
        if dtype is None and host.dtype == np.float64:
            host = host.astype(get_default_dtype())
        if host.dtype == object:
            raise TypeError(f"tensor: cannot build a tensor from {type(data).__name__} of "
                            "ragged or non-numeric elements")
        check_supported(host.dtype, "tensor")
        if self.type == "cuda":
            with self.use():
                return self.xp.asarray(host.view(BF16_WORDS) if host.dtype == bfloat16 else host)
        return host

    def _bfloat16_words(self, data: Any, dtype: np.dtype | None, copy: bool) -> Any:
        """A cuda bfloat16 array (uint16 words, see dlcore.dtypes) from a NumPy or CuPy array:
        host bfloat16 is uploaded bit for bit, CuPy floats are rounded on the device by
        :func:`~dlcore.dtypes.bfloat16_bits`; cuda words to another ``dtype`` are widened."""
        xp = self.xp
        with self.use():
            if isinstance(data, np.ndarray | np.generic):
                host = np.asarray(data) if dtype is None else np.asarray(data, dtype=dtype)
                return xp.array(host.view(BF16_WORDS), copy=True)
            if data.dtype == BF16_WORDS:  # already words (a cuda bfloat16 array)
                if dtype is None or dtype == bfloat16:
                    return xp.array(data, copy=True) if copy else data
                return bfloat16_value(xp, data).astype(dtype)
            return bfloat16_bits(xp, xp.asarray(data, dtype=xp.float32))

    def to_host(self, array: Any) -> np.ndarray:
        """A NumPy array with ``array``'s values: ``array`` itself on ``cpu``/``emu``, a copy
        from GPU memory on ``cuda`` (bfloat16 words come back as ml_dtypes bfloat16)."""
        if isinstance(array, np.ndarray):
            return array
        if isinstance(array, np.generic):
            return np.asarray(array)
        host = array.get()
        return host.view(bfloat16) if host.dtype == BF16_WORDS else host

    def astype(self, array: Any, dtype: np.dtype) -> Any:
        """``array`` (of this device) cast to ``dtype``: ``array.astype`` except for bfloat16 on
        cuda, whose uint16 words are converted on the bit pattern (see dlcore.dtypes).
        NOTE: there, float64 and wide integers reach bfloat16 through float32 (two roundings;
        one differs from the direct rounding only within 2^-29 of a bfloat16 tie)."""
        if self.type != "cuda" or (array.dtype != BF16_WORDS and dtype != bfloat16):
            return array.astype(dtype)
        xp = self.xp
        with self.use():
            if array.dtype == BF16_WORDS:
                return array.copy() if dtype == bfloat16 else \
                    bfloat16_value(xp, array).astype(dtype)
            return bfloat16_bits(xp, array.astype(xp.float32))

    def move(self, array: Any, source: Device) -> Any:
        """A copy of ``array`` (an array of ``source``) on this device."""
        if capturing:
            check_not_capturing(source, f"copy from {source} to {self}")
            check_not_capturing(self, f"copy from {source} to {self}")
        if self.type == "cuda":
            with self.use():
                if isinstance(array, np.ndarray) and array.dtype == bfloat16:
                    array = array.view(BF16_WORDS)  # bfloat16 travels as its words
                return self.xp.array(array)
        return source.to_host(array) if source.type == "cuda" else array.copy()

    # ---- streams, events, pinned host memory (cuda) -----------------------------------
    def new_stream(self) -> Any:
        """A new non-blocking CUDA stream on this device (work on it overlaps the current
        stream's until an event orders them)."""
        with self.use():
            return self._cuda_only("new_stream").cuda.Stream(non_blocking=True)

    def current_stream(self) -> Any:
        """The CUDA stream this thread's work on this device is queued on."""
        with self.use():
            return self._cuda_only("current_stream").cuda.get_current_stream()

    def new_event(self) -> Any:
        """A CUDA event for ordering streams (no timing: cheaper to record and wait on)."""
        with self.use():
            return self._cuda_only("new_event").cuda.Event(disable_timing=True)

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised NumPy array in page-locked host memory (copies from it to this
        device are truly asynchronous). It returns to CuPy's pinned pool when freed."""
        memory = self._cuda_only("pinned_empty").cuda.alloc_pinned_memory(
            int(math.prod(shape)) * np.dtype(dtype).itemsize)
        return np.frombuffer(memory, dtype, int(math.prod(shape))).reshape(shape)

    def _cuda_only(self, what: str) -> Any:
        if self.type != "cuda":
            raise RuntimeError(f"device {self}: {what} needs a cuda device")
        return self.xp

    # ---- random numbers -------------------------------------------------------------
    def new_generator(self, seed: int | None) -> Any:
        """A new random generator for host arrays, seeded with ``seed``: NumPy's PCG64
        ``Generator``, on ``cpu`` and ``emu`` alike (so both draw the same numbers). A cuda
        device's generator is :class:`dlcore.random.CudaGenerator` (its uniform and normal
        draws run on the device's Philox kernels, a layer above this one)."""
        if self.type == "cuda":
            raise ValueError("Device.new_generator: cuda generators are "
                             "dlcore.random.CudaGenerator (dlcore.random.generator_for)")
        return np.random.Generator(np.random.PCG64(seed))

    def __repr__(self) -> str:
        return f"device(type='{self.type}'" + (
            f", index={self.index})" if self.index is not None else ")")

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __reduce__(self) -> tuple:
        return (Device, (str(self),))


EMU_DEVICES = 4  # emu:0 .. emu:3, enough to test multi-device code paths
_emu_current = threading.local()  # .index: this thread's current emulated device (default 0)


class _EmuCurrent:
    """The emulator's ``cupy.cuda.Device(i)``: makes emu:i current in this thread."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __enter__(self) -> None:
        self.previous = getattr(_emu_current, "index", 0)
        _emu_current.index = self.index

    def __exit__(self, *exc: object) -> None:
        _emu_current.index = self.previous


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _require_cuda(dev: Device) -> Any:
    cp = cupy_module()
    if cp is None:
        raise RuntimeError(f"device {dev}: CuPy is not importable ({cupy_import_error()}); "
                           "install dlcore[cuda12] or dlcore[cuda13]")
    from . import cuda  # OOM retry and peak tracking over CuPy's pool

    n = device_count()
    assert dev.index is not None  # a cuda Device always has one
    if dev.index >= n:
        why = (f"no CUDA device is usable ({cuda.why_unavailable()})" if n == 0
               else f"only {n} CUDA device(s) present")
        raise RuntimeError(f"device {dev}: {why}")

    cuda.install_allocator()
    return cp


# ---- CUDA graph capture (dlcore.graphs) ---------------------------------------------------
# The devices a graph is being captured on, each with the capturing thread's id. The host may
# not read a capturing device's memory (on cuda it would invalidate the capture; on emu it
# would read values a real GPU has not computed yet), nor copy between it and another device.
capturing: dict[Device, int] = {}
# The emu devices whose captured graph is being replayed: the replay re-runs the recorded
# dispatch points, which on a GPU would be kernels alone, so ops see host_checks() False then too
replaying: set[Device] = set()


def host_checks(device: Device) -> bool:
    """Whether an op may validate its input by reading device values on the host (index
    bounds, value ranges). Not while a graph is being captured on ``device``: the read would
    end a CUDA capture (CuPy: "the current stream is capturing, so D2H transfers are
    disallowed", seen on an H200) and see not-yet-computed values on emu. Captured ops then
    keep their device work in bounds (clamped indices) instead of raising; as PyTorch, whose
    captured checks are device-side asserts, a captured region is validated by running it
    eagerly first (the warm-up steps graph capture asks for)."""
    return not (capturing or replaying) or (device not in capturing and device not in replaying)


def check_not_capturing(device: Device, op: str) -> None:
    """Raise a clear error when ``op`` (a host read or a cross-device copy) meets a capture."""
    if device in capturing:
        raise RuntimeError(f"{op}: the host cannot read or copy {device} memory while a CUDA "
                           f"graph is being captured on it (a captured region is device work "
                           f"only); move the host read out of the 'with dlcore.cuda.graph(g):' "
                           f"block and read the static output after g.replay()")


def device_count() -> int:
    """Number of usable CUDA devices; 0 (never an exception) without CuPy, driver or GPU."""
    cp = cupy_module()
    if cp is None:
        return 0
    try:
        return int(cp.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def device(spec: str | Device = "cpu", index: int | None = None) -> Device:
    """``dlcore.device("cpu")``, ``dlcore.device("cuda:1")``, ``dlcore.device("emu")``."""
    return Device(spec, index)


_default: Device | None = None


def get_default_device() -> Device:
    """The device used when none is given: ``$DLCORE_DEVICE`` if set, else ``cpu``."""
    global _default
    if _default is None:
        _default = Device(os.environ.get("DLCORE_DEVICE", "cpu") or "cpu")
    return _default


def set_default_device(dev: str | Device | None) -> None:
    global _default
    _default = None if dev is None else Device(dev)


def as_device(dev: str | Device | None) -> Device:
    return get_default_device() if dev is None else Device(dev)


def device_of_array(arr: Any) -> Device:
    """The device that holds a raw array (NumPy arrays are ``cpu``)."""
    if isinstance(arr, np.ndarray | np.generic):
        return Device("cpu")
    cp = cupy_module()
    if cp is not None and isinstance(arr, cp.ndarray):
        return Device("cuda", arr.device.id)
    raise TypeError(f"expected a NumPy or CuPy array, got {type(arr).__name__}")
