"""Emulator semantics in detail: warp collectives, shared memory fill, launch checks and the
stuck-block diagnostics, on small inline kernels (one source, one build)."""

from __future__ import annotations

import numpy as np
import pytest

from dlcore.device import Device
from dlcore.kernels import KernelSource
from dlcore.kernels.emu import EmulatorError, RawModule

EMU = Device("emu")

SOURCE = KernelSource("emu_runtime.cu", r"""
// dlcore: instantiate shuffles<int>
template <typename T>
__global__ void shuffles(T* out) {  // out: 6 x blockDim.x
  const int t = threadIdx.x, n = blockDim.x;
  const T v = T(100 + t);
  out[0 * n + t] = __shfl_sync(0xffffffffu, v, 3);
  out[1 * n + t] = __shfl_up_sync(0xffffffffu, v, 1);
  out[2 * n + t] = __shfl_down_sync(0xffffffffu, v, 2, 8);
  out[3 * n + t] = __shfl_xor_sync(0xffffffffu, v, 1);
  out[4 * n + t] = (T)__ballot_sync(0xffffffffu, t % 3 == 0);
  out[5 * n + t] = (T)(__any_sync(0xffffffffu, t == 5) + 2 * __all_sync(0xffffffffu, t < 40));
}

extern "C" __global__ void read_shared_unwritten(float* out) {
  __shared__ float buf[64];
  extern __shared__ float dyn[];
  out[threadIdx.x] = buf[threadIdx.x] + dyn[threadIdx.x];
}

extern "C" __global__ void barriers_at_two_lines(int* out) {
  if (threadIdx.x % 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

extern "C" __global__ void shuffle_with_exited_lane(float* out) {
  if (threadIdx.x == 7) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}

extern "C" __global__ void dynamic_shared_overrun(float* out, int n) {
  extern __shared__ float dyn[];
  dyn[threadIdx.x + n] = 1.f;
  out[threadIdx.x] = 0.f;
}

extern "C" __global__ void indices(int* out) {
  const long long t =
      threadIdx.x + blockDim.x * (threadIdx.y + (long long)blockDim.y * threadIdx.z);
  const long long b = blockIdx.x + gridDim.x * (blockIdx.y + (long long)gridDim.y * blockIdx.z);
  const long long threads = (long long)blockDim.x * blockDim.y * blockDim.z;
  out[b * threads + t] = (int)(b * 1000 + t);
}
""")


def _run(name: str, grid, block, args, shared_mem: int = 0) -> None:  # type: ignore[no-untyped-def]
    EMU.kernels.function(SOURCE, name)(grid, block, args, shared_mem)


def test_warp_collectives_match_cuda_semantics(emu_seed: int) -> None:
    n = 64
    out = np.zeros(6 * n, np.int32)
    _run("shuffles<int>", (1,), (n,), (out,))
    v = 100 + np.arange(n)
    lane, base = np.arange(n) % 32, np.arange(n) - np.arange(n) % 32
    rows = out.reshape(6, n)
    np.testing.assert_array_equal(rows[0], base + 100 + 3)
    np.testing.assert_array_equal(rows[1], np.where(lane >= 1, v - 1, v))
    np.testing.assert_array_equal(rows[2], np.where(lane % 8 + 2 < 8, v + 2, v))
    np.testing.assert_array_equal(rows[3], v ^ 1)
    ballot = [sum(1 << l for l in range(32) if (w * 32 + l) % 3 == 0) for w in range(2)]
    np.testing.assert_array_equal(rows[4],
                                  np.repeat(np.array(ballot, np.uint32).view(np.int32), 32))
    np.testing.assert_array_equal(rows[5], [1 + 2] * 32 + [0 + 0] * 32)


def test_shared_memory_starts_as_nan() -> None:
    out = np.zeros(64, np.float32)
    _run("read_shared_unwritten", (2,), (64,), (out,), shared_mem=64 * 4)
    assert np.isnan(out).all()


