"""Asynchronous copies (cuda_pipeline.h), cooperative launches (cooperative_groups.h) and
``__launch_bounds__`` under the emulator: the samples (tests/kernels/cu/samples_pipeline_coop.cu)
agree with NumPy under several fiber and block orders, and the planted bugs
(planted_bugs_pipeline_coop.cu) and bad launches are caught."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dlcore.device import Device
from dlcore.kernels import KernelCompileError, KernelSource, kernel_source
from dlcore.kernels.emu import EmulatorError, RawModule
from dlcore.kernels.emu.build import rewrite_launch_bounds
from kernel_samples import CU_DIR, SEEDS

EMU = Device("emu")
SAMPLES = CU_DIR / "samples_pipeline_coop.cu"
BUGS = CU_DIR / "planted_bugs_pipeline_coop.cu"
ROW_BLOCK = 64  # threads per block of the row-sum kernels


def cooperative_module(path: Path) -> RawModule:
    """``path`` as a module made with ``enable_cooperative_groups=True`` (the kernel runner
    makes ordinary ones)."""
    src = kernel_source(path)
    return RawModule(code=src.tagged_code(), options=src.options(),
                     name_expressions=list(src.name_expressions) or None,
                     enable_cooperative_groups=True)


COOP_SAMPLES = cooperative_module(SAMPLES)
COOP_BUGS = cooperative_module(BUGS)


def row_sums(x: np.ndarray, name: str = "row_sums_pipelined", source: Path = SAMPLES,
             blocks: int = 2) -> np.ndarray:
    rows, cols = x.shape
    sums = np.zeros(rows, np.float32)
    if name == "row_sums_pipelined":
        args: tuple = (x, sums, np.int32(rows), np.int32(cols))
    else:  # the planted bugs: one row per block, one tile
        args, blocks = (x, sums, np.int32(cols)), rows
    EMU.kernels.function(source, name)((blocks,), (ROW_BLOCK,), args)
    return sums


def normalize(x: np.ndarray, blocks: int, threads: int = 128,
              module: RawModule = COOP_SAMPLES) -> np.ndarray:
    partial = np.full(blocks, np.nan, np.float32)
    out = np.zeros_like(x)
    module.get_function("normalize_by_sum")((blocks,), (threads,),
                                            (x, partial, out, np.int64(x.size)))
    return out


# ---- asynchronous copies ------------------------------------------------------------------
PIPELINE = KernelSource("pipeline_semantics.cu", r"""
#include <cuda_pipeline.h>
// One thread; out[k] records what shared memory holds at each point.
extern "C" __global__ void pipeline_groups(const float* x, float* out) {
  __shared__ float buf[4];
  buf[0] = -1.f;                                       // stale data, kept until the wait
  __pipeline_memcpy_async(&buf[0], &x[0], 4);
  __pipeline_commit();                                 // group 0
  __pipeline_memcpy_async(&buf[1], &x[1], 4);
  __pipeline_commit();                                 // group 1
  __pipeline_memcpy_async(&buf[2], &x[2], 4);          // not committed yet
  __pipeline_memcpy_async(&buf[3], &x[3], 4, 4);       // zfill: four zero bytes
  out[0] = buf[0];
  out[1] = buf[1];
  __pipeline_wait_prior(1);                            // group 0 lands
  out[2] = buf[0];
  out[3] = buf[1];
  __pipeline_wait_prior(0);                            // group 1 lands, not the open batch
  out[4] = buf[1];
  out[5] = buf[2];
  __pipeline_commit();
  __pipeline_wait_prior(0);
  out[6] = buf[2];
  out[7] = buf[3];
}

