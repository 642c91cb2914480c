"""Registers, shared memory, spills, occupancy and the hot loop's instruction mix per kernel.

Read it after any kernel change: a register jump lowers occupancy, any spill store/load is
local-memory traffic the kernel did not plan for, and the share of math instructions in the hot
loop is the best speed signal available without a GPU. Nothing here needs a GPU or a driver::

    python -m dlcore.kernels.resources                 # nvcc --resource-usage, kernels/*.cu, sm_90
    python -m dlcore.kernels.resources x.cu --arch 80
    python -m dlcore.kernels.resources --sass          # NVRTC cubins, sm_80 and sm_90, SASS
    python -m dlcore.kernels.resources --sass --json report.json

Without ``--sass`` each source is compiled by nvcc through a small wrapper that takes the address
of every declared instantiation (nvcc cannot take NVRTC name expressions), and ptxas' own
``--resource-usage`` lines are printed.

With ``--sass`` each source is compiled by NVRTC (CuPy's bare bindings, as the compile check and
the ``cuda`` device do, so the figures describe the code that runs) to a cubin per architecture.
The cubin is then read by ``cuobjdump -res-usage`` and ``nvdisasm`` (the SASS), from the
``nvidia-cuda-cuobjdump`` and ``nvidia-cuda-nvdisasm`` wheels of the test extra, or a CUDA
toolkit's on PATH or beside nvcc (:func:`find_tools`). Either alone works: without cuobjdump the
resources come from the ptxas lines of the same NVRTC compile (``--ptxas-options=-v``), without
nvdisasm the SASS from ``cuobjdump -sass`` (standalone up to CUDA 12). For every entry point
it reports registers, spill bytes (the ptxas lines: a cubin records no spill count), static
shared memory, theoretical occupancy (:func:`occupancy`, limits in :data:`SM_LIMITS`) at the
block size dlcore launches it with (:data:`BLOCK_THREADS`), and the instruction mix of the hot
loop (:func:`hot_loop`, :func:`loop_mix`).

CuPy's ``getCUBIN`` returns the cubin one byte short: it asks NVRTC for the size, copies that
many bytes and returns ``buf[:size - 1]`` ("strip the trailing NUL", as it rightly does for the
PTX and the log, which are C strings). A cubin is a binary ELF file whose reported size is exact,
so its last byte is lost. ELF places the program header table last in NVRTC's cubins, so the lost
byte is the top byte of the last header's 64-bit ``p_align`` (an alignment of 8: zero). cuobjdump
refuses the short file ("does not contain device code") and nvdisasm calls it an invalid ELF.
:func:`pad_cubin` computes the ELF's true end from its headers and appends zero bytes up to it;
the result is byte for byte what ``nvrtcGetCUBIN`` writes (checked against the C call through
ctypes, NVRTC 12.9, CuPy 14.2), and a binding that ever returns the whole file is left as is.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .sources import KernelSource, kernel_source, product_sources

_FUNCTION = re.compile(
    r"Compiling entry function '(?P<name>[^']+)'|Function properties for (?P<fp>\S+)")
_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


@dataclass
class Usage:
    """Resource usage of one kernel on one architecture."""

    kernel: str
    registers: int = 0
    shared_bytes: int = 0
    stack_bytes: int = 0
    spill_stores: int = 0
    spill_loads: int = 0


def _wrapper(source: KernelSource) -> str:
    refs = "\n".join(f"static const void* dlcore_instantiate_{i} = (const void*)&{expr};"
                     for i, expr in enumerate(source.name_expressions))
    return f"{source.tagged_code()}\n{refs}\n"


def _demangle(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines(), strict=False))


def parse_ptxas(log: str, demangle: bool = True) -> list[Usage]:
    """Per-function usage from ptxas ``info`` lines (``-Xptxas -v`` / ``--resource-usage``)."""
    usages: dict[str, Usage] = {}
    current = None
    for line in log.splitlines():
        m = _FUNCTION.search(line)
        if m:
            name = m.group("name") or m.group("fp")
            current = usages.setdefault(name, Usage(name))
            continue
        if current is None:
            continue
        if m := _STACK.search(line):
            current.stack_bytes, current.spill_stores, current.spill_loads = map(int, m.groups())
        elif m := _USED.search(line):
            current.registers = int(m.group(1))
            current.shared_bytes = int(m.group(2) or 0)
    if demangle:
        names = _demangle(list(usages))
        for u in usages.values():
            u.kernel = names.get(u.kernel, u.kernel)
    return list(usages.values())


def resource_usage(source: KernelSource, arch: int = 90, nvcc: str = "nvcc") -> list[Usage]:
    """Compile ``source`` with nvcc for ``sm_<arch>`` and return each kernel's usage."""
    with tempfile.TemporaryDirectory() as tmp:
        cu = Path(tmp) / source.name
        cu.write_text(_wrapper(source))
        cmd = [nvcc, f"-arch=sm_{arch}", "--resource-usage", "-cubin",
               "-o", str(Path(tmp) / "out.cubin"), *source.options(), str(cu)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source.name}:\n{proc.stderr}")
    return parse_ptxas(proc.stdout + proc.stderr)


