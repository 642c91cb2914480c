"""``python -m dlcore.kernels.resources``: ptxas parsing, occupancy, SASS loops, and real runs
(nvcc where installed; NVRTC + cuobjdump/nvdisasm for ``--sass``, which the test extra has)."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shutil
import struct
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

from dlcore.kernels import kernel_source, product_sources
from dlcore.kernels.resources import (
    BLOCK_THREADS, SM_LIMITS, KernelReport, Tools, compile_cubin, elf_size, find_loops,
    find_tools, hot_loop, loop_mix, main, occupancy, pad_cubin, parse_ptxas, parse_sass,
    resource_usage, sass_report)
from kernel_samples import SAMPLES

LOG = """\
ptxas info    : Compiling entry function 'histogram' for 'sm_90'
ptxas info    : Function properties for histogram
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 14 registers, used 1 barriers, 4096 bytes smem, 384 bytes cmem[0]
"""


def test_parse_ptxas() -> None:
    (u,) = parse_ptxas(LOG)
    assert (u.kernel, u.registers, u.shared_bytes) == ("histogram", 14, 4096)
    assert (u.stack_bytes, u.spill_stores, u.spill_loads) == (8, 4, 4)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_nvcc_reports_every_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    source = kernel_source(SAMPLES)
    usages = {u.kernel.split("(")[0].removeprefix("void "): u for u in resource_usage(source)}
    assert set(usages) == set(source.entry_points)
    assert usages["histogram"].shared_bytes == 4096
    assert main([str(SAMPLES)]) == 0
    assert "block_sum<float>" in capsys.readouterr().out


# ---- occupancy ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("regs, smem, threads, blocks, limiter", [
    (32, 0, 256, 8, "threads"),         # 2048 threads / 256
    (40, 0, 256, 6, "registers"),       # 1280 regs a warp: 12 warps a quarter, 48 warps
    (80, 8320, 256, 3, "registers"),    # conv2d float: 2560 a warp, 6 a quarter, 24 warps
    (128, 16640, 256, 2, "registers"),  # 16 warps
    (32, 0, 32, 32, "blocks"),          # one-warp blocks: the 32-block limit
    (16, 48 * 1024, 128, None, "shared"),
])
def test_occupancy(arch: int, regs: int, smem: int, threads: int, blocks: int | None,
                   limiter: str) -> None:
    occ = occupancy(regs, smem, threads, arch)
    if blocks is None:  # 48 KB + 1 KB reserve: 3 blocks in 164 KB, 4 in 228 KB
        blocks = {80: 3, 90: 4}[arch]
    assert (occ.blocks_per_sm, occ.limiter) == (blocks, limiter)
    assert occ.fraction == blocks * (threads // 32) / 64
    assert occupancy(256, 0, 256, arch).blocks_per_sm == 0  # over 255 registers: cannot launch
    assert occupancy(8, SM_LIMITS[arch].shared_per_block + 1, 32, arch).blocks_per_sm == 0


def test_block_threads_match_the_launch_code() -> None:
    """The report's block sizes are the ones dlcore/ops/*_cuda.py launch with."""
    for path in product_sources():
        found = False
        for mod_path in Path(inspect.getfile(importlib.import_module("dlcore.ops"))).parent.glob(
                "*_cuda.py"):
            mod = importlib.import_module(f"dlcore.ops.{mod_path.stem}")
            if getattr(mod, "SOURCE", None) != path.name:
                continue
            found = True
            blocks = {int(getattr(mod, b, b)) for b in
                      re.findall(r"\((THREADS|\d+),\)", inspect.getsource(mod))}
            if not blocks:  # 2-D blocks of at most THREADS threads (pool2d), the launch bound
                blocks = {int(mod.THREADS)}
            assert blocks == {BLOCK_THREADS[path.name]}, (path.name, blocks)
        assert found, f"no dlcore/ops/*_cuda.py launches {path.name}"


# ---- SASS parsing and loops -----------------------------------------------------------------

# cuobjdump -sass shape: an outer loop (0x10-0xc0) holding two inner loops, the second larger,
# then a separate smaller nest, then the trap after EXIT (a branch to itself, no loop).
CUOBJDUMP = """\
\tcode for sm_90
\t\tFunction : toy
        /*0000*/                   MOV R1, c[0x0][0x28] ;          /* 0x00000a0000017a02 */
                                                                   /* 0x000fe40000000f00 */
        /*0010*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0020*/                   LDS.128 R4, [R0] ;
        /*0030*/                   FFMA R3, R4, R5, R3 ;
        /*0040*/              @P0 BRA 0x20 ;
        /*0050*/                   LDS R4, [R0+0x4] ;
        /*0060*/                   FFMA R3, R4, R4, R3 ;
        /*0070*/                   I2F.U32.RP R8, R9 ;
        /*0080*/                   HFMA2.MMA R10, -RZ, RZ, 0, 0 ;
        /*0090*/                   LDG.E R6, [R2.64] ;
        /*00a0*/                   NOP ;
        /*00b0*/              @!P1 BRA 0x50 ;
        /*00c0*/              @P2 BRA 0x10 ;
        /*00d0*/                   IADD3 R0, R0, 0x1, RZ ;
        /*00e0*/              @P3 BRA 0xd0 ;
        /*00f0*/                   EXIT ;
        /*0100*/                   BRA 0x100;
"""

