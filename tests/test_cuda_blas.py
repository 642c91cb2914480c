"""dlcore.cuda_blas without a GPU: its row-major-to-column-major argument mapping checked
against a stand-in cuBLAS that implements cublasGemmEx / cublasGemmStridedBatchedEx as the
cuBLAS documentation defines them (column-major, op N or T, leading dimensions, strides),
reading and writing host memory through the pointers it is given. NumPy's matmul is the
oracle. On a GPU, the suite's cuda tests run the real library through the ops."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from dlcore import cuda_blas

_DTYPES = {2: np.float16, 0: np.float32, 1: np.float64}


class _Array(np.ndarray):
    """A host array with CuPy's ``.data.ptr``."""

    @property
    def data(self) -> Any:  # type: ignore[override]
        return SimpleNamespace(ptr=self.ctypes.data)


def _wrap(x: np.ndarray) -> _Array:
    return x.view(_Array)


def _col_major(ptr: int, dtype: Any, rows: int, cols: int, ld: int, offset: int = 0) -> Any:
    """The rows x cols column-major matrix at ``ptr`` (element offset ``offset``)."""
    item = np.dtype(dtype).itemsize
    span = (cols - 1) * ld + rows if rows and cols else 0
    buf = (ctypes.c_char * (span * item)).from_address(ptr + offset * item)
    flat = np.frombuffer(buf, dtype=dtype, count=span)
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (item, ld * item))


class _FakeCublas:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def cublasSetStream_v2(self, handle: int, stream: int) -> int:
        return 0

    def cublasSetWorkspace_v2(self, handle: int, ptr: int, size: int) -> int:
        assert (handle, ptr, size) == (7, 4096, cuda_blas.WORKSPACE_BYTES)
        self.calls.append("workspace")
        return 0

    def cublasGemmEx(self, handle: int, op_a: int, op_b: int, m: int, n: int, k: int,
                     alpha: int, a: int, ta: int, lda: int, b: int, tb: int, ldb: int,
                     beta: int, c: int, tc: int, ldc: int, compute: int, algo: int) -> int:
        self.calls.append("gemm")
        self._one(op_a, op_b, m, n, k, alpha, a, ta, lda, 0, b, ldb, 0, c, ldc, 0)
        return 0

    def cublasGemmStridedBatchedEx(self, handle: int, op_a: int, op_b: int, m: int, n: int,
                                   k: int, alpha: int, a: int, ta: int, lda: int, sa: int,
                                   b: int, tb: int, ldb: int, sb: int, beta: int, c: int,
                                   tc: int, ldc: int, sc: int, count: int, compute: int,
                                   algo: int) -> int:
        self.calls.append(f"batched{count}")
        for i in range(count):
            self._one(op_a, op_b, m, n, k, alpha, a, ta, lda, i * sa, b, ldb, i * sb, c, ldc,
                      i * sc)
        return 0

    @staticmethod
    def _one(op_a: int, op_b: int, m: int, n: int, k: int, alpha: int, a: int, ta: int,
             lda: int, oa: int, b: int, ldb: int, ob: int, c: int, ldc: int, oc: int) -> None:
        dt = _DTYPES[ta]
        scalar = ctypes.c_double if dt == np.float64 else ctypes.c_float
        assert scalar.from_address(alpha).value == 1.0
        A = _col_major(a, dt, *((m, k) if op_a == 0 else (k, m)), lda, oa)
        B = _col_major(b, dt, *((k, n) if op_b == 0 else (n, k)), ldb, ob)
        A = A if op_a == 0 else A.T
        B = B if op_b == 0 else B.T
        C = _col_major(c, dt, m, n, ldc, oc)
        C[...] = (A.astype(np.float64) @ B.astype(np.float64)).astype(dt)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    lib = _FakeCublas()
    monkeypatch.setattr(cuda_blas, "_library", lambda: lib)
    monkeypatch.setattr(cuda_blas, "_workspaces", {})
    monkeypatch.delenv("DLCORE_CUDA_GEMM", raising=False)
    xp = SimpleNamespace(
        empty=lambda shape, dtype: _wrap(np.empty(shape, dtype)),
        ascontiguousarray=lambda x: _wrap(np.ascontiguousarray(x)),
        broadcast_to=lambda x, shape: _wrap(np.broadcast_to(x, shape)),
        matmul=np.matmul,
        cuda=SimpleNamespace(device=SimpleNamespace(get_cublas_handle=lambda: 7),
                             runtime=SimpleNamespace(malloc=lambda n: 4096, free=None),
                             get_current_stream=lambda: SimpleNamespace(ptr=0)))
    return xp, lib


