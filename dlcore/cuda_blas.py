"""cuBLAS GEMMs for cuda arrays, called directly (ctypes), so that they can be captured into
CUDA graphs.

Why not CuPy's ``matmul``: CuPy refuses every cuBLAS call while the current stream captures
("calling cuBLAS API during stream capture is currently unsupported", cupy/cupy#6290), so a
training step with a Linear layer could not be captured (seen on an H200). cuBLAS itself
supports capture when the handle has a workspace of its own (cuBLAS docs, "CUDA Graphs
Support"): this module gives CuPy's handle for the device and thread a 32 MiB workspace (as
PyTorch does on Hopper) once, points the handle at the current stream, and calls
``cublasGemmEx`` / ``cublasGemmStridedBatchedEx`` itself. Every float16/float32/float64 GEMM
of dlcore's ops on cuda goes through :func:`matmul`, eager or captured, so a replayed graph
runs the same cuBLAS call, with the same algorithm choice, as the eager step it recorded.

Row-major ``C (m, n) = A (m, k) @ B (k, n)`` is computed as the column-major
``C^T = B^T A^T``: a row-major operand read column-major is its transpose (op N), a
column-major one (a ``.T`` view) is itself (op T). Operands with other strides are copied to
C order first. float16 accumulates in float32 (``CUBLAS_COMPUTE_32F``), float32 in float32
without TF32 (CuPy's default too), float64 in float64. ``DLCORE_CUDA_GEMM=cupy`` opts out:
CuPy's ``matmul`` then serves eager GEMMs and capture refuses them, as before.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from typing import Any

import numpy as np

WORKSPACE_BYTES = 32 * 2**20
_OP_N, _OP_T = 0, 1
_GEMM_DEFAULT = -1
# cudaDataType and cublasComputeType_t values (library_types.h, cublas_api.h)
_TYPES = {np.dtype(np.float16): (2, 68, ctypes.c_float),   # CUDA_R_16F, COMPUTE_32F
          np.dtype(np.float32): (0, 68, ctypes.c_float),   # CUDA_R_32F, COMPUTE_32F
          np.dtype(np.float64): (1, 70, ctypes.c_double)}  # CUDA_R_64F, COMPUTE_64F
# alpha = 1 and beta = 0 in each compute type's scalar, made once (host pointer mode: cuBLAS
# reads them at the call, a capture bakes the values in); kept alive with the module
_ONE_ZERO: dict[Any, tuple[Any, Any]] = {
    ctype: (ctype(1.0), ctype(0.0)) for ctype in (ctypes.c_float, ctypes.c_double)}
_SCALARS = {dt: (ctypes.addressof(_ONE_ZERO[c][0]), ctypes.addressof(_ONE_ZERO[c][1]))
            for dt, (_, _, c) in _TYPES.items()}
_INT_MAX = 2**31 - 1

_lib: Any = None
_lib_error: str | None = None
_lock = threading.Lock()
_workspaces: dict[int, int] = {}  # handle -> its workspace's device pointer


def enabled() -> bool:
    """True unless ``DLCORE_CUDA_GEMM=cupy`` asks for CuPy's own matmul."""
    return os.environ.get("DLCORE_CUDA_GEMM", "cublas") != "cupy"


def _library() -> Any:
    """The libcublas CuPy loaded (found in this process's mappings, so both use one copy),
    with the signatures used here; None (reason in ``_lib_error``) where it cannot be found."""
    global _lib, _lib_error
    if _lib is not None or _lib_error is not None:
        return _lib
    with _lock:
        if _lib is None and _lib_error is None:
            try:
                _lib = _load()
            except Exception as exc:  # no /proc, another platform: CuPy's matmul serves
                _lib_error = f"{type(exc).__name__}: {exc}"
    return _lib