NVDISASM = """\
\t.section\t.text.toy,"ax",@progbits
toy:
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   LDS R4, [R0] ;
        /*0020*/                   FFMA R3, R4, R4, R3 ;
        /*0030*/                   CALL.REL.NOINC `($__internal_0_$__cuda_sm20_div_u64) ;
        /*0040*/              @P0 BRA `(.L_x_0) ;
        /*0050*/                   EXIT ;
.L_x_1:
        /*0060*/                   BRA `(.L_x_1);
$__internal_0_$__cuda_sm20_div_u64:
        /*0070*/                   I2F.U64.RP R2, R4 ;
        /*0080*/                   RET.REL.NODEC R6 0x0 ;
"""


def test_parse_sass_and_the_hot_loop() -> None:
    (insns,) = parse_sass(CUOBJDUMP).values()
    assert len(insns) == 17 and insns[4].opcode == "BRA" and insns[4].predicate == "@P0"
    loops = find_loops(insns)
    assert [(l.start, l.end) for l in loops] == [(0x10, 0xc0), (0x20, 0x40), (0x50, 0xb0),
                                                  (0xd0, 0xe0)]
    hot = hot_loop(insns)
    assert hot is not None and (hot.start, hot.end) == (0x50, 0xb0)
    mix = loop_mix(insns, hot)
    # NOP not counted; the HFMA2.MMA constant move is not math; I2F.U32.RP is a division
    assert (mix.instructions, mix.math, mix.shared_loads, mix.global_loads) == (6, 1, 1, 1)
    assert (mix.int_divides, mix.barriers) == (1, 0)
    assert mix.math_share == pytest.approx(1 / 6)
    outer = loop_mix(insns, loops[0])
    assert (outer.barriers, outer.shared_loads, outer.math) == (1, 2, 2)


def test_parse_nvdisasm_labels_and_division_calls() -> None:
    (insns,) = parse_sass(NVDISASM).values()
    call = next(i for i in insns if i.base == "CALL")
    assert call.target == 0x70
    hot = hot_loop(insns)
    assert hot is not None and (hot.start, hot.end) == (0x10, 0x40)  # not the trap at 0x60
    mix = loop_mix(insns, hot)
    assert (mix.instructions, mix.math, mix.int_divides, mix.division_calls) == (4, 1, 1, 1)
    assert hot_loop(insns[:1]) is None


def _elf(payload: int) -> bytes:
    """A minimal ELF64 file: the header, then `payload` bytes, then one program header."""
    phoff = 0x40 + payload
    header = bytearray(0x40)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<QQ", header, 0x20, phoff, 0)
    struct.pack_into("<HHHH", header, 0x36, 56, 1, 64, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0x40, 0, 0, payload, payload, 8)
    return bytes(header) + bytes(payload) + phdr


def test_pad_cubin_restores_the_last_byte() -> None:
    full = _elf(40)
    assert elf_size(full) == len(full) and pad_cubin(full) == full
    assert pad_cubin(full[:-1]) == full  # what CuPy's getCUBIN returns: one byte short
    with pytest.raises(ValueError):
        elf_size(b"not an ELF file at all" * 4)


# ---- real compiles: NVRTC + cuobjdump/nvdisasm ----------------------------------------------

@cache
def _tools() -> tuple[Tools, str]:
    try:
        from dlcore.kernels.compile_check import nvrtc_bindings

        nvrtc_bindings()
    except Exception as exc:  # noqa: BLE001
        return Tools(), f"NVRTC unavailable (CuPy / nvidia-cuda-nvrtc wheel): {exc}"
    tools = find_tools()
    if not tools:
        return tools, ("neither the nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm wheels (test "
                       "extra) nor a CUDA toolkit's cuobjdump or nvdisasm is installed")
    return tools, ""


needs_tools = pytest.mark.skipif(bool(_tools()[1]), reason=_tools()[1] or "tools present")

