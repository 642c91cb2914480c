"""Turn a CUDA source into an emulator shared object: inline quoted includes, rewrite the
``__shared__`` declarations g++ cannot take, move ``__launch_bounds__`` into a check at the top of
each kernel, append one ``extern "C"`` trampoline per entry point, compile with g++ and cache the
result on disk by content hash.

The rewrite keeps every line where it was (``#line`` markers around inlined headers), so g++
errors point at the original file and line.

Numerics follow the GPU build. NVRTC contracts ``a * b + c`` into one fused multiply-add and CuPy
passes ``-ftz=true``; g++ contracts with ``-ffp-contract=fast`` (off under ``-std=c++17``
otherwise), and only from ``-O2`` or ``-fexpensive-optimizations`` on. x86-64's baseline ISA has
no FMA instruction, so ``-mfma`` is added when the CPU has one (``/proc/cpuinfo``); on an older
x86-64 CPU products are rounded before the add, one rounding more than on a GPU (a software
``fmaf`` for every contraction would need a source rewrite g++ cannot do). Other CPUs (aarch64)
have FMA in their baseline. The flags are part of the cache key, so a cache shared between
machines never hands one an object built for another CPU. Denormals: see ``FlushDenormals`` in
``dlcore_emu_launch.h``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from ..errors import KernelCompileError
from ..sources import KernelSource, strip_comments

EMU_DIR = Path(__file__).resolve().parent
# Every header here (the runtime and the CUDA stand-ins) is part of each build's cache key.
HEADERS = tuple(sorted(p.name for p in EMU_DIR.glob("*.h")))
CXX_FLAGS = ("-std=c++17", "-O1", "-fexpensive-optimizations", "-ffp-contract=fast", "-fPIC",
             "-shared", "-w", "-fno-strict-aliasing")

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[^\n]*$', re.M)
_PRAGMA_ONCE = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+once[^\n]*$", re.M)
_SHARED = re.compile(
    r"(?P<extern>\bextern\s+)?\b__shared__\s+(?P<type>[^;={}()\[\]]*?(?:__align__\s*\(\s*\d+\s*\)"
    r"[^;={}()\[\]]*?)?)\s*\b(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(?:\[[^\]]*\]\s*)*);")
_ALIGN = re.compile(r"__align__\s*\(\s*(\d+)\s*\)")
_LAUNCH_BOUNDS = re.compile(r"\b__launch_bounds__\s*\(")
_LINE_MARKER = re.compile(r"^#line (\d+)[^\n]*\n", re.M)
_KERNEL_NAME = re.compile(r'\s*(?:(?:__global__|void|static|inline|extern\s*"C")\s+)*'
                          r"(?P<name>[A-Za-z_]\w*)\s*\(")


def cpu_has_fma() -> bool:
    """Whether this x86-64 CPU has FMA3 (``fma`` among the flags in ``/proc/cpuinfo``)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and " fma " in f"{line} " for line in info.splitlines())