# ---------------------------------------------------------------------------------------------
# Occupancy

@dataclass(frozen=True)
class SMLimits:
    """Per-SM limits of one architecture, as the CUDA occupancy calculator uses them."""

    name: str
    max_threads: int = 2048           # resident threads per SM (64 warps)
    max_blocks: int = 32              # resident blocks per SM
    registers: int = 65536            # 32-bit registers per SM, in 4 sub-partitions
    max_registers_per_thread: int = 255
    register_unit: int = 256          # registers are allocated per warp in units of 256
    register_partitions: int = 4      # a warp's registers all come from one quarter of the file
    shared_bytes: int = 167936        # shared memory per SM at the largest carve-out
    shared_per_block: int = 166912    # the most one block may use (static + dynamic)
    shared_unit: int = 128            # shared memory allocation granularity
    reserved_shared: int = 1024       # the system's shared memory reserve per block (sm_80+)


#: sm_80 (A100): 164 KB shared per SM (163 KB per block); sm_90 (H100): 228 KB (227 KB per
#: block). Both: 64K registers, 2048 threads, 32 blocks, 255 registers per thread, registers
#: allocated per warp in units of 256 (8 per thread), 1 KB of shared memory reserved per block.
SM_LIMITS = {
    80: SMLimits("sm_80"),
    90: SMLimits("sm_90", shared_bytes=233472, shared_per_block=232448),
}

#: Threads per block of every dlcore launch (dlcore/ops/*_cuda.py: all kernels run 256-thread
#: 1-D blocks; tests/kernels/test_kernel_resources.py keeps this in step with the launch code).
#: This package sits below dlcore.ops, so it cannot read their constants itself.
BLOCK_THREADS = {"conv2d.cu": 256, "conv2d_tc.cu": 256, "conv2d_depthwise.cu": 256,
                 "pool2d.cu": 256, "rnn_cell.cu": 256, "optim.cu": 256, "philox.cu": 256}
DEFAULT_BLOCK_THREADS = 256