def _load() -> Any:
    from cupy.cuda import device as cupy_device  # loads libcublas with CuPy's handle

    cupy_device.get_cublas_handle()
    path = None
    with open("/proc/self/maps") as maps:
        for line in maps:  # address perms offset device inode [path]
            parts = line.split(None, 5)
            name = parts[5].strip() if len(parts) == 6 else ""
            if os.path.basename(name).startswith("libcublas.so"):
                path = name
                break
    if path is None:
        raise OSError("libcublas is not mapped in this process")
    lib = ctypes.CDLL(path)
    vp, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
    lib.cublasSetStream_v2.argtypes = [vp, vp]
    lib.cublasSetWorkspace_v2.argtypes = [vp, vp, ctypes.c_size_t]
    lib.cublasGemmEx.argtypes = [vp, i32, i32, i32, i32, i32, vp, vp, i32, i32, vp, i32, i32,
                                 vp, vp, i32, i32, i32, i32]
    lib.cublasGemmStridedBatchedEx.argtypes = [vp, i32, i32, i32, i32, i32, vp, vp, i32, i32,
                                               i64, vp, i32, i32, i64, vp, vp, i32, i32, i64,
                                               i32, i32, i32]
    for fn in (lib.cublasSetStream_v2, lib.cublasSetWorkspace_v2, lib.cublasGemmEx,
               lib.cublasGemmStridedBatchedEx):
        fn.restype = ctypes.c_int
    return lib


def _check(status: int, call: str, a: Any, b: Any) -> None:
    if status != 0:
        raise RuntimeError(f"matmul: {call} failed with cublasStatus {status} for operands "
                           f"{tuple(a.shape)} {a.dtype} and {tuple(b.shape)} {b.dtype}")


def _layout(x: Any) -> tuple[Any, int, int] | None:
    """``(x, op, ld)`` for the last two dims of ``x`` read by cuBLAS in the C^T = B^T A^T
    form (see the module docstring), or None when neither row- nor column-major."""
    rows, cols = x.shape[-2], x.shape[-1]
    item = x.itemsize
    s_row, s_col = x.strides[-2], x.strides[-1]
    if (cols == 1 or s_col == item) and s_row % item == 0 and s_row >= 0:
        ld = s_row // item if rows > 1 else max(1, cols)
        if ld >= max(1, cols):
            return x, _OP_N, ld
    if (rows == 1 or s_row == item) and s_col % item == 0 and s_col >= 0:
        ld = s_col // item if cols > 1 else max(1, rows)
        if ld >= max(1, rows):
            return x, _OP_T, ld
    return None


def _operand(xp: Any, x: Any) -> tuple[Any, int, int]:
    found = _layout(x)
    if found is None:
        x = xp.ascontiguousarray(x)
        found = _layout(x)
        assert found is not None
    return found