extern "C" __global__ void bad_copy(const float* x, float* y, int mode) {
  __shared__ float buf[8];
  if (mode == 0) __pipeline_memcpy_async(&buf[1], x, 8);
  if (mode == 1) __pipeline_memcpy_async(buf, x, 12);
  if (mode == 2) __pipeline_memcpy_async(y, x, 4);
  if (mode == 3) __pipeline_memcpy_async(buf, x, 4, 8);
  __pipeline_commit();
  __pipeline_wait_prior(0);
  y[0] = buf[0];
}
""")


def test_copies_land_at_the_wait_for_their_group() -> None:
    x = np.array([10, 11, 12, 13], np.float32)
    out = np.zeros(8, np.float32)
    EMU.kernels.function(PIPELINE, "pipeline_groups")((1,), (1,), (x, out))
    np.testing.assert_array_equal(out, [-1, np.nan, 10, np.nan, 11, np.nan, 12, 0])


@pytest.mark.parametrize(("mode", "message"), [
    (0, r"source 0x[0-9a-f]+ and destination 0x[0-9a-f]+ must be 8-byte aligned"),
    (1, "size_and_align is 12, not 4, 8 or 16"),
    (2, "the destination is not inside this block's shared memory"),
    (3, "zfill 8 exceeds size_and_align 4"),
])
def test_bad_copies_are_refused(mode: int, message: str) -> None:
    x, y = np.zeros(4, np.float32), np.zeros(4, np.float32)
    with pytest.raises(EmulatorError, match=r"kernel bad_copy: block \(0,0,0\): "
                       rf"__pipeline_memcpy_async \(line \d+\) in thread \(0,0,0\): {message}"):
        EMU.kernels.function(PIPELINE, "bad_copy")((1,), (1,), (x, y, np.int32(mode)))


@pytest.mark.parametrize("shape", [(1, 4), (5, 4 * ROW_BLOCK), (3, 4 * (2 * ROW_BLOCK + 5)),
                                   (4, 4 * 3 * ROW_BLOCK)])
def test_pipelined_row_sums_match_numpy(emu_seed: int, shape: tuple[int, int]) -> None:
    x = np.random.default_rng(shape[1]).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(row_sums(x), x.sum(axis=1, dtype=np.float64), rtol=1e-5, atol=1e-5)


def test_read_before_the_wait_sees_the_nan_fill(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.ones((3, 4 * ROW_BLOCK), np.float32)
    for seed in SEEDS:
        monkeypatch.setenv("DLCORE_EMU_SEED", str(seed))
        assert np.isnan(row_sums(x, "row_sums_no_wait", BUGS)).all(), seed


def test_wait_after_the_barrier_is_wrong_under_some_order(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.ones((3, 4 * ROW_BLOCK), np.float32)
    wrong = []
    for seed in SEEDS:
        monkeypatch.setenv("DLCORE_EMU_SEED", str(seed))
        sums = row_sums(x, "row_sums_wait_after_barrier", BUGS)
        if not np.array_equal(sums, x.sum(axis=1)):
            wrong.append(seed)
    assert wrong, "the misplaced wait gave the right sums under every seed"


# ---- cooperative launches -----------------------------------------------------------------
@pytest.mark.parametrize(("n", "blocks", "threads"), [(1, 1, 32), (5000, 6, 128), (777, 64, 256),
                                                      (3000, 16, 1024)])
def test_cooperative_normalize_matches_numpy(emu_seed: int, n: int, blocks: int,
                                             threads: int) -> None:
    x = np.random.default_rng(n).uniform(0.5, 1.5, n).astype(np.float32)
    np.testing.assert_allclose(normalize(x, blocks, threads), x / x.sum(dtype=np.float64),
                               rtol=1e-5)


def test_grid_sync_needs_a_cooperative_launch() -> None:
    x = np.ones(100, np.float32)
    run = EMU.kernels.function(SAMPLES, "normalize_by_sum")
    with pytest.raises(EmulatorError, match=r"kernel normalize_by_sum: block \(\d,0,0\): "
                       r"grid.sync\(\) \(line \d+\) in a kernel not launched cooperatively: "
                       r"build its module with "
                       r"RawModule\(\.\.\., enable_cooperative_groups=True\)"):
        run((2,), (128,), (x, np.zeros(2, np.float32), np.zeros_like(x), np.int64(x.size)))


@pytest.mark.parametrize(("blocks", "threads", "limit"), [(65, 256, 64), (17, 1024, 16),
                                                          (257, 32, 256)])
def test_a_grid_too_large_to_be_co_resident_is_refused(blocks: int, threads: int,
                                                       limit: int) -> None:
    x = np.ones(10, np.float32)
    with pytest.raises(EmulatorError, match=r"cooperative launch too large .*"
                       rf"grid \({blocks},1,1\) has {blocks} blocks of {threads} threads.* "
                       rf"at most {limit} such blocks can be co-resident on the emulated "
                       r"device \(8 SMs"):
        normalize(x, blocks, threads)


def test_co_residency_counts_dynamic_shared_memory() -> None:
    x = np.ones(10, np.float32)
    run = COOP_SAMPLES.get_function("normalize_by_sum")
    args = (x, np.zeros(41, np.float32), np.zeros_like(x), np.int64(x.size))
    # 40 KiB + 1 KiB reserved per block: 5 blocks in an SM's 228 KiB, 40 on 8 SMs
    with pytest.raises(EmulatorError, match="at most 40 such blocks"):
        run((41,), (32,), args, shared_mem=40 * 1024)
    run((40,), (32,), args, shared_mem=40 * 1024)


def test_grid_sync_with_an_exited_thread_is_divergence() -> None:
    x = np.ones(100, np.float32)
    with pytest.raises(EmulatorError, match=r"grid barrier divergence: 100 thread\(s\) \(first "
                       r"block \(\d,0,0\) thread \(\d+,0,0\)\) wait at grid.sync\(\) \(line \d+\) "
                       r"but 28 thread\(s\) .* exited without reaching it"):
        COOP_BUGS.get_function("grid_sync_after_early_exit")(
            (2,), (64,), (x, np.zeros(2, np.float32), np.int64(x.size)))


# ---- __launch_bounds__ --------------------------------------------------------------------
@pytest.mark.parametrize(("name", "bound", "fits", "too_many"), [
    ("scale_bounded<128>", 128, (128,), (256,)),
    ("copy_bounded", 64, (8, 8), (8, 9)),
])
def test_launch_bounds_are_enforced(name: str, bound: int, fits: tuple, too_many: tuple) -> None:
    x = np.arange(300, dtype=np.float32)
    y = np.zeros_like(x)
    args = (x, y, np.float32(2), np.int64(x.size)) if "scale" in name else (x, y, np.int64(x.size))
    run = EMU.kernels.function(SAMPLES, name)
    run((2,), fits, args)
    np.testing.assert_array_equal(y, x * (2 if "scale" in name else 1))
    threads = int(np.prod(too_many))
    with pytest.raises(EmulatorError, match=rf"kernel {name}: invalid launch: block "
                       rf"\({too_many[0]},{too_many[1] if len(too_many) > 1 else 1},1\) has "
                       rf"{threads} threads, more than the kernel's __launch_bounds__\({bound}\) "
                       r"\(line \d+\) allows; CUDA refuses it"):
        run((2,), too_many, args)


def test_launch_bounds_rewrite_keeps_lines() -> None:
    code = ("template <int B>\n__global__ void __launch_bounds__(B,\n 2) k(float* x)\n{\n}\n"
            'extern "C" __global__ __launch_bounds__(64) void j(int n);\n')
    out = rewrite_launch_bounds(code)
    assert out.count("\n") == code.count("\n")
    assert "{ ::dlemu::check_launch_bounds(2, B, 2);" in out
    assert "__launch_bounds__" not in out and "void j(int n);" in out


def test_launch_bounds_in_an_unparsed_form_do_not_compile() -> None:
    module = RawModule(code="#define BOUNDED __launch_bounds__(32)\n"
                       "template <int N> __global__ void BOUNDED k(float* x) { x[0] = N; }\n",
                       name_expressions=["k<1>"])
    with pytest.raises(KernelCompileError, match="launch_bounds_must_precede_the_kernel_name"):
        module.get_function("k<1>")