@dataclass
class Occupancy:
    """Theoretical occupancy of one kernel at one block size on one architecture."""

    block_threads: int
    blocks_per_sm: int
    active_warps: int
    max_warps: int
    limiter: str                              # "threads", "blocks", "registers" or "shared"
    limits: dict[str, int] = field(default_factory=dict)   # blocks per SM allowed by each

    @property
    def fraction(self) -> float:
        return self.active_warps / self.max_warps


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def occupancy(registers: int, shared_bytes: int, block_threads: int,
              arch: int | SMLimits = 90) -> Occupancy:
    """Blocks and warps resident per SM, as the occupancy calculator computes them.

    ``registers`` per thread, ``shared_bytes`` of static plus dynamic shared memory per block
    (the 1 KB system reserve is added here), ``block_threads`` threads per block. Each limit
    gives a number of blocks per SM: threads (2048 / block), blocks (32), registers (a warp
    takes ``registers * 32`` rounded up to 256; each of the 4 register-file quarters holds
    16K registers and whole warps only), shared memory (per-SM capacity over the block's
    share rounded up to 128 bytes). The smallest wins; occupancy is its warps over 64.
    """
    lim = SM_LIMITS[arch] if isinstance(arch, int) else arch
    warps_per_block = -(-block_threads // 32)
    max_warps = lim.max_threads // 32
    limits = {"threads": max_warps // warps_per_block, "blocks": lim.max_blocks}
    if registers > lim.max_registers_per_thread:
        limits["registers"] = 0
    elif registers > 0:
        per_warp = _round_up(registers * 32, lim.register_unit)
        per_partition = lim.registers // lim.register_partitions
        warps = (per_partition // per_warp) * lim.register_partitions
        limits["registers"] = warps // warps_per_block
    block_shared = _round_up(shared_bytes + lim.reserved_shared, lim.shared_unit)
    limits["shared"] = (0 if shared_bytes > lim.shared_per_block
                        else lim.shared_bytes // block_shared)
    limiter = min(limits, key=lambda k: limits[k])
    blocks = limits[limiter]
    return Occupancy(block_threads, blocks, blocks * warps_per_block, max_warps, limiter, limits)


# ---------------------------------------------------------------------------------------------
# NVRTC cubins

def elf_size(data: bytes) -> int:
    """The size an ELF64 file declares: the furthest end of its header tables, its sections
    (but NOBITS ones) and its segments. Works on a truncated file as long as the headers'
    offset and size fields are present (zero-filled past the end)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file (a cubin)")
    b = data + bytes(64)
    phoff, shoff = struct.unpack_from("<QQ", b, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", b, 0x36)
    end = max(0x40, phoff + phentsize * phnum, shoff + shentsize * shnum)
    for i in range(shnum):
        h = shoff + i * shentsize
        if h + 0x28 > len(data):
            break
        (sh_type,) = struct.unpack_from("<I", b, h + 4)
        offset, size = struct.unpack_from("<QQ", b, h + 0x18)
        if sh_type != 8:  # SHT_NOBITS (.nv.shared.*) occupies no file bytes
            end = max(end, offset + size)
    for i in range(phnum):
        h = phoff + i * phentsize
        if h + 0x28 > len(data):
            break
        (offset,) = struct.unpack_from("<Q", b, h + 8)
        (filesz,) = struct.unpack_from("<Q", b, h + 0x20)
        end = max(end, offset + filesz)
    return end


def pad_cubin(data: bytes) -> bytes:
    """``data`` zero-padded to its ELF size (CuPy's getCUBIN drops the last byte; see the
    module docstring). A complete cubin comes back unchanged."""
    missing = elf_size(data) - len(data)
    return data + bytes(missing) if missing > 0 else data


@dataclass
class Cubin:
    """One NVRTC compile of a source for one architecture."""

    source: str
    arch: int
    data: bytes                      # the padded cubin
    returned_bytes: int              # what the binding returned, before padding
    log: str                         # NVRTC's log, with ptxas' -v lines
    names: dict[str, str]            # mangled (lowered) name -> entry point as declared


def nvrtc_version() -> str:
    """The NVRTC version in use, ``"12.9"``; raises ImportError without CuPy and NVRTC."""
    from .compile_check import nvrtc_bindings

    major, minor = nvrtc_bindings().getVersion()
    return f"{major}.{minor}"


def compile_cubin(source: str | Path | KernelSource, arch: int) -> Cubin:
    """Compile every entry point of ``source`` for ``sm_<arch>`` with NVRTC, as the loader does,
    plus ``--ptxas-options=-v``; raise RuntimeError with NVRTC's log on failure."""
    from .compile_check import cuda_include_dirs, nvrtc_bindings

    src = kernel_source(source)
    includes = [f"-I{d}" for d in cuda_include_dirs()]  # cuda_fp16.h, mma.h, ... as the loader
    nvrtc = nvrtc_bindings()
    prog = nvrtc.createProgram(src.tagged_code(), src.name, [], [])
    try:
        for expr in src.name_expressions:
            nvrtc.addNameExpression(prog, expr)
        try:
            nvrtc.compileProgram(prog, [*src.options(), *includes, f"-arch=sm_{arch}",
                                        "--ptxas-options=-v"])
        except nvrtc.NVRTCError as exc:
            raise RuntimeError(f"NVRTC failed on {src.name} [sm_{arch}]:\n"
                               f"{nvrtc.getProgramLog(prog)}") from exc
        log = nvrtc.getProgramLog(prog)
        names = {nvrtc.getLoweredName(prog, e): e for e in src.name_expressions}
        names.update({k: k for k in src.extern_c_kernels})
        raw = bytes(nvrtc.getCUBIN(prog))
    finally:
        nvrtc.destroyProgram(prog)
    return Cubin(src.name, arch, pad_cubin(raw), len(raw), log, names)


# ---------------------------------------------------------------------------------------------
# Disassemblers

_WHEELS = {  # distribution -> tool; CUDA 13+ wheels have no -cuXX suffix
    "nvidia-cuda-cuobjdump": "cuobjdump", "nvidia-cuda-cuobjdump-cu12": "cuobjdump",
    "nvidia-cuda-nvdisasm": "nvdisasm", "nvidia-cuda-nvdisasm-cu12": "nvdisasm",
}
_RELEASE = re.compile(r"release (\d+)\.(\d+), V([\d.]+)")


@dataclass(frozen=True)
class Tool:
    """A cuobjdump or nvdisasm executable, where it came from and its version."""

    kind: str        # "cuobjdump" or "nvdisasm"
    path: str
    origin: str      # "wheel nvidia-cuda-cuobjdump", "PATH", "beside nvcc", "given"
    version: str     # "13.5.37" ("" if --version said nothing readable)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0]) if self.version else 0

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run([self.path, *args], capture_output=True, text=True,
                              env=None if env is None else {**os.environ, **env})
        if proc.returncode != 0:
            raise RuntimeError(f"{self.kind} {' '.join(args)} failed:\n{proc.stderr.strip()}")
        return proc.stdout


def _tool_version(path: str) -> str | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    m = _RELEASE.search(out.stdout + out.stderr)
    return m.group(3) if m else ""


def _candidates() -> Iterable[tuple[str, str, str]]:
    """(kind, path, origin) of every cuobjdump and nvdisasm that may be installed."""
    for dist, tool in _WHEELS.items():
        try:
            files = importlib.metadata.distribution(dist).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in files:
            if f.name == tool and f.parent.name == "bin":
                yield tool, str(f.locate()), f"wheel {dist}"
    nvcc = shutil.which("nvcc")
    dirs: list[tuple[str, str | None]] = [("PATH", None)]
    if nvcc:
        dirs.append(("beside nvcc", str(Path(nvcc).resolve().parent)))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs.append((f"${var}/bin", str(Path(os.environ[var], "bin"))))
    for tool in ("cuobjdump", "nvdisasm"):
        for origin, d in dirs:
            path = shutil.which(tool, path=d)
            if path:
                yield tool, path, origin


@dataclass(frozen=True)
class Tools:
    """The disassemblers the SASS report uses: ``cuobjdump`` for ``-res-usage`` and
    ``nvdisasm`` for the SASS (from CUDA 13 on, ``cuobjdump -sass`` itself runs nvdisasm and
    fails without it). Either one alone is enough: without nvdisasm the SASS comes from
    ``cuobjdump -sass`` (standalone up to CUDA 12), without cuobjdump the resources come from
    the ptxas lines of the same NVRTC compile."""

    cuobjdump: Tool | None = None
    nvdisasm: Tool | None = None

    def __bool__(self) -> bool:
        return self.cuobjdump is not None or self.nvdisasm is not None

    def describe(self) -> str:
        return "; ".join(f"{t.kind} {t.version or '?'} ({t.origin}: {t.path})"
                         for t in (self.cuobjdump, self.nvdisasm) if t is not None)

    def res_usage(self, cubin: str) -> str | None:
        return self.cuobjdump.run("-res-usage", cubin) if self.cuobjdump is not None else None

    def sass(self, cubin: str) -> str:
        if self.nvdisasm is not None:
            return self.nvdisasm.run("-c", cubin)
        assert self.cuobjdump is not None, "no disassembler"
        return self.cuobjdump.run("-sass", cubin)


def find_tools(cuobjdump: str | None = None, nvdisasm: str | None = None) -> Tools:
    """The best cuobjdump and nvdisasm installed (either may be None): of the CUDA major
    version of the NVRTC in use if there is one, else wheels first, then PATH, then beside
    nvcc, $CUDA_HOME/bin, $CUDA_PATH/bin. For CUDA 12 there is no wheel (the
    ``nvidia-cuda-cuobjdump`` / ``nvidia-cuda-nvdisasm`` wheels start at 13.2); the CUDA 13 tools
    read NVRTC 12.9's sm_80 and sm_90 cubins, and the report checks their register counts
    against ptxas'. An explicit path overrides the search for that tool."""
    try:
        want = int(nvrtc_version().split(".")[0])
    except Exception:  # noqa: BLE001 - no NVRTC: any order is as good
        want = 0
    found: dict[str, Tool] = {}
    for kind, p, origin in _candidates():
        real = str(Path(p).resolve())
        if real in found or not os.access(real, os.X_OK):
            continue
        version = _tool_version(real)
        if version is not None:
            found[real] = Tool(kind, real, origin, version)
    order = list(found.values())
    ranked = sorted(order, key=lambda t: (t.major != want, order.index(t)))
    best = {kind: next((t for t in ranked if t.kind == kind), None)
            for kind in ("cuobjdump", "nvdisasm")}
    for kind, given in (("cuobjdump", cuobjdump), ("nvdisasm", nvdisasm)):
        if given is not None:
            best[kind] = Tool(kind, given, "given", _tool_version(given) or "")
    return Tools(best["cuobjdump"], best["nvdisasm"])


# ---------------------------------------------------------------------------------------------
# SASS

@dataclass
class Instruction:
    """One SASS instruction: its byte address in the function, predicate, opcode with its
    modifiers (``LDS.128``), operands, and branch or call target (an address) if any."""

    address: int
    opcode: str
    operands: str = ""
    predicate: str = ""
    target: int | None = None

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]


_INSN = re.compile(r"/\*([0-9a-fA-F]{4,})\*/\s+(?:(@!?U?P\w+)\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_LABEL = re.compile(r"^\s*([.$A-Za-z_][\w.$]*):\s*$")
_HEX_TARGET = re.compile(r"(0x[0-9a-fA-F]+)\s*$")
_LABEL_TARGET = re.compile(r"`\(([^)]+)\)")
_CUOBJDUMP_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
_NVDISASM_SECTION = re.compile(r"^\s*\.section\s+\.text\.([^,\s]+)")
_BRANCHES = {"BRA", "CALL", "JMP"}


def parse_sass(text: str) -> dict[str, list[Instruction]]:
    """Instructions per function from ``cuobjdump -sass`` or ``nvdisasm`` output (functions by
    their ELF symbol, mangled). Branch and call targets become addresses: cuobjdump prints
    them, nvdisasm names labels, resolved here."""
    functions: dict[str, list[Instruction]] = {}
    labels: dict[str, dict[str, int]] = {}
    pending: dict[str, list[tuple[Instruction, str]]] = {}
    current: list[Instruction] | None = None
    name = ""
    waiting: list[str] = []
    for line in text.splitlines():
        m = _CUOBJDUMP_FUNCTION.match(line) or _NVDISASM_SECTION.match(line)
        if m:
            name = m.group(1)
            current = functions.setdefault(name, [])
            labels.setdefault(name, {})
            pending.setdefault(name, [])
            waiting = []
            continue
        if current is None:
            continue
        if lm := _LABEL.match(line):
            waiting.append(lm.group(1))
            continue
        im = _INSN.search(line)
        if not im:
            continue
        insn = Instruction(int(im.group(1), 16), im.group(3), im.group(4).strip(),
                           im.group(2) or "")
        for label in waiting:
            labels[name][label] = insn.address
        waiting = []
        if insn.base in _BRANCHES:
            if hm := _HEX_TARGET.search(insn.operands):
                insn.target = int(hm.group(1), 16)
            elif lt := _LABEL_TARGET.search(insn.operands):
                pending[name].append((insn, lt.group(1)))
        current.append(insn)
    for fname, refs in pending.items():
        for insn, label in refs:
            insn.target = labels[fname].get(label)
    return functions


@dataclass
class Loop:
    """A loop in the SASS: its header (the backward branch's target) and last back edge,
    byte addresses, both included."""

    start: int
    end: int

    def contains(self, other: Loop) -> bool:
        return self.start <= other.start and other.end <= self.end and self != other

    def body(self, insns: Sequence[Instruction]) -> list[Instruction]:
        return [i for i in insns if self.start <= i.address <= self.end]


def find_loops(insns: Sequence[Instruction]) -> list[Loop]:
    """Every loop: a ``BRA`` whose target precedes it is a back edge, and the loop runs from
    the target to the branch; back edges to one header make one loop (to the last of them).
    A branch to itself (the trap after a function's last EXIT) is no loop."""
    ends: dict[int, int] = {}
    for i in insns:
        if i.base == "BRA" and i.target is not None and i.target < i.address:
            ends[i.target] = max(ends.get(i.target, i.address), i.address)
    return [Loop(start, end) for start, end in sorted(ends.items())]


def _size(loop: Loop, insns: Sequence[Instruction]) -> int:
    return sum(1 for i in loop.body(insns) if i.base != "NOP")


def hot_loop(insns: Sequence[Instruction]) -> Loop | None:
    """The loop whose instruction mix speaks for the kernel's speed, or None if it has none.

    Heuristic, without a profile: the kernel's *main loop nest* is the outermost loop (one no
    other loop contains) with the most instructions, nested loops included; the hot loop is
    the innermost loop (one containing no other loop) of that nest with the most instructions.
    The biggest nest is where the work is (a GEMM's K loop, a grid-stride loop over the
    elements), the innermost level is what runs most often, and among innermost loops the
    largest is the unrolled main body rather than its remainder loop or a small loop of
    set-up code. A nest that contains no other loop is its own hot loop. Instructions are
    counted by address range, NOPs excluded; code a loop calls (a 64-bit division's slow
    path) is not in its range and not counted, except as a division (:func:`loop_mix`).
    """
    loops = find_loops(insns)
    if not loops:
        return None
    outer = [l for l in loops if not any(o.contains(l) for o in loops)]
    nest = max(outer, key=lambda l: _size(l, insns))
    inner = [l for l in loops if (l == nest or nest.contains(l))
             and not any(l.contains(o) for o in loops)]
    return max(inner, key=lambda l: _size(l, insns))


#: Opcodes that count as math: fused multiply-adds and matrix instructions, the work of a
#: GEMM-like loop (the reference figures count FFMA/DFMA/HMMA). Plain FMUL/FADD/DMUL/DADD,
#: FMNMX, MUFU and integer arithmetic are not math here: in a GEMM they are overhead, and an
#: elementwise kernel is memory bound whatever its mix (its full histogram is in the JSON).
MATH_OPCODES = frozenset({"FFMA", "DFMA", "HFMA2", "HMMA", "IMMA", "DMMA", "BMMA",
                          "HGMMA", "IGMMA", "QGMMA", "BGMMA"})


def _is_math(i: Instruction) -> bool:
    if i.base not in MATH_OPCODES:
        return False
    # ptxas materialises constants with "HFMA2.MMA Rd, -RZ, RZ, imm": a move, not math
    return not (i.base == "HFMA2" and i.operands.replace(" ", "").split(",")[1:3] == ["-RZ", "RZ"])


def _is_int_div(i: Instruction) -> bool:
    # an integer division or remainder expands to a float reciprocal seeded by I2F.*.RP
    # (I2F.U32.RP for 32 bits, I2F.U64.RP in a 64-bit division's slow path)
    return i.base == "I2F" and ".RP" in i.opcode


def _subroutine(insns: Sequence[Instruction], start: int) -> list[Instruction]:
    body = []
    for i in insns:
        if i.address >= start:
            body.append(i)
            if i.base == "RET":
                break
    return body


@dataclass
class LoopMix:
    """Instruction mix of one loop. ``instructions`` excludes NOPs; ``int_divides`` counts the
    inline integer division/remainder expansions plus calls to a division subroutine (so a
    64-bit division shows as 2: its inline 32-bit fast path and the call to its slow path)."""

    start: int
    end: int
    instructions: int
    math: int
    shared_loads: int       # LDS*, LDSM
    global_loads: int       # LDG*
    int_divides: int
    division_calls: int     # the calls among int_divides
    barriers: int           # BAR.SYNC / BAR.* (block barriers; not warp-level BSSY/BSYNC)
    opcodes: dict[str, int] = field(default_factory=dict)

    @property
    def math_share(self) -> float:
        return self.math / self.instructions if self.instructions else 0.0


def loop_mix(insns: Sequence[Instruction], loop: Loop) -> LoopMix:
    """Counts of ``loop``'s instructions by class (see :data:`MATH_OPCODES`)."""
    body = [i for i in loop.body(insns) if i.base != "NOP"]
    calls = [i for i in body if i.base == "CALL" and i.target is not None]
    div_calls = sum(1 for c in calls
                    if c.target is not None and any(map(_is_int_div, _subroutine(insns, c.target))))
    return LoopMix(
        start=loop.start, end=loop.end, instructions=len(body),
        math=sum(map(_is_math, body)),
        shared_loads=sum(1 for i in body if i.base in ("LDS", "LDSM")),
        global_loads=sum(1 for i in body if i.base == "LDG"),
        int_divides=sum(map(_is_int_div, body)) + div_calls, division_calls=div_calls,
        barriers=sum(1 for i in body if i.base == "BAR"),
        opcodes=dict(Counter(i.base for i in body).most_common()))


# ---------------------------------------------------------------------------------------------
# The report

_RES_USAGE = re.compile(r"Function ([^\s:]+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) "
                        r"LOCAL:(\d+)")


def parse_res_usage(text: str) -> dict[str, tuple[int, int, int, int]]:
    """``cuobjdump -res-usage``: (registers, stack, shared, local bytes) per mangled name. The
    shared figure is the kernel's .nv.shared section, which for sm_90 (not sm_80) includes
    the 1 KB system reserve whenever the kernel declares shared memory."""
    return {m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5)))
            for m in _RES_USAGE.finditer(text)}


@dataclass
class KernelReport:
    """The static report of one entry point on one architecture."""

    kernel: str
    source: str
    arch: int
    registers: int
    stack_bytes: int
    shared_bytes: int           # static shared memory the kernel declares (ptxas)
    shared_section_bytes: int   # its .nv.shared section (cuobjdump): + 1 KB reserve on sm_90
    local_bytes: int            # local memory per thread (spills and local arrays)
    spill_stores: int           # bytes, from ptxas
    spill_loads: int
    local_instructions: int     # LDL/STL in the whole kernel
    resources_from: str         # "cuobjdump -res-usage" or "ptxas -v"
    occupancy: Occupancy
    loops: int
    hot_loop: LoopMix | None

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["occupancy"]["fraction"] = round(self.occupancy.fraction, 4)
        if self.hot_loop is not None:
            d["hot_loop"]["math_share"] = round(self.hot_loop.math_share, 4)
        return d


def sass_report(source: str | Path | KernelSource, arch: int, tools: Tools,
                block_threads: int | None = None) -> list[KernelReport]:
    """Compile ``source`` for ``sm_<arch>`` with NVRTC, disassemble it with ``tools`` and
    report every entry point, in the order the source declares them."""
    src = kernel_source(source)
    cubin = compile_cubin(src, arch)
    threads = block_threads or BLOCK_THREADS.get(src.name, DEFAULT_BLOCK_THREADS)
    ptxas = {u.kernel: u for u in parse_ptxas(cubin.log, demangle=False)}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / f"{Path(src.name).stem}.sm_{arch}.cubin")
        Path(path).write_bytes(cubin.data)
        res = tools.res_usage(path)
        usage = parse_res_usage(res) if res is not None else {}
        sass = parse_sass(tools.sass(path))
    order = {name: i for i, name in enumerate(src.entry_points)}
    reports = []
    for mangled, name in sorted(cubin.names.items(), key=lambda kv: order[kv[1]]):
        p = ptxas.get(mangled, Usage(mangled))
        if mangled in usage:
            regs, stack, section, local = usage[mangled]
            origin = "cuobjdump -res-usage"
        else:
            regs, stack, section, local = p.registers, p.stack_bytes, p.shared_bytes, p.stack_bytes
            origin = "ptxas -v"
        # ptxas' figure is what the kernel declares; sm_90's section adds the 1 KB reserve
        shared = p.shared_bytes if mangled in ptxas else section
        insns = sass.get(mangled, [])
        loop = hot_loop(insns)
        reports.append(KernelReport(
            kernel=name, source=src.name, arch=arch, registers=regs, stack_bytes=stack,
            shared_bytes=shared, shared_section_bytes=section, local_bytes=local,
            spill_stores=p.spill_stores, spill_loads=p.spill_loads,
            local_instructions=sum(1 for i in insns if i.base in ("LDL", "STL")),
            resources_from=origin, occupancy=occupancy(regs, shared, threads, arch),
            loops=len(find_loops(insns)),
            hot_loop=loop_mix(insns, loop) if loop is not None else None))
    return reports


