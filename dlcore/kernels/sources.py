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
A ``// dlcore: cooperative`` line makes every launch of the file's kernels cooperative.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

SOURCE_DIR = Path(__file__).resolve().parent / "cuda_src"

_COOPERATIVE = re.compile(r"^[ \t]*//[ \t]*dlcore:[ \t]*cooperative[ \t]*$", re.M)
_INSTANTIATE = re.compile(r"^[ \t]*//[ \t]*dlcore:[ \t]*instantiate[ \t]+(.+?)[ \t]*$", re.M)
_GLOBAL = re.compile(
    r"(?P<externc>extern\s+\"C\"\s+)?__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?"
    r"void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(?P<name>[A-Za-z_]\w*)\s*\(")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_LAST_IDENT = re.compile(r"([A-Za-z_]\w*)\s*(?:\[[^\]]*\]\s*)*(?:=.*)?$", re.S)
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[^\n]*$', re.M)
_TEMPLATE = re.compile(r"template\s*<(?P<params>[^;{}]*)>\s*$")
_QUALIFIERS = re.compile(r"\b(?:const|volatile|__restrict__|__restrict|restrict)\b")

# C types of kernel parameters -> the NumPy dtype an argument must have (pointee type for a
# pointer, the scalar's type otherwise). A type not listed here is not checked.
C_DTYPES: dict[str, np.dtype] = {
    "float": np.dtype(np.float32), "double": np.dtype(np.float64),
    "__half": np.dtype(np.float16), "half": np.dtype(np.float16),
    "signed char": np.dtype(np.int8), "char": np.dtype(np.int8),
    "unsigned char": np.dtype(np.uint8), "bool": np.dtype(np.bool_),
    "short": np.dtype(np.int16), "unsigned short": np.dtype(np.uint16),
    "int": np.dtype(np.int32), "int32_t": np.dtype(np.int32),
    "unsigned int": np.dtype(np.uint32), "unsigned": np.dtype(np.uint32),
    "uint32_t": np.dtype(np.uint32),
    "long long": np.dtype(np.int64), "long long int": np.dtype(np.int64),
    "int64_t": np.dtype(np.int64), "index_t": np.dtype(np.int64),
    "dl::index_t": np.dtype(np.int64),
    "unsigned long long": np.dtype(np.uint64), "uint64_t": np.dtype(np.uint64),
    "size_t": np.dtype(np.uint64),
}
# Pointers to vector types read arrays of their element type (reinterpreted loads).
C_DTYPES_OF_POINTEE = {**C_DTYPES, "float2": np.dtype(np.float32),
                       "float4": np.dtype(np.float32), "int2": np.dtype(np.int32),
                       "int4": np.dtype(np.int32), "double2": np.dtype(np.float64),
                       "__half2": np.dtype(np.float16)}


@dataclass(frozen=True)
class Param:
    """One kernel parameter: its name, its C type with template arguments substituted and
    qualifiers dropped (``"float"``), whether it is a pointer, and the NumPy dtype an
    argument for it must have (None when the type is not one of :data:`C_DTYPES`)."""

    name: str
    ctype: str
    pointer: bool
    dtype: np.dtype | None


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
    def cooperative(self) -> bool:
        """Whether the file asks for cooperative launches (a ``// dlcore: cooperative`` line):
        its kernels may then ``cooperative_groups::this_grid().sync()``, every block resident
        at once (CuPy's and the emulator's ``enable_cooperative_groups``)."""
        return _COOPERATIVE.search(self.code) is not None

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

    def signature(self, entry: str) -> tuple[Param, ...]:
        """The parameters of entry point ``entry`` (``"name"`` or ``"name<float>"``), with the
        template's arguments substituted: what a launch's arguments are checked against."""
        return self._signatures.get(entry) or self._signature(entry)

    @cached_property
    def _signatures(self) -> dict[str, tuple[Param, ...]]:
        return {}

    def _signature(self, entry: str) -> tuple[Param, ...]:
        name, _, rest = entry.partition("<")
        name = name.strip()
        args = split_top_level(rest.rstrip()[:-1]) if rest else []
        code = strip_comments(self.code)
        for m in _GLOBAL.finditer(code):
            if m.group("name") != name:
                continue
            template = _TEMPLATE.search(code, 0, m.start())
            names: list[str] = []
            if template is not None and template.end() >= len(code[:m.start()].rstrip()):
                names = [split_top_level(p, " ")[-1] if " " in p else p
                         for p in split_top_level(template.group("params"))]
            subst = dict(zip(names, args))
            close = _matching_paren(code, m.end() - 1)
            params = []
            for i, text in enumerate(split_top_level(code[m.end():close])):
                if text == "void":
                    continue
                ident = _LAST_IDENT.search(text)
                pname = ident.group(1) if ident else f"#{i}"
                decl = text[:ident.start()] if ident else text
                pointer = "*" in decl
                base = " ".join(_QUALIFIERS.sub(" ", decl.replace("*", " ")).split())
                base = " ".join(subst.get(w, w) for w in base.split())
                table = C_DTYPES_OF_POINTEE if pointer else C_DTYPES
                params.append(Param(pname, base, pointer, table.get(base)))
            result = tuple(params)
            self._signatures[entry] = result
            return result
        return ()

    @cached_property
    def extern_c_kernels(self) -> tuple[str, ...]:
        """Names of the ``extern "C" __global__`` entry points."""
        code = strip_comments(self.code)
        return tuple(m.group("name") for m in _GLOBAL.finditer(code) if m.group("externc"))

    @property
    def entry_points(self) -> tuple[str, ...]:
        """Every name a caller may fetch: extern "C" kernels, then declared instantiations."""
        return self.extern_c_kernels + self.name_expressions

    @cached_property
    def expanded_code(self) -> str:
        """The code with its quoted ``#include`` files inlined (recursively, each file once, as
        ``#pragma once`` would), framed by ``#line`` markers so messages still name the right
        file and line. Compile caches keyed on the code text (CuPy's on-disk cache, the
        emulator's) then see an edit of a header alone."""
        seen: set[Path] = set()

        def expand(text: str, name: str) -> str:
            out, last, line = [], 0, 1
            for m in _INCLUDE.finditer(text):
                path = self._find(m.group(1))
                if path is None:
                    continue  # left to the compiler, which reports it
                line += text.count("\n", last, m.start())
                out.append(text[last:m.start()])
                if path not in seen:
                    seen.add(path)
                    out.append(f'#line 1 "{path.name}"\n'
                               f"{expand(path.read_text(), path.name)}\n")
                out.append(f'#line {line + 1} "{name}"')
                last = m.end()
            out.append(text[last:])
            return "".join(out)

        return expand(self.code, self.name)

    def _find(self, header: str) -> Path | None:
        for d in self.include_dirs:
            path = Path(d, header)
            if path.is_file():
                return path.resolve()
        return None

    def tagged_code(self) -> str:
        """The code, includes inlined (:attr:`expanded_code`), with a ``#line`` marker, so
        NVRTC and g++ report errors against this file's name rather than a temporary one."""
        return f'#line 1 "{self.name}"\n{self.expanded_code}'

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
