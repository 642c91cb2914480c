"""dlcore.ops.blas_cpu: GEMMs of a few rows split into OpenBLAS small-path column blocks."""

from __future__ import annotations

import numpy as np
import pytest

from dlcore.ops import blas_cpu


def _ints(shape: tuple[int, ...], seed: int, dtype: type = np.float64) -> np.ndarray:
    """Small integers: every product and sum is exact, so any order of summation gives the
    same bits and the split must equal the one-GEMM result exactly."""
    return np.random.default_rng(seed).integers(-4, 5, size=shape).astype(dtype)


@pytest.mark.parametrize("m,k,n", [(4, 256, 1024), (2, 1024, 4096), (8, 1024, 256),
                                   (3, 700, 1000), (16, 256, 1000)])
def test_split_equals_one_gemm(m: int, k: int, n: int) -> None:
    """Every column block is written, at the right place, with the right sums (n not a
    multiple of the block either)."""
    a, b = _ints((m, k), 1), _ints((k, n), 2)
    cs = blas_cpu.split_columns(a, b)
    assert 0 < cs < n and cs % 16 == 0 and m * k * cs <= blas_cpu.SMALL_MNK
    out = np.full((m, n), np.nan)
    assert blas_cpu.matmul_into(a, b, out) is out
    np.testing.assert_array_equal(out, a @ b)
    np.testing.assert_array_equal(blas_cpu.matmul(a, b), a @ b)


@pytest.mark.parametrize("m,k,n,kind", [(4096, 144, 16, "rows"), (1000, 576, 32, "rows"),
                                        (2000, 27, 64, "rows"), (16, 4096, 144, "inner"),
                                        (32, 1001, 288, "inner"), (3, 9000, 100, "inner")])
def test_row_and_reduction_splits_equal_one_gemm(m: int, k: int, n: int, kind: str) -> None:
    """Row blocks (narrow products) and reduction blocks (few rows, long sums): every block
    written and every partial product added once, the last block short."""
    a, b = _ints((m, k), 6), _ints((k, n), 7)
    got_kind, block = blas_cpu.plan(a, b)
    assert got_kind == kind and 0 < block < (m if kind == "rows" else k)
    assert (block * k * n if kind == "rows" else m * block * n) <= blas_cpu.SMALL_MNK
    out = np.full((m, n), np.nan)
    np.testing.assert_array_equal(blas_cpu.matmul_into(a, b, out), a @ b)
    np.testing.assert_array_equal(blas_cpu.matmul(a, b), a @ b)


def test_float32_split_matches_float64() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 512)), rng.standard_normal((512, 2048))
    got = blas_cpu.matmul(a.astype(np.float32), b.astype(np.float32))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("a_shape,b_shape,why", [
    ((1, 1024), (1024, 4096), "one row: GEMV"),
    ((4, 256), (256, 512), "already in the small path"),
    ((64, 256), (256, 1024), "M*K above SPLIT_MAX_MK, more than 32 rows, 1024 wide"),
    ((4096, 1152), (1152, 128), "128 wide: rows of 6"),
    ((64, 4096), (4096, 576), "64 rows: reduction blocks of 27"),
    ((16, 512), (512, 2048), "16 rows at M*K 8192: 112-column blocks measured 2x slower"),
    ((32, 256), (256, 768), "32 rows at M*K 8192"),
])
def test_left_as_one_gemm(a_shape: tuple, b_shape: tuple, why: str) -> None:
    assert blas_cpu.split_columns(np.zeros(a_shape), np.zeros(b_shape)) == 0, why


def test_column_blocks_at_the_limit_only_for_a_few_rows() -> None:
    """M*K between SPLIT_MAX_MK/2 and SPLIT_MAX_MK (112-127 column blocks): split for up to
    SPLIT_FULL_MAX_ROWS rows, one GEMM above; at or below half the limit, any row count."""
    z = np.zeros
    assert blas_cpu.plan(z((8, 1024)), z((1024, 3072))) == ("cols", 112)
    assert blas_cpu.plan(z((16, 512)), z((512, 2048)))[0] == "one"
    assert blas_cpu.plan(z((16, 256)), z((256, 1024))) == ("cols", 240)


def test_layouts_the_small_path_does_not_take_are_not_split() -> None:
    a, b = _ints((4, 256), 4), _ints((256, 1024), 5)
    assert blas_cpu.split_columns(a, b) > 0
    assert blas_cpu.split_columns(a, np.asfortranarray(b)) == 0  # transposed B
    assert blas_cpu.split_columns(np.asfortranarray(a), b) == 0  # transposed A
    assert blas_cpu.split_columns(a.astype(np.float32), b) == 0  # mixed dtypes
    assert blas_cpu.split_columns(a.astype(np.int64), b.astype(np.int64)) == 0
    assert blas_cpu.split_columns(a[None], b) == 0  # batched
    # a non-contiguous output falls back to one matmul, still correct
    out = np.zeros((1024, 4)).T
    np.testing.assert_array_equal(blas_cpu.matmul_into(a, b, out), a @ b)