_HEADER = (f"{'kernel':<37} {'sm':>3} {'regs':>4} {'spill':>7} {'smem B':>6} {'occupancy':>15} "
           f"{'loop':>5} {'math':>5} {'LDS':>4} {'LDG':>4} {'idiv':>4} {'bar':>3}")


_LIMITER = {"threads": "thr", "blocks": "blk", "registers": "reg", "shared": "smem"}


def format_row(r: KernelReport) -> str:
    o = r.occupancy
    occ = f"{o.fraction:.0%} {o.blocks_per_sm}x{o.block_threads} {_LIMITER[o.limiter]}"
    spill = f"{r.spill_stores}/{r.spill_loads}"
    if r.hot_loop is None:
        loop = f"{'-':>5} {'-':>5} {'-':>4} {'-':>4} {'-':>4} {'-':>3}"
    else:
        h = r.hot_loop
        loop = (f"{h.instructions:>5} {h.math_share:>5.0%} {h.shared_loads:>4} "
                f"{h.global_loads:>4} {h.int_divides:>4} {h.barriers:>3}")
    return (f"{r.kernel:<37} {r.arch:>3} {r.registers:>4} {spill:>7} {r.shared_bytes:>6} "
            f"{occ:>15} {loop}")


def _limits_line(arch: int) -> str:
    lim = SM_LIMITS[arch]
    return (f"# {lim.name}: {lim.registers // 1024}K registers (per-warp units of "
            f"{lim.register_unit}, {lim.register_partitions} quarters), {lim.max_threads} "
            f"threads, {lim.max_blocks} blocks, {lim.shared_bytes // 1024} KB shared per SM "
            f"(+{lim.reserved_shared} B reserved per block, {lim.shared_unit} B units)")


