"""CPU emulator for dlcore's CUDA kernels, with CuPy's ``RawModule`` face.

The same ``.cu`` sources are compiled by g++ against an emulation header (``dlcore_emu.h``) and
run on NumPy arrays, so kernels can be developed and tested on machines without a GPU::

    mod = RawModule(code=src, options=("-std=c++17",), name_expressions=["scale<float>"])
    mod.get_function("scale<float>")((blocks,), (256,), (x, y, np.int32(n)))

Threads of a block are fibers scheduled in a random (seeded) order between sync points, and the
blocks of a grid run one after another in a seeded order; shared memory starts as 0xFF bytes;
barrier divergence and warp-collective deadlocks raise :class:`EmulatorError`, and so does a
launch CUDA would refuse (a block over the kernel's ``__launch_bounds__``). A module made with
``enable_cooperative_groups=True`` launches cooperatively, as CuPy's does: every block is
resident at once and ``cooperative_groups::this_grid().sync()`` works; a grid larger than the
emulated device holds at once raises (see ``dlcore_emu_coop.h``). ``cuda_pipeline.h``'s
asynchronous copies land when the issuing thread waits for them. Arithmetic follows the GPU
build: ``a * b + c`` contracts into a fused multiply-add and float denormals flush to zero (see
``build.py``). Environment:

* ``DLCORE_EMU_CHECK=1`` -- checked mode: out-of-bounds global (and dynamic shared) accesses
  raise :class:`EmulatorError` naming the argument, element and thread.
* ``DLCORE_EMU_SEED=<int>`` -- the fiber-order and block-order seed (default 0, whose block
  order is the index order), printed in every error.
* ``DLCORE_CACHE_DIR`` -- where built shared objects are cached (default ``~/.cache/dlcore``).
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..sources import KernelSource
from . import build as _build

__all__ = ["EmulatorError", "Function", "RawModule", "checked_mode", "seed"]

_ERRLEN = 4096
# The launch layer tags code with its file name (for NVRTC); the emulator takes it from there.
_LINE_TAG = re.compile(r'\A#line 1 "([^"]+)"\n')


class EmulatorError(RuntimeError):
    """A kernel misbehaved under the emulator (barrier divergence, out-of-bounds access, bad
    launch). The message names the kernel, the block and thread, and the seed to replay it."""


class _ArgDesc(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("nbytes", ctypes.c_int64), ("itemsize", ctypes.c_int64),
                ("name", ctypes.c_char_p), ("writable", ctypes.c_int32)]


class _LaunchSpec(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint32 * 3), ("block", ctypes.c_uint32 * 3),
                ("shared_mem", ctypes.c_int64), ("seed", ctypes.c_uint64),
                ("checked", ctypes.c_int32), ("nargs", ctypes.c_int32),
                ("args", ctypes.POINTER(_ArgDesc)), ("err", ctypes.c_char_p),
                ("errlen", ctypes.c_int32)]


def checked_mode() -> bool:
    """Whether ``DLCORE_EMU_CHECK`` asks for bounds checking (read at every launch)."""
    return os.environ.get("DLCORE_EMU_CHECK", "0") not in ("", "0")


def seed() -> int:
    """The fiber-order seed from ``DLCORE_EMU_SEED`` (read at every launch)."""
    raw = os.environ.get("DLCORE_EMU_SEED", "0") or "0"
    try:
        return int(raw, 0)
    except ValueError:
        raise ValueError(f"DLCORE_EMU_SEED must be an integer, got {raw!r}") from None


def _dims(value: int | Sequence[int], what: str) -> tuple[int, int, int]:
    given = (value,) if isinstance(value, int | np.integer) else tuple(value)
    if not 1 <= len(given) <= 3:
        raise ValueError(f"{what} must have 1 to 3 dimensions, got {value!r}")
    x, y, z = [int(d) for d in given] + [1] * (3 - len(given))
    if any(d < 1 or d >= 2**32 for d in (x, y, z)):
        raise ValueError(f"{what} dimensions must be in [1, 2^32), got {value!r}")
    return x, y, z


def _scalar(value: Any) -> np.ndarray:
    # CuPy passes Python scalars as int64 / float64 / bool; do the same, so a size mismatch with
    # the kernel's parameter shows here as it would be a silent bug on the GPU.
    if isinstance(value, np.generic):
        return np.array(value)
    if isinstance(value, bool):
        return np.array(value, dtype=np.bool_)
    if isinstance(value, int):
        return np.array(value, dtype=np.int64)
    if isinstance(value, float):
        return np.array(value, dtype=np.float64)
    raise TypeError("emulated kernels take NumPy arrays and NumPy scalars, "
                    f"got {type(value).__name__}")


class Function:
    """One kernel entry point; call it like a ``cupy.RawKernel``."""

    def __init__(self, module: RawModule, name: str, entry: Any, params: tuple[str, ...]) -> None:
        self.module, self.name, self._entry = module, name, entry
        self._params = params

    def __repr__(self) -> str:
        return f"<emu kernel {self.name} from {self.module.filename}>"

    def __call__(self, grid: int | Sequence[int], block: int | Sequence[int],
                 args: Sequence[Any], *, shared_mem: int = 0) -> None:
        """Run the kernel on the CPU; array arguments must be C-contiguous NumPy arrays."""
        descs = (_ArgDesc * max(len(args), 1))()
        keep = []
        for i, arg in enumerate(args):
            name = self._params[i] if i < len(self._params) else f"#{i}"
            d = descs[i]
            d.name = name.encode()
            if isinstance(arg, np.ndarray):
                if not arg.flags.c_contiguous:
                    raise EmulatorError(f"kernel {self.name}: argument '{name}' (#{i}) is not "
                                        "C-contiguous; kernels assume contiguous arrays")
                d.ptr, d.nbytes, d.itemsize = arg.ctypes.data, arg.nbytes, arg.itemsize
                d.writable = int(arg.flags.writeable)
            else:
                scalar = _scalar(arg)
                keep.append(scalar)
                d.ptr, d.nbytes, d.itemsize, d.writable = scalar.ctypes.data, scalar.itemsize, 0, 0
        err = ctypes.create_string_buffer(_ERRLEN)
        run_seed = seed()
        spec = _LaunchSpec(grid=(ctypes.c_uint32 * 3)(*_dims(grid, "grid")),
                           block=(ctypes.c_uint32 * 3)(*_dims(block, "block")),
                           shared_mem=int(shared_mem), seed=run_seed & (2**64 - 1),
                           checked=int(checked_mode()), nargs=len(args), args=descs,
                           err=ctypes.cast(err, ctypes.c_char_p), errlen=_ERRLEN)
        if self._entry(ctypes.byref(spec)) != 0:
            msg = err.value.decode(errors="replace")
            raise EmulatorError(f"kernel {self.name}: {msg} [DLCORE_EMU_SEED={run_seed}]")


class RawModule:
    """CuPy-compatible ``RawModule`` for the emulator: built lazily on the first
    :meth:`get_function`, from ``code`` or ``path``; ``name_expressions`` name the template
    instantiations to generate (extern "C" kernels are found in the source);
    ``enable_cooperative_groups`` launches every kernel of the module cooperatively."""

    def __init__(self, code: str | None = None, path: str | os.PathLike[str] | None = None,
                 options: Sequence[str] = (),
                 name_expressions: Sequence[str] | None = None, *,
                 enable_cooperative_groups: bool = False) -> None:
        if path is not None and code is None:
            p = Path(path)
            self.source = KernelSource(p.name, p.read_text(), (str(p.parent.resolve()),))
        elif code is not None and path is None:
            tag = _LINE_TAG.match(code)
            name = tag.group(1) if tag else "<string>"
            self.source = KernelSource(name, code[tag.end():] if tag else code)
        else:
            raise TypeError("RawModule: give exactly one of code= or path=")
        self.filename = self.source.name
        self._flags = [o for o in options if o[:2] in ("-D", "-U", "-I")]
        self._entries = list(self.source.extern_c_kernels) + list(name_expressions or ())
        self.enable_cooperative_groups = bool(enable_cooperative_groups)
        self._lib: ctypes.CDLL | None = None
        self._functions: dict[str, Function] = {}
        self._lock = threading.Lock()

    def _load(self) -> ctypes.CDLL:
        with self._lock:
            if self._lib is None:
                include_dirs = tuple(o[2:] for o in self._flags if o.startswith("-I"))
                src = KernelSource(self.source.name, self.source.code,
                                   self.source.include_dirs + include_dirs)
                so = _build.build(src, self._entries, self._flags, self.enable_cooperative_groups)
                self._lib = ctypes.CDLL(str(so))
            return self._lib

    def get_function(self, name: str) -> Function:
        """The entry point ``name`` (an extern "C" kernel or one of the name expressions)."""
        fn = self._functions.get(name)
        if fn is not None:
            return fn
        if name not in self._entries:
            raise KeyError(f"{self.filename}: no kernel {name!r}; entry points are "
                           f"{', '.join(self._entries) or 'none'} "
                           "(templates need name_expressions)")
        entry = getattr(self._load(), f"dlemu_entry_{self._entries.index(name)}")
        entry.restype, entry.argtypes = ctypes.c_int, [ctypes.POINTER(_LaunchSpec)]
        params = self.source.parameters.get(name.partition("<")[0].strip(), ())
        fn = self._functions[name] = Function(self, name, entry, params)
        return fn
