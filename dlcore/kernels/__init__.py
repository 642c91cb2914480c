"""The launch layer: the one way dlcore runs its CUDA kernels (``kernels/*.cu``).

A device's runner (``device.kernels``, built by :func:`runner_for`) loads each source once per
process and device -- ``cupy.RawModule`` on ``cuda``, the CPU emulator's look-alike on ``emu`` --
and hands out launchers called as ``(grid, block, args, shared_mem=0)``, exactly like a CuPy
``RawKernel``, on the current stream. Both devices share this code path (grid arithmetic,
argument marshalling, name lookup); only the module class differs::

    run = device.kernels.function("pool2d.cu", "maxpool2d_forward<float>")
    run(grid_1d(n), (256,), (x, y, np.int64(n)))

Sources declare their entry points themselves (see :mod:`dlcore.kernels.sources`). Modules are
compiled lazily, on the first fetch of one of their functions, never at import time.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import compile_check
from .errors import KernelCompileError
from .family import CTYPES, KernelFamily, ctype, families
from .sources import SOURCE_DIR, KernelSource, kernel_source, product_sources

__all__ = ["CTYPES", "KernelCompileError", "KernelFamily", "KernelRunner", "KernelSource",
           "Launch", "SOURCE_DIR", "ceil_div", "ctype", "families", "grid_1d", "kernel_source",
           "launch", "product_sources", "recorded_launches", "runner_for", "stubbed_launches"]

Dims = int | Sequence[int]
Launcher = Callable[..., None]


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for non-negative ints: blocks needed to cover ``a`` items with ``b``."""
    return -(-a // b)


def grid_1d(n: int, block: int = 256, max_blocks: int | None = None) -> tuple[int]:
    """A 1-D grid covering ``n`` items with ``block`` threads each (at least one block, so an
    empty launch stays valid); ``max_blocks`` caps it for grid-stride loops."""
    blocks = max(1, ceil_div(n, block))
    return (blocks if max_blocks is None else min(blocks, max_blocks),)


def _as_dims(d: Dims) -> tuple[int, ...]:
    if type(d) is tuple and all(type(v) is int for v in d):
        return d  # what grid_1d and the ops pass: nothing to convert
    return (int(d),) if isinstance(d, int) else tuple(int(v) for v in d)


class KernelRunner:
    """Loads kernel sources for one device and launches their entry points; memoised."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self._modules: dict[str, Any] = {}
        self._launchers: dict[tuple[Any, str], Launcher] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<KernelRunner for {self.device}>"

    def _module_class(self) -> Any:
        if self.device.is_cuda:
            return self.device.xp.RawModule
        from . import emu  # builds need g++; import only when used

        return emu.RawModule

    def module(self, source: str | Path | KernelSource) -> Any:
        """The loaded module (``cupy.RawModule`` or ``emu.RawModule``) for a source."""
        src = kernel_source(source)
        code = src.tagged_code()  # includes inlined: a header edit is a new module
        with self._lock:
            mod = self._modules.get(code)
            if mod is None:
                options = src.options()
                if self.device.is_cuda:  # the emulator has its own versions of these headers
                    options += tuple(f"-I{d}" for d in compile_check.cuda_include_dirs())
                extra = {"enable_cooperative_groups": True} if src.cooperative else {}
                with self.device.use():
                    mod = self._module_class()(
                        code=code, options=options,
                        name_expressions=list(src.name_expressions) or None, **extra)
                self._modules[code] = mod
        return mod

    def function(self, source: str | Path | KernelSource, name: str) -> Launcher:
        """A launcher ``(grid, block, args, shared_mem=0)`` for entry point ``name`` of
        ``source`` (a file in ``kernels/``, a path, or a :class:`KernelSource`)."""
        key = (source, name)
        launcher = self._launchers.get(key)
        if launcher is not None:
            return launcher
        src = kernel_source(source)
        if name not in src.entry_points:
            raise KeyError(f"{src.name}: no entry point {name!r}; it declares "
                           f"{', '.join(src.entry_points) or 'none'} (templates need a "
                           "'// dlcore: instantiate <expr>' line)")
        mod = self.module(src)
        with self.device.use():
            kernel = _get_function(mod, src, name)
        check = _argument_check(f"{src.name}:{name}", src.signature(name))
        device = self.device

        def launch_kernel(grid: Dims, block: Dims, args: Sequence[Any],
                          shared_mem: int = 0) -> None:
            check(args)
            if not device.is_current():
                raise RuntimeError(f"kernel {src.name}:{name}: launched for {device} while the "
                                   f"current device is another one; launch under "
                                   f"'with device:' (the tensors' device)")
            dims = _as_dims(grid), _as_dims(block)
            if _recorded.logs:
                for log in _recorded.logs:
                    log.append(Launch(launch_kernel.__qualname__, *dims, shared_mem))
            if _stubbed.depth:
                return  # measuring the host cost: everything but the launch itself
            if capture_hooks:
                cap = capture_hooks.get(device)
                if cap is not None and cap.recording(device):  # a graph capture on emu
                    cap.launch(kernel, *dims, tuple(args), shared_mem)
                    return
            kernel(*dims, tuple(args), shared_mem=shared_mem)

        launch_kernel.__qualname__ = f"{src.name}:{name}"
        self._launchers[key] = launch_kernel
        return launch_kernel


def _argument_check(kernel: str, params: Sequence[Any]) -> Callable[[Sequence[Any]], None]:
    """A check of a launch's arguments against the kernel's declared parameters: an array
    for each pointer, of the pointee's dtype; a NumPy scalar of the exact type for each
    scalar (CuPy checks neither: an int64 array passed as ``const int*`` or a Python int as
    ``int`` silently corrupts). Types the table in :mod:`dlcore.kernels.sources` does not
    know are not checked."""
    checked = tuple((i, p) for i, p in enumerate(params) if p.dtype is not None)
    count = len(params)

    def check(args: Sequence[Any]) -> None:
        if count and len(args) != count:
            raise TypeError(f"kernel {kernel}: takes {count} arguments "
                            f"({', '.join(p.name for p in params)}), got {len(args)}")
        for i, p in checked:
            arg = args[i]
            if p.pointer:
                dtype = getattr(arg, "dtype", None)
                if dtype is None or isinstance(arg, np.generic):
                    raise TypeError(f"kernel {kernel}: parameter '{p.name}' is {p.ctype}*, an "
                                    f"array of {p.dtype}; got {type(arg).__name__}")
                if dtype is not p.dtype and dtype != p.dtype:
                    raise TypeError(f"kernel {kernel}: parameter '{p.name}' is {p.ctype}*, an "
                                    f"array of {p.dtype}; got an array of {dtype}")
            elif type(arg) is not p.dtype.type:
                got = (f"a NumPy {arg.dtype} scalar" if isinstance(arg, np.generic)
                       else f"{type(arg).__name__} {arg!r}")
                raise TypeError(f"kernel {kernel}: parameter '{p.name}' is {p.ctype}, a NumPy "
                                f"{p.dtype} scalar; got {got}")
    return check


def _get_function(module: Any, src: KernelSource, name: str) -> Any:
    """Fetch (and, the first time, compile) a function, turning CuPy's compile exception into a
    :class:`KernelCompileError` that names the file and line."""
    try:
        return module.get_function(name)
    except KernelCompileError:
        raise
    except Exception as exc:
        if type(exc).__name__ != "CompileException":
            raise
        log = exc.get_message() if hasattr(exc, "get_message") else str(exc)
        raise KernelCompileError.from_nvrtc_log(src.name, log) from None


class _Stubbed(threading.local):
    depth = 0


_stubbed = _Stubbed()


@contextlib.contextmanager
def stubbed_launches() -> Iterator[None]:
    """Within it (in this thread) launches do everything but launch: argument checks, grid
    arithmetic, marshalling; results stay unwritten. For measuring host cost per op
    (``dlcore bench launch``), never for computing."""
    _stubbed.depth += 1
    try:
        yield
    finally:
        _stubbed.depth -= 1


class Launch(NamedTuple):
    """One recorded launch: ``kernel`` is ``"<file>:<entry point>"``."""

    kernel: str
    grid: tuple[int, ...]
    block: tuple[int, ...]
    shared_mem: int


class _Recorded(threading.local):
    def __init__(self) -> None:
        self.logs: list[list[Launch]] = []


_recorded = _Recorded()


@contextlib.contextmanager
def recorded_launches() -> Iterator[list[Launch]]:
    """Within it (in this thread) every kernel launch is appended to the yielded list as a
    :class:`Launch`, so tests can name which kernel served a shape::

        with recorded_launches() as launches:
            F.conv2d(x, w)
        assert [l.kernel for l in launches] == ["conv2d.cu:conv2d_forward<float>"]
    """
    log: list[Launch] = []
    _recorded.logs.append(log)
    try:
        yield log
    finally:
        _recorded.logs.remove(log)


# device -> the recorder of a CUDA graph capture on emu (dlcore.graphs._EmuCapture), set by
# dlcore.graphs during a capture: launches made outside any recorded op are recorded there.
capture_hooks: dict[Any, Any] = {}

_runners: dict[Any, KernelRunner] = {}
_runners_lock = threading.Lock()


def runner_for(device: Any) -> KernelRunner:
    """The kernel runner of a ``cuda`` or ``emu`` device (what ``Device.kernels`` returns)."""
    if not device.runs_kernels:
        raise ValueError(f"device {device} runs no CUDA kernels; use 'cuda' or 'emu'")
    with _runners_lock:
        runner = _runners.get(device)
        if runner is None:
            runner = _runners[device] = KernelRunner(device)
    return runner


def launch(device: Any, source: str | Path | KernelSource, name: str, grid: Dims, block: Dims,
           args: Sequence[Any], shared_mem: int = 0) -> None:
    """One-shot launch through ``device``'s runner (a convenience over
    ``device.kernels.function(source, name)(grid, block, args, shared_mem)``)."""
    runner_for(device).function(source, name)(grid, block, args, shared_mem)