def _operands(rng: np.random.Generator, kind: str, m: int, k: int, n: int,
              dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    def make(shape: tuple[int, ...]) -> np.ndarray:
        return rng.standard_normal(shape).astype(dtype)
    if kind == "contiguous":
        return make((m, k)), make((k, n))
    if kind == "transposed":  # .T views: column-major operands
        return make((k, m)).T, make((n, k)).T
    if kind == "row slices":  # leading dimension larger than the row
        return make((m, k + 3))[:, 1:k + 1], make((k, n + 2))[:, :n]
    if kind == "strided":  # neither row- nor column-major: copied first
        return make((m, 2 * k))[:, ::2], make((2 * k, n))[::2]
    raise ValueError(kind)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("kind", ["contiguous", "transposed", "row slices", "strided"])
@pytest.mark.parametrize("mkn", [(5, 3, 4), (1, 6, 7), (6, 1, 2), (4, 5, 1)])
def test_matmul_2d_matches_numpy(fake: Any, dtype: Any, kind: str,
                                 mkn: tuple[int, int, int]) -> None:
    xp, lib = fake
    rng = np.random.default_rng(sum(mkn))
    a, b = _operands(rng, kind, *mkn, dtype)
    got = cuda_blas.matmul(xp, _wrap(a), _wrap(b))
    want = (a.astype(np.float64) @ b.astype(np.float64)).astype(dtype)
    assert got.shape == want.shape and got.flags.c_contiguous and lib.calls == ["workspace", "gemm"]
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("shapes", [((3, 4, 5), (3, 5, 2)), ((4, 5), (3, 5, 2)),
                                    ((3, 4, 5), (5, 2)), ((2, 1, 4, 5), (1, 3, 5, 2)),
                                    ((1, 3, 4, 5), (2, 3, 5, 6))])
def test_batched_matmul_broadcasts_as_numpy(fake: Any, shapes: tuple) -> None:
    xp, lib = fake
    rng = np.random.default_rng(3)
    a = rng.standard_normal(shapes[0]).astype(np.float32)
    b = rng.standard_normal(shapes[1]).astype(np.float32)
    got = cuda_blas.matmul(xp, _wrap(a), _wrap(b))
    want = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)
    assert got.shape == want.shape and lib.calls[1].startswith("batched")
    np.testing.assert_array_equal(np.asarray(got), want)
    # transposed batches (the conv weight gradient's x^T) too
    bt = np.ascontiguousarray(np.swapaxes(b, -1, -2))
    got = cuda_blas.matmul(xp, _wrap(a), _wrap(np.swapaxes(bt, -1, -2)))
    np.testing.assert_array_equal(np.asarray(got), want)


def test_out_empty_and_zero_inner(fake: Any) -> None:
    xp, lib = fake
    a = np.ones((3, 4), np.float32)
    b = np.full((4, 2), 2.0, np.float32)
    out = _wrap(np.full((3, 2), np.nan, np.float32))
    assert cuda_blas.matmul(xp, _wrap(a), _wrap(b), out=out) is out
    np.testing.assert_array_equal(np.asarray(out), np.full((3, 2), 8.0))
    zero_k = cuda_blas.matmul(xp, _wrap(np.ones((3, 0), np.float32)),
                              _wrap(np.ones((0, 2), np.float32)))
    np.testing.assert_array_equal(np.asarray(zero_k), np.zeros((3, 2)))
    assert cuda_blas.matmul(xp, _wrap(np.ones((0, 4), np.float32)), _wrap(b)).shape == (0, 2)
    assert lib.calls == ["workspace", "gemm"]  # empty and k == 0: no cuBLAS call
    with pytest.raises(ValueError, match=r"out must be C-contiguous \(3, 2\)"):
        cuda_blas.matmul(xp, _wrap(a), _wrap(b), out=_wrap(np.empty((2, 3), np.float32)).T)
    with pytest.raises(ValueError, match=r"matmul: operands \(3, 4\) and \(3, 2\)"):
        cuda_blas.matmul(xp, _wrap(a), _wrap(np.ones((3, 2), np.float32)))


def test_integers_and_the_opt_out_use_the_array_module(fake: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    xp, lib = fake
    a = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(cuda_blas.matmul(xp, a, a.T), a @ a.T)
    monkeypatch.setenv("DLCORE_CUDA_GEMM", "cupy")
    f = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(cuda_blas.matmul(xp, f, f.T), f @ f.T)
    assert lib.calls == []
    cuda_blas.prepare(xp)  # the opt-out: no workspace either
    monkeypatch.delenv("DLCORE_CUDA_GEMM")
    cuda_blas.prepare(xp)
    cuda_blas.prepare(xp)  # once per handle
    assert lib.calls == ["workspace"]


def test_dot_as_a_one_by_one_gemm(fake: Any) -> None:
    """clip_grad_norm_'s squared norm on cuda: flat[None, :] @ flat[:, None] (views with a
    zero stride on the added dim)."""
    xp, lib = fake
    flat = np.random.default_rng(4).standard_normal(1000).astype(np.float32)
    got = cuda_blas.matmul(xp, _wrap(flat)[None, :], _wrap(flat)[:, None])
    assert got.shape == (1, 1) and lib.calls == ["workspace", "gemm"]
    np.testing.assert_allclose(np.asarray(got)[0, 0], float(flat.astype(np.float64) @ flat),
                               rtol=1e-6)
