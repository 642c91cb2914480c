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
import importlib.util
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import KernelCompileError
from .sources import KernelSource, kernel_source, product_sources

ARCHS = (70, 80, 90)

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


def cuda_include_dirs() -> tuple[str, ...]:
    """The CUDA headers kernels may include beyond NVRTC's built-in ones (``cuda_fp16.h``,
    ``cuda_bf16.h``, ``mma.h``, ``cuda_pipeline.h``, ``cooperative_groups.h``), from the CUDA
    wheels of the NVRTC major version (``nvidia-cuda-runtime-cu12``; ``nvidia-cuda-nvcc-cu12``
    for the ``crt/`` headers that ``mma.h`` includes) plus the libcu++ that CuPy bundles
    (``nv/target``, which ``cooperative_groups.h`` includes), so no toolkit install is needed.
    Empty when those wheels are absent (a GPU machine's CuPy then uses the toolkit's own)."""
    dirs = []
    for module, sub in (("nvidia.cuda_runtime", "include"), ("nvidia.cuda_nvcc", "include"),
                        ("cupy", "_core/include/cupy/_cccl/libcudacxx")):
        try:
            spec = importlib.util.find_spec(module)  # found, not imported
        except (ImportError, ValueError):
            spec = None
        for root in (spec.submodule_search_locations or []) if spec else []:
            include = Path(root, sub)
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


def check(paths: Sequence[str | Path], archs: Sequence[int] = ARCHS) -> list[str]:
    """Compile each source for each arch; return one line per failure (empty: all passed)."""
    failures = []
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
    failures = check(paths, args.arch or ARCHS)
    for f in failures:
        print(f, file=sys.stderr)
    print(f"{len(paths)} source(s), {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