def _batched(xp: Any, x: Any, batch: tuple[int, ...]) -> tuple[Any, int]:
    """``x`` broadcast to ``batch`` and viewed as (nb, rows, cols), with its batch stride in
    elements (0 where broadcast); copied to C order where no single stride describes it."""
    x = xp.broadcast_to(x, batch + x.shape[-2:])
    nb = math.prod(batch)
    flat = x.reshape(nb, *x.shape[-2:])  # a view where one stride serves, else a copy
    stride = flat.strides[0]
    if nb > 1 and (stride < 0 or stride % flat.itemsize):
        flat = xp.ascontiguousarray(flat)
        stride = flat.strides[0]
    return flat, (stride // flat.itemsize if nb > 1 else 0)


def _handle(cp: Any, lib: Any, a: Any, b: Any) -> int:
    handle = cp.cuda.device.get_cublas_handle()
    if handle not in _workspaces:
        _give_workspace(cp, lib, handle, f"operands {tuple(a.shape)} {a.dtype} and "
                                         f"{tuple(b.shape)} {b.dtype}")
    _check(lib.cublasSetStream_v2(handle, cp.cuda.get_current_stream().ptr),
           "cublasSetStream", a, b)
    return handle


def _give_workspace(cp: Any, lib: Any, handle: int, what: str) -> None:
    """The handle's own workspace, from cudaMalloc outside CuPy's pool (it lives as long as
    the handle, the process, and stays out of dlcore.cuda's memory statistics)."""
    with _lock:
        if handle not in _workspaces:
            ptr = cp.cuda.runtime.malloc(WORKSPACE_BYTES)
            status = lib.cublasSetWorkspace_v2(handle, ptr, WORKSPACE_BYTES)
            if status != 0:
                cp.cuda.runtime.free(ptr)
                raise RuntimeError(f"matmul: cublasSetWorkspace failed with cublasStatus "
                                   f"{status} ({what})")
            _workspaces[handle] = ptr


def prepare(cp: Any) -> None:
    """Give the current device and thread's cuBLAS handle its workspace now (a capture must
    not be the first to need it: cudaMalloc is not captured). dlcore.graphs calls this before
    a capture begins; a no-op where the direct path is off or unavailable."""
    if not enabled():
        return
    lib = _library()
    if lib is None:
        return
    handle = cp.cuda.device.get_cublas_handle()
    if handle not in _workspaces:
        _give_workspace(cp, lib, handle, "before a CUDA graph capture")


def supported(a: Any, b: Any) -> bool:
    """Whether :func:`matmul` takes these operands to cuBLAS itself (one float dtype of
    cuBLAS's, at least 2-D, sizes within cuBLAS's int32 arguments)."""
    if not enabled() or a.dtype != b.dtype or a.dtype not in _TYPES:
        return False
    if a.ndim < 2 or b.ndim < 2:
        return False
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    return max(m, k, n) <= _INT_MAX // 2 and _library() is not None


def matmul(xp: Any, a: Any, b: Any, out: Any = None) -> Any:
    """``a @ b`` for CuPy arrays (``xp`` is cupy): batch dims broadcast as NumPy's, the
    result C-contiguous, in ``out`` when given (C-contiguous, of the result's shape and
    dtype). Falls back to ``xp.matmul`` where :func:`supported` says no."""
    if not supported(a, b):
        return xp.matmul(a, b) if out is None else xp.matmul(a, b, out=out)
    device = getattr(a, "device", None)
    if device is None or not hasattr(device, "__enter__"):  # the tests' host stand-in
        return _matmul(xp, a, b, out)
    with device:  # the operands' GPU: its handle, stream and memory (several GPUs)
        return _matmul(xp, a, b, out)


def _matmul(xp: Any, a: Any, b: Any, out: Any) -> Any:
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: operands {tuple(a.shape)} and {tuple(b.shape)}: inner "
                         f"dimensions {a.shape[-1]} and {b.shape[-2]} differ")
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = () if a.ndim == b.ndim == 2 else tuple(np.broadcast_shapes(a.shape[:-2],
                                                                       b.shape[:-2]))
    shape = batch + (m, n)
    if out is None:
        out = xp.empty(shape, a.dtype)
    elif out.shape != shape or out.dtype != a.dtype or not out.flags.c_contiguous:
        raise ValueError(f"matmul: out must be C-contiguous {shape} {a.dtype}, got "
                         f"{tuple(out.shape)} {out.dtype}")
    if out.size == 0:
        return out
    if k == 0:
        out.fill(0)
        return out
    lib = _library()
    handle = _handle(xp, lib, a, b)
    dtype_id, compute, _ = _TYPES[a.dtype]
    alpha, beta = _SCALARS[a.dtype]
    nb = math.prod(batch)
    if nb == 1:
        A, op_a, lda = _operand(xp, a.reshape(a.shape[-2:]))
        B, op_b, ldb = _operand(xp, b.reshape(b.shape[-2:]))
        # column-major C^T (n x m) = op(B') (n x k) @ op(A') (k x m); see the module docstring
        _check(lib.cublasGemmEx(handle, op_b, op_a, n, m, k, alpha,
                                B.data.ptr, dtype_id, ldb, A.data.ptr, dtype_id, lda,
                                beta, out.data.ptr, dtype_id, n, compute,
                                _GEMM_DEFAULT), "cublasGemmEx", a, b)
        return out
    a3, stride_a = _batched(xp, a, batch)
    b3, stride_b = _batched(xp, b, batch)
    A, op_a, lda = _operand(xp, a3)
    B, op_b, ldb = _operand(xp, b3)
    if A is not a3:  # copied to C order: its batch stride is now m*k
        stride_a = m * k
    if B is not b3:
        stride_b = k * n
    if nb > _INT_MAX:
        raise ValueError(f"matmul: {nb} matrices in one batch exceed cuBLAS's int32 count")
    _check(lib.cublasGemmStridedBatchedEx(handle, op_b, op_a, n, m, k, alpha,
                                          B.data.ptr, dtype_id, ldb, stride_b,
                                          A.data.ptr, dtype_id, lda, stride_a,
                                          beta, out.data.ptr, dtype_id, n, m * n,
                                          nb, compute, _GEMM_DEFAULT),
           "cublasGemmStridedBatchedEx", a, b)
    return out