LOOP_SAMPLE = """\
// Stage 256 floats of x in shared memory per outer step; the inner loop (unrolled 8 times)
// multiplies them into acc: its body is shared loads and FFMAs.
extern "C" __global__ void tiled_dot(const float* __restrict__ x, float* __restrict__ out,
                                     float s, int n) {
  __shared__ float tile[256];
  float acc = 0.0f;
  for (int base = 0; base < n; base += 256) {
    tile[threadIdx.x] = base + (int)threadIdx.x < n ? x[base + threadIdx.x] : 0.0f;
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < 256; ++k) acc = fmaf(tile[k], s, acc);
    __syncthreads();
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}
"""


@needs_tools
@pytest.mark.parametrize("arch", [80, 90])
def test_sass_report_of_a_known_loop(tmp_path: Path, arch: int) -> None:
    cu = tmp_path / "loop_sample.cu"
    cu.write_text(LOOP_SAMPLE)
    cubin = compile_cubin(cu, arch)
    # CuPy's binding drops the last byte (or, fixed, none): padding restores the ELF size
    assert len(cubin.data) == elf_size(cubin.data) and len(cubin.data) - cubin.returned_bytes <= 1
    (r,) = sass_report(cu, arch, _tools()[0])
    assert r.kernel == "tiled_dot" and r.shared_bytes == 1024 and 0 < r.registers < 64
    assert (r.spill_stores, r.spill_loads, r.local_instructions) == (0, 0, 0)
    assert r.loops >= 2 and r.occupancy.blocks_per_sm == 8  # thread-limited at 256
    h = r.hot_loop
    assert h is not None
    assert h.opcodes.get("FFMA", 0) >= 8 and h.shared_loads >= 1
    assert (h.barriers, h.global_loads, h.int_divides) == (0, 0, 0)  # the inner loop
    assert 0.3 <= h.math_share <= 0.9


@cache
def _product_reports() -> list[KernelReport]:
    """Every product kernel's report at sm_80 and sm_90. The (source, arch) builds run in a
    thread each (NVRTC and the disassembler release the GIL): 62 -> 32 s on 2 cores."""
    tools = _tools()[0]
    jobs = [(path, arch) for path in product_sources() for arch in (80, 90)]
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        reports = pool.map(lambda job: sass_report(job[0], job[1], tools), jobs)
        return [r for per_job in reports for r in per_job]


@needs_tools
def test_product_kernels_never_spill() -> None:
    """Every product kernel, sm_80 and sm_90: no spill bytes, no local memory, no LDL/STL."""
    reports = _product_reports()
    expected = {(p.name, e) for p in product_sources() for e in kernel_source(p).entry_points}
    assert {(r.source, r.kernel) for r in reports} == expected
    spilling = [f"{r.kernel} sm_{r.arch}: {r.spill_stores}/{r.spill_loads} B, {r.local_bytes} B "
                f"local, {r.local_instructions} LDL/STL" for r in reports
                if r.spill_stores or r.spill_loads or r.local_bytes or r.local_instructions]
    assert not spilling, "kernels spill:\n" + "\n".join(spilling)
    assert all(r.occupancy.blocks_per_sm >= 1 for r in reports)


@needs_tools
def test_cubin_resources_agree_with_ptxas() -> None:
    """The disassembler (a CUDA 13 tool reading NVRTC 12 cubins) reads what ptxas wrote."""
    # the quickest product source to compile again: the check is of the tools, not the kernel
    for path in [min(product_sources(), key=lambda p: Path(p).stat().st_size)]:
        for arch in (80, 90):
            cubin = compile_cubin(path, arch)
            ptxas = {cubin.names[u.kernel]: u for u in parse_ptxas(cubin.log, demangle=False)}
            reports = [r for r in _product_reports() if r.source == path.name and r.arch == arch]
            read = [r for r in reports if r.resources_from == "cuobjdump -res-usage"]
            assert read, f"{path.name} sm_{arch}: no kernel's resources read by cuobjdump"
            for r in read:
                assert r.registers == ptxas[r.kernel].registers, r.kernel
                assert r.shared_section_bytes - r.shared_bytes in (0, 1024), r.kernel


@needs_tools
def test_main_sass_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cu = tmp_path / "loop_sample.cu"
    cu.write_text(LOOP_SAMPLE)
    out = tmp_path / "report.json"
    assert main(["--sass", str(cu), "--arch", "90", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^tiled_dot\s+90\s+\d+\s+0/0\s+1024\s+100% 8x256 thr", text, re.M), text
    doc = json.loads(out.read_text())
    (k,) = doc["kernels"]
    assert k["kernel"] == "tiled_dot" and k["arch"] == 90 and 0.3 <= k["hot_loop"]["math_share"]
    assert doc["nvrtc"] and (doc["tools"]["cuobjdump"] or doc["tools"]["nvdisasm"])
    with pytest.raises(SystemExit):
        main(["--json", str(out)])  # --json needs --sass
