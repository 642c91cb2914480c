"""Where kernel sources live and what they declare.

The CUDA sources sit in the repository's top-level ``kernels/`` folder, which the package sees as
``dlcore/kernels/cuda_src`` (a symlink in a checkout, real files in a wheel), so an installed
dlcore finds them without a checkout.

The registry of entry points lives in the sources themselves, so a new ``.cu`` file needs no
Python wiring: every ``extern "C" __global__`` function is an entry point, and each template
instantiation dlcore launches is declared by a comment line in the file::

    // dlcore: instantiate block_sum<float>
    // dlcore: instantiate block_sum<double>

The NVRTC compile check, the CuPy loader (``name_expressions``) and the emulator all read these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent / "cuda_src"

_INSTANTIATE = re.compile(r"^[ \t]*//[ \t]*dlcore:[ \t]*instantiate[ \t]+(.+?)[ \t]*$", re.M)
_GLOBAL = re.compile(
    r"(?P<externc>extern\s+\"C\"\s+)?__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?"
    r"void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(?P<name>[A-Za-z_]\w*)\s*\(")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_LAST_IDENT = re.compile(r"([A-Za-z_]\w*)\s*(?:\[[^\]]*\]\s*)*(?:=.*)?$", re.S)


def strip_comments(code: str) -> str:
    """The code with comments blanked out, newlines kept, so positions and lines still match."""
    return _COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), code)


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside (), [], {} and <> nesting (parameter lists, template args)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _matching_paren(code: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(code)):
        if code[i] == "(":
            depth += 1
        elif code[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced parentheses in a __global__ declaration")


@dataclass(frozen=True)
class KernelSource:
    """One CUDA translation unit: its display name (used in compiler messages), its code and
    the folders its quoted ``#include`` lines are searched in."""

    name: str
    code: str
    include_dirs: tuple[str, ...] = ()

    @cached_property
    def name_expressions(self) -> tuple[str, ...]:
        """Template instantiations declared with ``// dlcore: instantiate <expr>``."""
        return tuple(m.group(1) for m in _INSTANTIATE.finditer(self.code))

    @cached_property
    def parameters(self) -> dict[str, tuple[str, ...]]:
        """Parameter names of every ``__global__`` function, by function name (for messages)."""
        code = strip_comments(self.code)
        params = {}
        for m in _GLOBAL.finditer(code):
            close = _matching_paren(code, m.end() - 1)
            names = []
            for i, p in enumerate(split_top_level(code[m.end():close])):
                ident = _LAST_IDENT.search(p)
                names.append(ident.group(1) if ident and p != "void" else f"#{i}")
            params[m.group("name")] = tuple(n for n in names if n != "void")
        return params

    @cached_property
    def extern_c_kernels(self) -> tuple[str, ...]:
        """Names of the ``extern "C" __global__`` entry points."""
        code = strip_comments(self.code)
        return tuple(m.group("name") for m in _GLOBAL.finditer(code) if m.group("externc"))

    @property
    def entry_points(self) -> tuple[str, ...]:
        """Every name a caller may fetch: extern "C" kernels, then declared instantiations."""
        return self.extern_c_kernels + self.name_expressions

    def tagged_code(self) -> str:
        """The code with a ``#line`` marker, so NVRTC and g++ report errors against this file's
        name rather than a temporary one."""
        return f'#line 1 "{self.name}"\n{self.code}'

    def options(self) -> tuple[str, ...]:
        """Compiler options shared by NVRTC (CuPy) and the emulator build."""
        return ("-std=c++17", *(f"-I{d}" for d in self.include_dirs))


def kernel_source(source: str | Path | KernelSource) -> KernelSource:
    """Resolve a source: a ``KernelSource`` as is, a bare file name in ``kernels/``
    (``"conv2d.cu"``), or a path to any ``.cu`` file (tests keep theirs in tests/kernels/cu)."""
    if isinstance(source, KernelSource):
        return source
    path = Path(source)
    if not path.is_absolute() and path.parent == Path("."):
        path = SOURCE_DIR / path
    if not path.is_file():
        known = ", ".join(p.name for p in product_sources()) or "none"
        raise FileNotFoundError(f"kernel source {source!s} not found (kernels/ has: {known})")
    dirs = dict.fromkeys([str(path.parent.resolve()), str(SOURCE_DIR.resolve())])
    return KernelSource(name=path.name, code=path.read_text(), include_dirs=tuple(dirs))


def product_sources() -> list[Path]:
    """The ``.cu`` files shipped with dlcore, sorted by name."""
    return sorted(SOURCE_DIR.glob("*.cu"))
