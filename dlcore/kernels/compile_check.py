"""Compile kernel sources with NVRTC for several GPU generations, with no GPU or driver needed.

CuPy's bare NVRTC bindings (``cupy_backends.cuda.libs.nvrtc``) plus the ``nvidia-cuda-nvrtc-cu12``
wheel compile to cubin on any machine; ``cupy.RawModule`` would need a device. A source passes
when every entry point (extern "C" kernels and declared instantiations) compiles for every target
with no error and no warning. CI runs this through tests/kernels/test_compile_check.py; by hand::

    python -m dlcore.kernels.compile_check            # kernels/*.cu
    python -m dlcore.kernels.compile_check path/to/x.cu --arch 90
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import importlib.util
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import KernelCompileError
from .sources import KernelSource, kernel_source, product_sources

ARCHS = (70, 80, 90)  # Volta, Ampere, Hopper: where NVRTC still targets them (see targets)

# NVRTC has no option to silence this one, and dlcore supports sm_70 on purpose.
_DEPRECATED_ARCH = re.compile(r"^nvrtc: warning : Architectures prior to .*$|"
                              r"^nvrtc: warning: Architectures prior to .*$", re.M)


def _preload_nvrtc_wheel() -> None:
    """Load libnvrtc from the nvidia-cuda-nvrtc wheel, for CuPy versions that do not search
    site-packages themselves (CuPy 14 finds it through cuda-pathfinder)."""
    import nvidia.cuda_nvrtc  # the test extra's NVRTC wheel: present only where installed

    for root in nvidia.cuda_nvrtc.__path__:
        for lib in sorted(Path(root, "lib").glob("libnvrtc.so*")):
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            return


@dataclass(frozen=True)
class HeaderSet:
    """Where one CUDA version's headers are: ``dirs`` (searched in order), ``major`` (its
    CUDA_VERSION's major, None where unknown) and ``origin`` (for messages)."""
    origin: str
    dirs: tuple[str, ...]
    major: int | None

    @property
    def complete(self) -> bool:
        """Holds ``cuda_fp16.h`` and ``crt/mma.h`` (what ``mma.h`` includes): the header a
        kernel names and the one it reaches through another must come from one version."""
        def has(rel: str) -> bool:
            return any(Path(d, rel).is_file() for d in self.dirs)
        return has("cuda_fp16.h") and has("crt/mma.h")


def _cuda_major(dirs: Sequence[str]) -> int | None:
    for d in dirs:
        m = re.search(r"^#define CUDA_VERSION (\d+)", _read(Path(d, "cuda.h")), re.M)
        if m:
            return int(m.group(1)) // 1000
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _package_dirs(module: str) -> list[Path]:
    try:
        spec = importlib.util.find_spec(module)  # found, not imported
    except (ImportError, ValueError):
        spec = None
    return [Path(root) for root in (spec.submodule_search_locations or [])] if spec else []


def header_sets() -> list[HeaderSet]:
    """Every CUDA header set on this machine, wheels first: the CUDA 12 wheels
    (``nvidia-cuda-runtime-cu12`` plus ``nvidia-cuda-nvcc-cu12`` for ``crt/``), the CUDA 13
    wheels (``nvidia/cu13/include``), then toolkits ($CUDA_PATH, $CUDA_HOME, the one ``nvcc``
    on PATH belongs to, /usr/local/cuda)."""
    sets = []
    cu12 = [str(root / "include") for module in ("nvidia.cuda_runtime", "nvidia.cuda_nvcc")
            for root in _package_dirs(module) if (root / "include").is_dir()]
    cu13 = [str(root / "cu13" / "include") for root in _package_dirs("nvidia")
            if (root / "cu13" / "include").is_dir()]
    for origin, dirs in (("CUDA 12 wheels", cu12), ("CUDA 13 wheels", cu13)):
        if dirs:
            sets.append(HeaderSet(origin, tuple(dirs), _cuda_major(dirs)))
    nvcc = shutil.which("nvcc")
    roots = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"),
             str(Path(nvcc).resolve().parent.parent) if nvcc else None, "/usr/local/cuda"]
    seen: set[str] = set()
    for root in roots:
        if root and Path(root, "include").is_dir():
            include = str(Path(root, "include").resolve())
            if include not in seen:
                seen.add(include)
                sets.append(HeaderSet(f"toolkit {root}", (include,), _cuda_major([include])))
    return sets


def choose_header_set(sets: Sequence[HeaderSet], nvrtc_major: int | None) -> HeaderSet | None:
    """The first complete set of NVRTC's major version, else the first complete set, else the
    first set at all (NVRTC then names the missing header), else None."""
    complete = [s for s in sets if s.complete]
    for s in complete:
        if s.major == nvrtc_major:
            return s
    pool = complete or list(sets)
    return pool[0] if pool else None