@pytest.mark.parametrize("shape", [(4096, 1024), (300, 257), (64, 64), (1, 70000), (70000, 1),
                                   (5, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed_is_the_plain_transposing_copy(shape: tuple[int, int], dtype: type) -> None:
    a = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    t = blas_cpu.transposed(a)
    assert t.flags.c_contiguous and t.dtype == dtype
    # a copy, unless a.T is already C-contiguous (one row or column), as np.ascontiguousarray
    assert np.shares_memory(t, a) == a.T.flags.c_contiguous
    np.testing.assert_array_equal(t, np.ascontiguousarray(a.T))
    wide = blas_cpu.transposed(a, np.float64)
    assert wide.dtype == np.float64
    np.testing.assert_array_equal(wide, a.T.astype(np.float64))
    # a transpose view of a C-contiguous array comes back as that array, uncopied
    assert blas_cpu.transposed(t.T) is t or np.shares_memory(blas_cpu.transposed(t.T), t)
    strided = a[::2].T if shape[0] > 1 else a.T
    np.testing.assert_array_equal(blas_cpu.transposed(strided), np.ascontiguousarray(strided.T))


# ---- packed blocks for a B used many times (the LSTM's recurrent weights) ------------------

@pytest.mark.parametrize("m,k,n,plan", [(4, 256, 1024, (64, 1)), (3, 100, 200, (64, 1)),
                                        (2, 96, 80, (32, 1)), (16, 512, 256, (64, 4)),
                                        (5, 120, 130, (64, 3))])
@pytest.mark.parametrize("views", [False, True])
def test_packed_columns_equal_one_gemm(m: int, k: int, n: int, plan: tuple[int, int],
                                       views: bool) -> None:
    """Every block, the tail columns (n not a multiple of the width) and every chunk of the
    reduction summed once, at the right place; B a transposed view (as the LSTM's W_hh^T)
    and the output a window of a wider array (its row stride is BLAS's leading dimension)."""
    a, b = _ints((m, k), 11), _ints((k, n), 12)
    if views:
        b = np.ascontiguousarray(b.T).T
        big = np.full((m, n + 7), np.nan)
        out = big[:, 3:3 + n]
    else:
        out = np.full((m, n), np.nan)
    packed = blas_cpu.PackedColumns(b, plan)
    for _ in range(2):  # the chunks' buffer is reused
        assert packed.matmul_into(a, out) is out
        np.testing.assert_array_equal(out, a @ b)
    if views:
        assert np.isnan(big[:, :3]).all() and np.isnan(big[:, 3 + n:]).all()
    # another row count and dtype through the same packing
    a2 = _ints((2, k), 13)
    np.testing.assert_array_equal(packed.matmul_into(a2, np.empty((2, n))), a2 @ b)
    with pytest.raises(ValueError, match="unit steps"):
        packed.matmul_into(a, np.empty((n, m)).T)


def test_pack_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """The measured rule (blas_cpu's table): 64 wide, the fewest chunks that keep each
    block's m*k*64 on the small path, for at most 32 rows; else 32 wide in one chunk where
    that fits; nothing for one row, other dtypes, or without the small path."""
    monkeypatch.setattr(blas_cpu, "small_path", lambda: True)
    f32 = np.float32
    assert blas_cpu.pack_plan(4, 1024, 4096, f32) == (64, 1)
    assert blas_cpu.pack_plan(16, 1024, 4096, f32) == (64, 2)
    assert blas_cpu.pack_plan(16, 4096, 1024, f32) == (64, 8)
    assert blas_cpu.pack_plan(32, 1024, 4096, f32) == (64, 4)
    assert blas_cpu.pack_plan(64, 256, 1024, f32) == (32, 1)
    assert blas_cpu.pack_plan(64, 1024, 4096, f32) is None
    assert blas_cpu.pack_plan(1, 1024, 4096, f32) is None
    assert blas_cpu.pack_plan(4, 1024, 4096, np.int64) is None
    assert blas_cpu.pack_plan(4, 1024, 16, f32) is None  # narrower than any block
    assert blas_cpu.PACK_MNK == blas_cpu.SMALL_MNK
    for m, k, n in ((4, 1024, 4096), (16, 4096, 1024), (64, 256, 1024)):
        width, chunks = blas_cpu.pack_plan(m, k, n, f32)
        assert k % chunks == 0 and m * (k // chunks) * width <= blas_cpu.SMALL_MNK
    monkeypatch.setattr(blas_cpu, "small_path", lambda: False)
    assert blas_cpu.pack_plan(4, 1024, 4096, f32) is None


@pytest.mark.parametrize("info,expected", [
    ([{"user_api": "blas", "internal_api": "openblas", "architecture": "SkylakeX"}], True),
    ([{"user_api": "blas", "internal_api": "openblas", "architecture": "Cooperlake"}], True),
    ([{"user_api": "blas", "internal_api": "openblas", "architecture": "Haswell"}], False),
    ([{"user_api": "blas", "internal_api": "mkl", "architecture": None}], False),
    ([{"user_api": "openmp", "internal_api": "openmp"}], False),
])
def test_small_path_follows_the_kernel_set(monkeypatch: pytest.MonkeyPatch, info: list,
                                           expected: bool) -> None:
    import threadpoolctl
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: info)
    blas_cpu.small_path.cache_clear()
    try:
        assert blas_cpu.small_path() is expected
    finally:
        blas_cpu.small_path.cache_clear()
