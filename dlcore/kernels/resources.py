"""Registers, shared memory and spills per kernel, from ``nvcc --resource-usage`` (informational).

Read it after any kernel change: a register jump lowers occupancy, and any spill store/load is
local-memory traffic the kernel did not plan for. Needs ``nvcc`` (no GPU)::

    python -m dlcore.kernels.resources                 # every kernels/*.cu, sm_90
    python -m dlcore.kernels.resources x.cu --arch 80

nvcc cannot take NVRTC name expressions, so each source is compiled through a small wrapper that
takes the address of every declared instantiation, which instantiates it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


def parse_ptxas(log: str) -> list[Usage]:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlcore.kernels.resources",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", help="files (default: every kernels/*.cu)")
    parser.add_argument("--arch", type=int, default=90)
    args = parser.parse_args(argv)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        print("nvcc not found: resource usage needs the CUDA toolkit (informational only)")
        return 0
    paths = args.sources or product_sources()
    print(f"{'kernel':<48} {'regs':>5} {'smem B':>7} {'stack B':>8} "
          f"{'spill st':>9} {'spill ld':>9}")
    for path in paths:
        source = kernel_source(path)
        print(f"# {source.name} (sm_{args.arch})")
        for u in resource_usage(source, args.arch, nvcc):
            print(f"{u.kernel:<48} {u.registers:>5} {u.shared_bytes:>7} {u.stack_bytes:>8} "
                  f"{u.spill_stores:>9} {u.spill_loads:>9}")
    if not paths:
        print("(no kernel sources)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