@functools.cache
def cuda_include_dirs() -> tuple[str, ...]:
    """The CUDA headers kernels may include beyond NVRTC's built-in ones (``cuda_fp16.h``,
    ``cuda_bf16.h``, ``mma.h``, ``cuda_pipeline.h``, ``cooperative_groups.h``), as one
    version's set (:func:`choose_header_set` over :func:`header_sets`), plus the libcu++ that
    CuPy bundles (``nv/target``, which ``cooperative_groups.h`` includes). The wheels of the
    test extra make a toolkit unnecessary; a GPU machine whose CUDA wheels lack ``crt/`` (seen:
    an H200 image's nvidia/cu13/include, with NVRTC 13.2 and a 13.0 toolkit) takes its
    toolkit's headers. Empty when nothing is found (CuPy then adds its own CUDA path)."""
    try:
        nvrtc_major: int | None = nvrtc_bindings().getVersion()[0]
    except Exception:  # no NVRTC here: any complete set will do
        nvrtc_major = None
    chosen = choose_header_set(header_sets(), nvrtc_major)
    dirs = list(chosen.dirs) if chosen else []
    for root in _package_dirs("cupy"):
        include = root / "_core/include/cupy/_cccl/libcudacxx"
        if include.is_dir():
            dirs.append(str(include))
    return tuple(dirs)


def nvrtc_bindings() -> Any:
    """CuPy's NVRTC bindings, with libnvrtc loaded; raises ImportError with the reason."""
    from cupy_backends.cuda.libs import nvrtc  # CuPy is optional: imported only when used

    try:
        nvrtc.getVersion()
    except Exception:
        _preload_nvrtc_wheel()
        nvrtc.getVersion()
    return nvrtc


def compile_for_arch(source: KernelSource, arch: int) -> bytes:
    """Compile ``source`` for ``sm_<arch>`` and return the cubin; raise
    :class:`KernelCompileError` on any error or warning, or on a missing entry point."""
    nvrtc = nvrtc_bindings()
    prog = nvrtc.createProgram(source.tagged_code(), source.name, [], [])
    try:
        for expr in source.name_expressions:
            nvrtc.addNameExpression(prog, expr)
        options = [*source.options(), *(f"-I{d}" for d in cuda_include_dirs()),
                   f"-arch=sm_{arch}"]
        try:
            nvrtc.compileProgram(prog, options)
            failed = False
        except nvrtc.NVRTCError:
            failed = True
        log = _DEPRECATED_ARCH.sub("", nvrtc.getProgramLog(prog)).strip()
        if failed or "warning" in log:
            err = KernelCompileError.from_nvrtc_log(source.name, f"[sm_{arch}]\n{log}")
            raise err
        for expr in source.name_expressions:
            nvrtc.getLoweredName(prog, expr)
        cubin = nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)
    missing = [k for k in source.extern_c_kernels if k.encode() not in cubin]
    if missing:
        raise KernelCompileError(source.name, None, f"[sm_{arch}] entry points missing from the "
                                 f"cubin: {', '.join(missing)}")
    return cubin


@functools.cache
def nvrtc_archs() -> tuple[int, ...]:
    """The sm versions this NVRTC compiles for (``nvrtcGetSupportedArchs``). CUDA 13 dropped
    Volta: NVRTC 13 answers sm_70 with "invalid value for --gpu-architecture" (seen on an
    H200 image), while NVRTC 12 still builds it."""
    return tuple(int(a) for a in nvrtc_bindings().getSupportedArchs())


def targets(archs: Sequence[int] = ARCHS) -> tuple[int, ...]:
    """``archs`` that this NVRTC supports."""
    return tuple(a for a in archs if a in nvrtc_archs())


def check(paths: Sequence[str | Path], archs: Sequence[int] = ARCHS) -> list[str]:
    """Compile each source for each arch this NVRTC supports; return one line per failure
    (empty: all passed)."""
    failures = []
    archs = targets(archs)
    for path in paths:
        src = kernel_source(path)
        for arch in archs:
            try:
                compile_for_arch(src, arch)
            except KernelCompileError as exc:
                failures.append(str(exc))
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlcore.kernels.compile_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", help="files (default: every kernels/*.cu)")
    parser.add_argument("--arch", type=int, action="append", help="sm version, repeatable")
    args = parser.parse_args(argv)
    paths = args.sources or product_sources()
    archs = args.arch or ARCHS
    for arch in sorted(set(archs) - set(targets(archs))):
        print(f"sm_{arch}: not a target of this NVRTC, skipped", file=sys.stderr)
    failures = check(paths, archs)
    for f in failures:
        print(f, file=sys.stderr)
    print(f"{len(paths)} source(s), {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