def test_barriers_at_different_lines_are_divergence() -> None:
    with pytest.raises(EmulatorError, match=r"different __syncthreads calls \(\d+ at line 2\d, "
                       r"\d+ at line 2\d\)"):
        _run("barriers_at_two_lines", (1,), (32,), (np.zeros(32, np.int32),))


def test_shuffle_with_an_exited_lane_is_a_deadlock() -> None:
    with pytest.raises(EmulatorError, match=r"warp collective deadlock.*__shfl_xor_sync "
                       r"\(line \d+, mask 0xffffffff\) but warp 0 lanes \{7\} never join it"):
        _run("shuffle_with_exited_lane", (1,), (32,), (np.zeros(32, np.float32),))


def test_dynamic_shared_overrun_is_caught() -> None:
    with pytest.raises(EmulatorError, match=r"out-of-bounds write of dynamic shared memory "
                       r"\(extern __shared__, 128 bytes\)"):
        _run("dynamic_shared_overrun", (1,), (32,), (np.zeros(32, np.float32), np.int32(1)), 128)


def test_three_dimensional_indices() -> None:
    grid, block = (3, 2, 2), (4, 2, 3)
    out = np.full(12 * 24, -1, np.int32)
    _run("indices", grid, block, (out,))
    expected = (np.arange(12)[:, None] * 1000 + np.arange(24)[None, :]).ravel()
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(("grid", "block", "shared_mem", "message"), [
    ((1,), (1025,), 0, "exceeds 1024 threads"),
    ((1, 70000), (32,), 0, "exceeds"),
    ((1,), (32,), 64 * 1024, "shared_mem=65536 bytes is outside"),
])
def test_invalid_launches_are_rejected(grid, block, shared_mem, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EmulatorError, match=message):
        _run("indices", grid, block, (np.zeros(2**17, np.int32),), shared_mem)


def test_wrong_argument_count_and_kind() -> None:
    """The emulator's own checks (the launch layer checks first, with the declared types:
    tests/kernels/test_launch_layer.py), so the module's function is called directly."""
    run = EMU.kernels.module(SOURCE).get_function("indices")
    with pytest.raises(EmulatorError, match="takes 1 arguments but got 2"):
        run((1,), (1,), (np.zeros(1, np.int32), np.int32(0)))
    with pytest.raises(EmulatorError, match="pointer parameter but got a scalar"):
        run((1,), (1,), (np.int32(0),))
    with pytest.raises(EmulatorError, match="not C-contiguous"):
        run((1,), (1,), (np.zeros((4, 4), np.int32)[:, 1],))


def test_raw_module_mirrors_cupy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "k.cu"
    path.write_text('extern "C" __global__ void fill(int* x, int v) { x[threadIdx.x] = v; }\n')
    mod = RawModule(path=str(path))
    x = np.zeros(8, np.int32)
    mod.get_function("fill")((1,), (8,), (x, np.int32(7)))
    assert (x == 7).all()
    with pytest.raises(KeyError, match="no kernel 'nope'"):
        mod.get_function("nope")


def test_syncwarp_takes_an_optional_mask() -> None:
    """`__syncwarp()` (all lanes) and `__syncwarp(mask)` both compile and synchronise the
    warp (regression: the no-argument form failed to compile under -std=c++17)."""
    src = KernelSource("syncwarp_forms.cu", r'''
extern "C" __global__ void rotate(float* x) {
  __shared__ float s[32];
  s[threadIdx.x] = x[threadIdx.x];
  __syncwarp();
  const float v = s[(threadIdx.x + 1) % 32];
  __syncwarp(0xffffffffu);
  x[threadIdx.x] = v;
}
''')
    x = np.arange(32, dtype=np.float32)
    Device("emu").kernels.function(src, "rotate")((1,), (32,), (x,))
    np.testing.assert_array_equal(x, np.roll(np.arange(32, dtype=np.float32), -1))
