"""``dlcore.cuda``: CUDA device queries, memory statistics and the out-of-memory policy.

The names follow ``torch.cuda``. Queries that need a GPU (``current_device``,
``get_device_name``, ``synchronize``, ``mem_get_info``, ...) raise a ``RuntimeError``
that says why CUDA is unusable. Memory statistics return ``0`` and ``empty_cache`` does
nothing where CUDA is unusable, as in PyTorch, so logging code runs unchanged on any
machine. CuPy comes only from :func:`dlcore.device.cupy_module`.

Memory is CuPy's default :class:`cupy.cuda.MemoryPool`; :func:`install_allocator` puts a
:class:`PoolAllocator` in front of it to record peak usage and to turn an allocation
failure into a :class:`OutOfMemoryError` that explains the state of the pool and device.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from . import device as _device

# CUDA runtime status codes (driver_types.h) that mean "no GPU here" rather than a fault.
_CUDA_ERROR_INSUFFICIENT_DRIVER = 35
_CUDA_ERROR_NO_DEVICE = 100

DeviceLike = int | str | _device.Device | None
device_count = _device.device_count


class OutOfMemoryError(RuntimeError, MemoryError):
    """A CUDA allocation failed even after the pool released its cached blocks.

    A ``RuntimeError`` (as ``torch.cuda.OutOfMemoryError``) and a ``MemoryError`` (as
    CuPy's), so ``except`` clauses written for either library catch it."""


def why_unavailable() -> str:
    """Why CUDA cannot be used here, in plain words; ``""`` when it can."""
    cp = _device.cupy_module()
    if cp is None:
        return f"CuPy is not installed ({_device.cupy_import_error()})"
    runtime = cp.cuda.runtime
    try:
        if runtime.getDeviceCount() > 0:
            return ""
        return "no CUDA device"
    except runtime.CUDARuntimeError as exc:
        if exc.status == _CUDA_ERROR_NO_DEVICE:
            return "no CUDA device"
        if exc.status == _CUDA_ERROR_INSUFFICIENT_DRIVER:
            driver = runtime.driverGetVersion()  # 0 when no driver is installed
            if driver == 0:
                return "no CUDA driver"
            return (f"CUDA driver too old: it supports CUDA {_cuda_version(driver)}, "
                    f"CuPy needs CUDA {_cuda_version(runtime.runtimeGetVersion())}")
        return f"CUDA is unusable ({exc})"


def is_available() -> bool:
    """Whether a CUDA device can be used; ``False`` (never an exception) without CuPy,
    driver or GPU."""
    return _device.device_count() > 0


def current_device() -> int:
    """Index of the device CuPy allocates on and launches to in this thread."""
    return int(_require().cuda.runtime.getDevice())


def set_device(device: DeviceLike) -> None:
    """Make ``device`` current for this thread (prefer ``with dlcore.device(...).use()``)."""
    _require().cuda.runtime.setDevice(_index(device))


def get_device_name(device: DeviceLike = None) -> str:
    """Marketing name of the device, e.g. ``"NVIDIA H100 80GB HBM3"``."""
    name = _properties(device)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def get_device_capability(device: DeviceLike = None) -> tuple[int, int]:
    """Compute capability ``(major, minor)``: what kernels may use (sm_80 -> ``(8, 0)``)."""
    props = _properties(device)
    return int(props["major"]), int(props["minor"])


def synchronize(device: DeviceLike = None) -> None:
    """Wait for all work queued on ``device``: needed before host timing of GPU work."""
    cp = _require()
    with cp.cuda.Device(_index(device)):
        cp.cuda.runtime.deviceSynchronize()


def mem_get_info(device: DeviceLike = None) -> tuple[int, int]:
    """``(free, total)`` bytes of the device as the driver sees it (``cudaMemGetInfo``);
    memory cached by the pool counts as used here."""
    cp = _require()
    with cp.cuda.Device(_index(device)):
        free, total = cp.cuda.runtime.memGetInfo()
    return int(free), int(total)


class PoolAllocator:
    """A CuPy allocator in front of a memory pool: records peak usage and retries once
    after releasing cached blocks when an allocation fails.

    ``pool`` needs ``malloc``, ``used_bytes``, ``total_bytes``, ``get_limit`` and
    ``free_all_blocks`` (a ``cupy.cuda.MemoryPool`` or a test double); ``mem_get_info``
    and ``current_device`` are only called to describe a failure.
    """

    def __init__(self, pool: Any, mem_get_info: Callable[[], tuple[int, int]],
                 current_device: Callable[[], int]) -> None:
        self.pool = pool
        self._malloc = pool.malloc
        self._mem_get_info = mem_get_info
        self._current_device = current_device
        self._lock = threading.Lock()
        self._peak: dict[int, int] = {}
        # NOTE: ``pool.used_bytes()`` walks every live chunk under the pool's lock, so it
        # costs O(live arrays) and would make each malloc slower as a model grows. We keep
        # ``_bound[d]``, an upper bound on the pool's used bytes on device d: exact after
        # each used_bytes() query, raised by the size of every allocation since (the
        # pointer's ``mem.size`` is the chunk size that used_bytes() counts), lowered by
        # nothing because frees are invisible to an allocator. While the bound stays at or
        # below the peak no new peak is possible, so we query only when an allocation
        # could set one; the recorded peak equals what a query on every malloc would give.
        # A loop that builds up memory and then frees it queries about once per step;
        # usage hovering at the peak queries on every malloc, no worse than the plain way.
        self._bound: dict[int, int] = {}

    def __call__(self, size: int) -> Any:
        if _device.capturing:
            _refuse_during_capture(size)
        try:
            ptr = self._malloc(size)
        except MemoryError:  # cupy.cuda.memory.OutOfMemoryError derives from it
            ptr = self._retry(size)
        dev = ptr.device_id
        # The lock (about 0.15 us on CPython 3.11, small next to CuPy's own pooled malloc)
        # keeps the bound a true bound when threads allocate concurrently.
        with self._lock:
            bound = self._bound.get(dev, 0) + ptr.mem.size
            peak = self._peak.get(dev, -1)  # -1: first sight of dev, learn the true usage
            if bound > peak:
                bound = self.pool.used_bytes()  # includes this allocation
                if bound > peak:
                    self._peak[dev] = bound
            self._bound[dev] = bound
        return ptr

    def peak(self, device: int) -> int:
        """Highest pool usage seen on ``device`` at any allocation since the last reset."""
        return self._peak.get(device, 0)

    def reset_peak(self, device: int, used: int) -> None:
        """Restart peak tracking on ``device`` from its current usage ``used``."""
        with self._lock:
            self._peak[device] = self._bound[device] = used

    def devices(self) -> list[int]:
        """Devices this allocator has served (the only ones with pool memory to free)."""
        return list(self._peak)

    def _retry(self, size: int) -> Any:
        # NOTE: CuPy's pool already frees its cache and retries when cudaMalloc fails, but
        # not when a pool limit (set_limit, $CUPY_GPU_MEMORY_LIMIT) is hit: it raises with
        # reusable cached blocks still counted against the limit. Releasing them here
        # covers that case and costs nothing on the success path.
        self.pool.free_all_blocks()
        try:
            return self._malloc(size)
        except MemoryError as exc:
            raise OutOfMemoryError(self._describe_failure(size)) from exc

    def _describe_failure(self, size: int) -> str:
        used, reserved = self.pool.used_bytes(), self.pool.total_bytes()
        limit = self.pool.get_limit()
        try:
            free, total = self._mem_get_info()
            device_line = f"device: {_format_bytes(free)} free of {_format_bytes(total)}"
        except Exception as exc:  # the message must survive a broken context
            free, device_line = -1, f"device: free/total unknown ({exc})"
        lines = [
            f"CUDA out of memory: tried to allocate {_format_bytes(size)} "
            f"on cuda:{self._current_device()}",
            f"memory pool: {_format_bytes(used)} in use by arrays, "
            f"{_format_bytes(reserved - used)} cached but unused (split blocks that "
            "survived releasing the cache)" + (f", limit {_format_bytes(limit)}" if limit else ""),
            device_line,
        ]
        lines.append(
            "hint: the device has that much memory free, but not in one piece the pool can "
            "use (fragmentation) or not within the pool limit; dlcore.cuda.empty_cache() "
            "between phases of different sizes reduces fragmentation" if free >= size else
            "hint: free tensors you no longer need or use a smaller batch; "
            "dlcore.cuda.empty_cache() returns cached blocks for other processes to use")
        return "\n".join(lines)


_allocator: PoolAllocator | None = None
def _refuse_during_capture(size: int) -> None:
    """A capture allocates from its graph's private pool (dlcore.graphs); an allocation that
    reaches the default pool meanwhile comes from another thread and would hand the graph's
    replays memory that others reuse, or break the capture."""
    me = threading.get_ident()
    for dev, thread in _device.capturing.items():
        if dev.type == "cuda" and thread != me:
            raise RuntimeError(f"CUDA allocation of {size} bytes from another thread while a "
                               f"CUDA graph is being captured on {dev}: allocations during "
                               "capture must come from the graph's pool (capture in one "
                               "thread, or allocate before capture)")


_install_decided = False  # True once installed, or once we saw a user's own allocator
_install_lock = threading.Lock()


def install_allocator() -> PoolAllocator | None:
    """Put a :class:`PoolAllocator` in front of CuPy's default memory pool, once.

    Cheap to call on every cuda tensor creation: after the first call it is one global
    read. Returns ``None`` (and installs nothing) where the user has set another CuPy
    allocator (RMM, managed memory): we do not replace their choice."""
    if _install_decided:
        return _allocator
    return _install(_require())


def _install(cp: Any) -> PoolAllocator | None:
    global _allocator, _install_decided
    with _install_lock:
        if not _install_decided:
            pool = cp.get_default_memory_pool()
            if cp.cuda.get_allocator() == pool.malloc:
                runtime = cp.cuda.runtime
                _allocator = PoolAllocator(pool, runtime.memGetInfo, runtime.getDevice)
                cp.cuda.set_allocator(_allocator)
            _install_decided = True
    return _allocator


def memory_allocated(device: DeviceLike = None) -> int:
    """Bytes the pool has handed to live arrays on ``device`` (0 without CUDA)."""
    if not is_available():
        return 0
    cp = _device.cupy_module()
    with cp.cuda.Device(_index(device)):
        return int(cp.get_default_memory_pool().used_bytes())


def max_memory_allocated(device: DeviceLike = None) -> int:
    """Peak of :func:`memory_allocated` since start or :func:`reset_peak_memory_stats`
    (0 without CUDA)."""
    if not is_available():
        return 0
    allocator = install_allocator()
    used = memory_allocated(device)
    return used if allocator is None else max(allocator.peak(_index(device)), used)


def reset_peak_memory_stats(device: DeviceLike = None) -> None:
    """Restart :func:`max_memory_allocated` from the current usage (no-op without CUDA)."""
    if not is_available():
        return
    allocator = install_allocator()
    if allocator is not None:
        allocator.reset_peak(_index(device), memory_allocated(device))


def memory_reserved(device: DeviceLike = None) -> int:
    """Bytes the pool holds from the driver on ``device``, in use or cached (0 without CUDA)."""
    if not is_available():
        return 0
    cp = _device.cupy_module()
    with cp.cuda.Device(_index(device)):
        return int(cp.get_default_memory_pool().total_bytes())


def empty_cache() -> None:
    """Return the pool's cached blocks (device, and host pinned memory) to the driver, so
    other processes and ``nvidia-smi`` see them free. Arrays in use are untouched."""
    if not is_available():
        return
    cp = _device.cupy_module()
    pool = cp.get_default_memory_pool()
    allocator = install_allocator()
    # Visit only devices with pool memory: entering any other device creates a context.
    served = allocator.devices() if allocator is not None else []
    for index in {current_device(), *served}:
        with cp.cuda.Device(index):
            pool.free_all_blocks()
    cp.get_default_pinned_memory_pool().free_all_blocks()


def _require() -> Any:
    """CuPy, or a RuntimeError that says why CUDA is unusable."""
    reason = why_unavailable()
    if reason:
        raise RuntimeError(f"dlcore.cuda: CUDA is not available: {reason}")
    return _device.cupy_module()


def _index(device: DeviceLike) -> int:
    """Index of a cuda device given as None (current), int, 'cuda:i' or a Device."""
    if device is None:
        return current_device()
    if isinstance(device, int):
        index = device
    else:
        dev = _device.Device(device)
        if dev.type != "cuda":
            raise ValueError(f"dlcore.cuda: expected a cuda device, got {dev}")
        assert dev.index is not None  # a cuda Device always has one
        index = dev.index
    count = _device.device_count()
    if not 0 <= index < count:
        raise ValueError(f"dlcore.cuda: device index {index} out of range "
                         f"({count} CUDA device(s) present)")
    return index


def _properties(device: DeviceLike) -> dict:
    return _require().cuda.runtime.getDeviceProperties(_index(device))


def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}"


def _format_bytes(n: int) -> str:
    """``'2.00 GiB (2,147,483,648 bytes)'``: readable, and exact for comparisons."""
    if abs(n) < 1024:
        return f"{n:,} bytes"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.2f} {unit} ({n:,} bytes)"
