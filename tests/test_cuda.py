"""Tests for dlcore.cuda.

The allocator's policy (peak tracking, retry, error message) is tested everywhere with
a fake pool; the queries are tested for their GPU-less behaviour here and for real on a
GPU, where the GPU-less tests skip and the GPU tests run.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlcore import cuda
import sys

import dlcore.device  # noqa: F401  -- load the submodule; dlcore.device is the function

device_mod = sys.modules["dlcore.device"]

HAS_GPU = device_mod.device_count() > 0
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA device")
needs_no_gpu = pytest.mark.skipif(HAS_GPU, reason="checks the GPU-less behaviour")

GiB = 1024**3


class FakeOOM(MemoryError):
    """Stands in for cupy.cuda.memory.OutOfMemoryError (also a MemoryError)."""


class FakePool:
    """The parts of cupy.cuda.MemoryPool that PoolAllocator uses, on one device.

    Chunks are rounded to 512 bytes as CuPy does; ``fail`` makes the next mallocs raise
    ``FakeOOM`` (or any exception given)."""

    def __init__(self, cached: int = 0, limit: int = 0) -> None:
        self.live: dict[int, int] = {}
        self.cached = cached
        self.limit = limit
        self.fail: list[BaseException] = []
        self.used_bytes_calls = 0
        self.free_all_blocks_calls = 0
        self._next_id = 0

    def malloc(self, size: int) -> SimpleNamespace:
        if self.fail:
            raise self.fail.pop(0)
        self._next_id += 1
        chunk = -(-size // 512) * 512
        self.live[self._next_id] = chunk
        return SimpleNamespace(device_id=0, id=self._next_id, mem=SimpleNamespace(size=chunk))

    def free(self, ptr: SimpleNamespace) -> None:
        self.cached += self.live.pop(ptr.id)

    def used_bytes(self) -> int:
        self.used_bytes_calls += 1
        return sum(self.live.values())

    def total_bytes(self) -> int:
        return sum(self.live.values()) + self.cached

    def get_limit(self) -> int:
        return self.limit

    def free_all_blocks(self) -> None:
        self.free_all_blocks_calls += 1
        self.cached = 0


def make_allocator(pool: FakePool, free: int = 1 * GiB, total: int = 80 * GiB):
    return cuda.PoolAllocator(pool, lambda: (free, total), lambda: 0)


# ---- peak tracking -------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 10_000)), max_size=60),
       st.integers(0, 5_000))
def test_peak_equals_peak_of_querying_every_malloc(ops, used_before):
    """The bound trick must record exactly the peak that querying on every malloc would."""
    pool = FakePool()
    if used_before:  # memory allocated before the allocator was installed
        pool.malloc(used_before)
    allocator = make_allocator(pool)
    live, expected = [], 0
    for is_alloc, value in ops:
        if is_alloc or not live:
            live.append(allocator(value))
            expected = max(expected, sum(pool.live.values()))
        else:
            pool.free(live.pop(value % len(live)))
    assert allocator.peak(0) == expected


def test_training_like_loop_queries_used_bytes_once_per_step():
    """Each step builds up 10 arrays, then frees them: only the first malloc of a step can
    push the bound past the peak."""
    pool = FakePool()
    allocator = make_allocator(pool)
    for _ in range(100):
        arrays = [allocator(4096) for _ in range(10)]
        for ptr in arrays:
            pool.free(ptr)
    assert allocator.peak(0) == 40_960
    # the first step raises the peak at each of its 10 mallocs, later steps query once
    assert pool.used_bytes_calls == 10 + 99  # querying on every malloc would be 1000


def test_reset_peak_restarts_from_current_usage():
    pool = FakePool()
    allocator = make_allocator(pool)
    big = allocator(10_240)
    allocator(512)
    pool.free(big)
    assert allocator.peak(0) == 10_752
    allocator.reset_peak(0, pool.used_bytes())
    assert allocator.peak(0) == 512
    allocator(1024)
    assert allocator.peak(0) == 1536
    assert allocator.devices() == [0]


# ---- out-of-memory policy ------------------------------------------------------------


def test_retry_after_releasing_cache_succeeds():
    pool = FakePool(cached=3 * GiB)
    pool.fail = [FakeOOM("limit")]
    ptr = make_allocator(pool)(1000)
    assert ptr.mem.size == 1024
    assert pool.free_all_blocks_calls == 1
    assert pool.cached == 0


def test_second_failure_raises_explained_out_of_memory_error():
    pool = FakePool(cached=3 * GiB)
    keep = pool.malloc(5 * GiB)
    pool.fail = [FakeOOM("first"), FakeOOM("second")]
    with pytest.raises(cuda.OutOfMemoryError) as info:
        make_allocator(pool, free=int(1.5 * GiB), total=80 * GiB)(2 * GiB)
    err = info.value
    assert isinstance(err, RuntimeError) and isinstance(err, MemoryError)
    assert str(err.__cause__) == "second"
    assert pool.free_all_blocks_calls == 1  # released once, retried once
    msg = str(err)
    assert "2.00 GiB (2,147,483,648 bytes)" in msg
    assert "cuda:0" in msg
    assert f"{keep.mem.size:,} bytes) in use" in msg
    assert "0 bytes cached" in msg  # the cache was released before the retry
    assert "1.50 GiB" in msg and "80.00 GiB" in msg
    assert "empty_cache()" in msg
    assert "fragmentation" not in msg  # 1.5 GiB free < 2 GiB asked: genuinely full


def test_message_hints_fragmentation_when_device_has_room():
    pool = FakePool(limit=4 * GiB)
    pool.fail = [FakeOOM(), FakeOOM()]
    with pytest.raises(cuda.OutOfMemoryError, match="fragmentation") as info:
        make_allocator(pool, free=60 * GiB)(2 * GiB)
    assert "limit 4.00 GiB" in str(info.value)
    assert "empty_cache()" in str(info.value)


def test_message_survives_failing_mem_get_info():
    def broken() -> tuple[int, int]:
        raise RuntimeError("context is destroyed")

    pool = FakePool()
    pool.fail = [FakeOOM(), FakeOOM()]
    with pytest.raises(cuda.OutOfMemoryError, match="unknown .context is destroyed"):
        cuda.PoolAllocator(pool, broken, lambda: 3)(100)


def test_other_errors_are_not_retried():
    pool = FakePool()
    pool.fail = [ValueError("bad size")]
    with pytest.raises(ValueError, match="bad size"):
        make_allocator(pool)(100)
    assert pool.free_all_blocks_calls == 0


@pytest.mark.parametrize(("n", "text"), [
    (5, "5 bytes"), (1536, "1.50 KiB (1,536 bytes)"), (3 * 1024**4, "3.00 TiB"),
])
def test_format_bytes(n, text):
    assert text in cuda._format_bytes(n)


# ---- without a GPU -------------------------------------------------------------------


@needs_no_gpu
def test_unavailable_is_false_with_a_reason():
    assert cuda.is_available() is False
    assert cuda.device_count() == 0
    assert cuda.why_unavailable() in {"no CUDA driver", "no CUDA device"} or \
        cuda.why_unavailable().startswith(("CuPy is not installed", "CUDA driver too old"))


@needs_no_gpu
@pytest.mark.parametrize("call", [
    cuda.current_device, lambda: cuda.set_device(0), cuda.get_device_name,
    cuda.get_device_capability, cuda.synchronize, cuda.mem_get_info, cuda.install_allocator,
])
def test_gpu_queries_raise_a_clear_runtime_error(call):
    with pytest.raises(RuntimeError, match="CUDA is not available: .+"):
        call()


@needs_no_gpu
def test_memory_statistics_are_zero_without_a_gpu():
    """As in PyTorch: statistics read 0 and empty_cache is a no-op, so logging code runs
    anywhere."""
    assert cuda.memory_allocated() == 0
    assert cuda.max_memory_allocated() == 0
    assert cuda.memory_reserved() == 0
    cuda.reset_peak_memory_stats()
    cuda.empty_cache()


def test_reason_when_cupy_is_missing(monkeypatch):
    monkeypatch.setattr(device_mod, "cupy_module", lambda: None)
    monkeypatch.setattr(device_mod, "cupy_import_error",
                        lambda: "ModuleNotFoundError: No module named 'cupy'")
    monkeypatch.setattr(device_mod, "device_count", lambda: 0)
    assert cuda.why_unavailable() == \
        "CuPy is not installed (ModuleNotFoundError: No module named 'cupy')"
    assert cuda.is_available() is False
    with pytest.raises(RuntimeError, match="CuPy is not installed"):
        cuda.current_device()


# ---- on a GPU ------------------------------------------------------------------------


@needs_gpu
def test_device_queries():
    assert cuda.is_available() and cuda.why_unavailable() == ""
    cuda.set_device(0)
    assert cuda.current_device() == 0
    assert isinstance(cuda.get_device_name(0), str) and cuda.get_device_name()
    major, minor = cuda.get_device_capability("cuda:0")
    assert major >= 3 and minor >= 0
    free, total = cuda.mem_get_info()
    assert 0 < free <= total
    cuda.synchronize()
    with pytest.raises(ValueError, match="out of range"):
        cuda.get_device_name(cuda.device_count())


@needs_gpu
def test_memory_statistics_follow_allocations():
    cp = device_mod.cupy_module()
    allocator = cuda.install_allocator()
    assert allocator is not None and cuda.install_allocator() is allocator
    assert cp.cuda.get_allocator() is allocator
    cuda.empty_cache()  # cached blocks from earlier tests must not serve these arrays
    cuda.reset_peak_memory_stats()
    before = cuda.memory_allocated()
    a = cp.ones(64 * 1024**2 // 4, dtype=cp.float32)  # 64 MiB
    assert cuda.memory_allocated() >= before + a.nbytes
    b = cp.ones_like(a)
    peak = cuda.max_memory_allocated()
    assert peak >= before + a.nbytes + b.nbytes
    del a, b
    assert cuda.memory_allocated() == before
    assert cuda.max_memory_allocated() == peak
    cuda.reset_peak_memory_stats()
    assert cuda.max_memory_allocated() == before
    reserved = cuda.memory_reserved()
    cuda.empty_cache()
    assert cuda.memory_reserved() <= reserved - 128 * 1024**2


@needs_gpu
def test_real_out_of_memory_is_explained():
    cp = device_mod.cupy_module()
    cuda.install_allocator()
    _, total = cuda.mem_get_info()
    with pytest.raises(cuda.OutOfMemoryError, match="tried to allocate") as info:
        cp.empty(2 * total, dtype=cp.uint8)
    assert f"{2 * total:,} bytes" in str(info.value)
    assert isinstance(info.value.__cause__, MemoryError)