@lru_cache(maxsize=1)
def numerics_flags() -> tuple[str, ...]:
    """``-mfma`` on an x86-64 CPU with FMA, so contraction can emit fused multiply-adds."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        return ("-mfma",) if cpu_has_fma() else ()
    return ()


def cache_dir() -> Path:
    """``$DLCORE_CACHE_DIR/emu``, else ``~/.cache/dlcore/emu``."""
    root = os.environ.get("DLCORE_CACHE_DIR") or os.path.join(Path.home(), ".cache", "dlcore")
    return Path(root) / "emu"


def _find_include(name: str, dirs: list[str]) -> Path | None:
    for d in dirs:
        p = Path(d) / name
        if p.is_file():
            return p.resolve()
    return None


def inline_includes(code: str, filename: str, dirs: list[str], seen: set[Path]) -> str:
    """Replace quoted includes found in ``dirs`` with their (recursively inlined) text, once each
    (headers use ``#pragma once``), so the ``__shared__`` rewrite reaches headers too."""
    out, pos = [], 0
    for m in _INCLUDE.finditer(code):
        path = _find_include(m.group(1), dirs)
        if path is None:
            continue
        line = code.count("\n", 0, m.end()) + 1
        out.append(code[pos:m.start()])
        if path not in seen:
            seen.add(path)
            body = _PRAGMA_ONCE.sub("", path.read_text())
            body = inline_includes(body, path.name, [str(path.parent), *dirs], seen)
            out.append(f'#line 1 "{path.name}"\n{body}\n#line {line + 1} "{filename}"')
        pos = m.end()
    out.append(code[pos:])
    return "".join(out)


def _brace_depths(code: str) -> list[int]:
    depth, depths = 0, []
    for ch in code:
        depths.append(depth)
        depth += (ch == "{") - (ch == "}")
    return depths


def rewrite_shared(code: str, filename: str) -> str:
    """Rewrite ``__shared__`` declarations into references to the emulator's per-block shared
    memory. Static ones become ``T (&name)[N] = <slot>``; ``extern __shared__ T name[];`` becomes
    a pointer (a ``#define`` at file scope, where the declaration must start its line)."""
    code = strip_comments(code)
    depths = _brace_depths(code)
    out, pos = [], 0
    for m in _SHARED.finditer(code):
        type_ = m.group("type").strip()
        align = _ALIGN.search(type_)
        type_ = _ALIGN.sub("", type_).strip()
        name, dims = m.group("name"), re.sub(r"\s+", "", m.group("dims"))
        line = code.count("\n", 0, m.start()) + 1
        at_file_scope = depths[m.start()] == 0
        if not type_:
            raise KernelCompileError(filename, line,
                                     f"cannot parse __shared__ declaration {m.group(0)!r}")
        if m.group("extern"):
            target = f"reinterpret_cast<{type_}*>(::dlemu::dynamic_shared())"
            line_start = code.rfind("\n", 0, m.start()) + 1
            if not at_file_scope:
                text = f"{type_}* const {name} = {target};"
            elif not code[line_start:m.start()].strip():
                text = f"#define {name} ({target})"
            else:
                raise KernelCompileError(filename, line,
                                         "a file-scope extern __shared__ declaration "
                                         "must start its line for the emulator")
        else:
            if at_file_scope:
                raise KernelCompileError(filename, line,
                                         "file-scope static __shared__ variables are "
                                         "not supported by the emulator; "
                                         "declare them in the kernel")
            align_expr = f"alignof({type_})" if not align else f"{align.group(1)}"
            slot = (f"::dlemu::static_shared(sizeof({type_}{dims}), {align_expr}, "
                    f"\"{name}\", __LINE__)")
            if dims:
                text = f"{type_} (&{name}){dims} = *reinterpret_cast<{type_}(*){dims}>({slot});"
            else:
                text = f"{type_}& {name} = *reinterpret_cast<{type_}*>({slot});"
        out.append(code[pos:m.start()])
        out.append(text)
        pos = m.end()
    out.append(code[pos:])
    result = "".join(out)
    leftover = re.search(r"\b__shared__\b", result)
    if leftover:
        line = result[:leftover.start()].count("\n") + 1
        raise KernelCompileError(filename, line, "unsupported __shared__ declaration form for the "
                                 "emulator (declare one variable per statement)")
    return result


def _matching_paren(code: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(code)):
        depth += (code[i] == "(") - (code[i] == ")")
        if depth == 0:
            return i
    return -1


def _line_at(code: str, pos: int) -> int:
    """The source line of ``code[pos]``, following the ``#line`` markers of inlined headers."""
    markers = list(_LINE_MARKER.finditer(code, 0, pos))
    if not markers:
        return code.count("\n", 0, pos) + 1
    return int(markers[-1].group(1)) + code.count("\n", markers[-1].end(), pos)


def rewrite_launch_bounds(code: str) -> str:
    """Move each kernel's ``__launch_bounds__(N, ...)`` into a call
    ``::dlemu::check_launch_bounds(<line>, N, ...)`` opening its body, on the same line, so a
    launch with more than N threads per block raises as CUDA refuses it; inside the body the
    bounds may use the kernel's template parameters. The bounds of a declaration without a body
    are dropped. A form not recognised here (the bounds not right before ``void`` or the kernel's
    name) is left to the header's macro, which does not compile. Runs on comment-free code."""
    out, pos = [], 0
    for m in _LAUNCH_BOUNDS.finditer(code):
        close = _matching_paren(code, m.end() - 1)
        kernel = _KERNEL_NAME.match(code, close + 1) if close > 0 else None
        params_end = _matching_paren(code, kernel.end() - 1) if kernel else -1
        if params_end < 0:
            continue
        body = len(code) - len(code[params_end + 1:].lstrip())  # the first non-space
        bounds = " ".join(code[m.end():close].split())
        out.append(code[pos:m.start()])
        out.append(re.sub(r"[^\n]", " ", code[m.start():close + 1]))  # keep lines where they were
        out.append(code[close + 1:body])
        pos = body
        if code.startswith("{", body):
            line = _line_at(code, m.start())
            out.append(f"{{ ::dlemu::check_launch_bounds({line}, {bounds});")
            pos = body + 1
    out.append(code[pos:])
    return "".join(out)


def trampolines(entries: list[str], cooperative: bool = False) -> str:
    """One ``dlemu_entry_<i>`` per entry point; taking ``&name<T>`` instantiates a template. A
    cooperative module launches every kernel cooperatively, as CuPy does."""
    lines = ['#line 1 "<dlcore-emu entry points>"']
    coop = "true" if cooperative else "false"
    for i, expr in enumerate(entries):
        lines.append(f'extern "C" int dlemu_entry_{i}(::dlemu::LaunchSpec* s) '
                     f'{{ return ::dlemu::run_kernel(s, &{expr}, {coop}); }}')
    return "\n".join(lines) + "\n"


def emulated_source(source: KernelSource, entries: list[str], cooperative: bool = False) -> str:
    """The full translation unit g++ compiles for ``source``."""
    name = source.name
    code = inline_includes(source.code, name, list(source.include_dirs), set())
    code = rewrite_launch_bounds(rewrite_shared(code, name))
    return (f'#include "dlcore_emu.h"\n#line 1 "{name}"\n{code}\n'
            f"{trampolines(entries, cooperative)}")


@lru_cache(maxsize=1)
def _compiler() -> tuple[str, str]:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise KernelCompileError("<emulator>", None,
                                 "no C++ compiler found (install g++ or set CXX)")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    return cxx, version


def _first_error_line(log: str, filename: str) -> int | None:
    m = re.search(rf"{re.escape(filename)}:(\d+):(?:\d+:)? (?:fatal )?error", log)
    return int(m.group(1)) if m else None


def build(source: KernelSource, entries: list[str], flags: list[str],
          cooperative: bool = False) -> Path:
    """Compile (or find in the cache) the shared object for ``source``; return its path.
    ``flags`` are the -D/-U/-I options passed through from the module's NVRTC options;
    ``cooperative`` makes every launch of the module a cooperative one."""
    cxx, version = _compiler()
    unit = emulated_source(source, entries, cooperative)
    compile_flags = (*CXX_FLAGS, *numerics_flags(), *flags)
    digest = hashlib.sha256()
    for part in (unit, version, " ".join(compile_flags),
                 *((EMU_DIR / h).read_text() for h in HEADERS)):
        digest.update(part.encode())
        digest.update(b"\0")
    out_dir = cache_dir()
    target = out_dir / f"{Path(source.name).stem}-{digest.hexdigest()[:24]}.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        cpp = Path(tmp) / f"{Path(source.name).stem}.emu.cpp"
        cpp.write_text(unit)
        so = Path(tmp) / "out.so"
        proc = subprocess.run([cxx, *compile_flags, f"-I{EMU_DIR}", str(cpp), "-o", str(so)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise KernelCompileError(source.name, _first_error_line(proc.stderr, source.name),
                                     proc.stderr, compiler="g++ (emulator)")
        os.replace(so, target)
    return target