def _sass_main(paths: Sequence[str | Path], archs: Sequence[int], block: int | None,
               tools: Tools, json_path: str | None) -> int:
    try:
        nvrtc = nvrtc_version()
    except Exception as exc:  # noqa: BLE001 - CuPy or NVRTC missing: informational only
        print(f"NVRTC not available ({exc}): --sass needs CuPy and the nvidia-cuda-nvrtc wheel "
              "(the test extra)")
        return 0
    if not tools:
        print("no cuobjdump or nvdisasm found: --sass needs the nvidia-cuda-cuobjdump and "
              "nvidia-cuda-nvdisasm wheels (the test extra) or a CUDA toolkit's cuobjdump/nvdisasm")
        return 0
    print(f"# NVRTC {nvrtc}; {tools.describe()}")
    for arch in archs:
        print(_limits_line(arch))
    print("# spill: ptxas bytes stored/loaded; occupancy: warps/64, blocks x threads, limiter; "
          "loop: hot-loop instructions, math = FFMA/DFMA/HFMA2/xMMA share")
    print(_HEADER)
    reports: list[KernelReport] = []
    for path in paths:
        for arch in archs:
            try:
                rows = sass_report(path, arch, tools, block)
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                return 1
            print(f"# {kernel_source(path).name} (sm_{arch})")
            for r in rows:
                print(format_row(r))
            reports.extend(rows)
    if json_path:
        doc = {"nvrtc": nvrtc, "tools": asdict(tools),
               "limits": {str(a): asdict(SM_LIMITS[a]) for a in archs},
               "math_opcodes": sorted(MATH_OPCODES), "kernels": [r.row() for r in reports]}
        Path(json_path).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"# JSON written to {json_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlcore.kernels.resources",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", help="files (default: every kernels/*.cu)")
    parser.add_argument("--arch", type=int, action="append",
                        help="sm version, repeatable (default: 90; with --sass 80 and 90)")
    parser.add_argument("--sass", action="store_true",
                        help="NVRTC cubins and their SASS: occupancy and the hot loop's mix")
    parser.add_argument("--json", metavar="FILE", help="with --sass: also write the report here")
    parser.add_argument("--block", type=int, help="with --sass: threads per block for occupancy "
                        "(default: what dlcore launches, 256)")
    for tool in ("cuobjdump", "nvdisasm"):
        parser.add_argument(f"--{tool}", metavar="PATH", help=f"with --sass: this {tool} "
                            "(default: the wheel's, then PATH's, then the one beside nvcc)")
    args = parser.parse_args(argv)
    if not args.sass and (args.json or args.block or args.cuobjdump or args.nvdisasm):
        parser.error("--json, --block, --cuobjdump and --nvdisasm need --sass")
    paths = args.sources or product_sources()
    if not paths:
        print("(no kernel sources)")
        return 0
    if args.sass:
        unknown = [a for a in args.arch or () if a not in SM_LIMITS]
        if unknown:
            parser.error(f"--sass knows the limits of sm_{', sm_'.join(map(str, SM_LIMITS))}")
        tools = find_tools(args.cuobjdump, args.nvdisasm)
        return _sass_main(paths, args.arch or (80, 90), args.block, tools, args.json)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        print("nvcc not found: resource usage needs the CUDA toolkit (informational only)")
        return 0
    print(f"{'kernel':<48} {'regs':>5} {'smem B':>7} {'stack B':>8} "
          f"{'spill st':>9} {'spill ld':>9}")
    for arch in args.arch or (90,):
        for path in paths:
            source = kernel_source(path)
            print(f"# {source.name} (sm_{arch})")
            for u in resource_usage(source, arch, nvcc):
                print(f"{u.kernel:<48} {u.registers:>5} {u.shared_bytes:>7} {u.stack_bytes:>8} "
                      f"{u.spill_stores:>9} {u.spill_loads:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
