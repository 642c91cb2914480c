"""matmul / @ (2-D, batched, broadcast batch dims, 1-D operands), mm, bmm."""

from __future__ import annotations

import numpy as np
import pytest
from op_check import check, grad_ok, gradgrad_ok, on, rand

import dlcore
import dlcore.nn.functional as F

SHAPES = [
    ((3, 4), (4, 5)),
    ((2, 3, 4), (2, 4, 5)),      # batched
    ((3, 4), (2, 4, 5)),         # broadcast batch (left 2-D)
    ((2, 1, 3, 4), (5, 4, 2)),   # broadcast batch dims
    ((4,), (4,)),                # dot
    ((4,), (4, 3)),              # vector @ matrix
    ((3, 4), (4,)),              # matrix @ vector
    ((2, 3, 4), (4,)),           # batched matrix @ vector
    ((4,), (2, 4, 3)),           # vector @ batched matrix
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sa,sb", SHAPES, ids=str)
def test_matmul_forward(device, dtype, sa, sb):
    a, b = rand(*sa, seed=1).astype(dtype), rand(*sb, seed=2).astype(dtype)
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    check(on(device, a) @ on(device, b), expected, dtype=dtype)
    check(dlcore.matmul(on(device, a), on(device, b)), expected, dtype=dtype)


def test_matmul_matches_obvious_loop(device):
    a, b = rand(2, 3, seed=3), rand(3, 2, seed=4)
    expected = np.array([[sum(a[i, k] * b[k, j] for k in range(3)) for j in range(2)]
                         for i in range(2)])
    check(on(device, a) @ on(device, b), expected)


@pytest.mark.parametrize("sa,sb", SHAPES, ids=str)
def test_matmul_gradcheck(device, sa, sb):
    assert grad_ok(lambda x, y: x @ y, [rand(*sa, seed=5), rand(*sb, seed=6)], device)


@pytest.mark.parametrize("sa,sb", [((2, 3), (3, 2)), ((3,), (2, 3, 2)), ((2, 2, 3), (3,))],
                         ids=str)
def test_matmul_gradgradcheck(device, sa, sb):
    assert gradgrad_ok(lambda x, y: x @ y, [rand(*sa, seed=7), rand(*sb, seed=8)], device)


def test_mm_and_bmm(device):
    a, b = rand(3, 4, seed=9), rand(4, 2, seed=10)
    check(dlcore.mm(on(device, a), on(device, b)), a @ b)
    x, y = rand(2, 3, 4, seed=11), rand(2, 4, 5, seed=12)
    check(on(device, x).bmm(on(device, y)), np.matmul(x, y))
    with pytest.raises(RuntimeError, match="mm"):
        dlcore.mm(on(device, x), on(device, y))
    with pytest.raises(RuntimeError, match="bmm"):
        dlcore.bmm(on(device, a), on(device, b))


def test_matmul_shape_mismatch_names_op_and_shapes(device):
    with pytest.raises(RuntimeError, match=r"matmul.*\(2, 3\).*\(2, 3\)"):
        on(device, rand(2, 3)) @ on(device, rand(2, 3))


def test_matmul_refuses_mixed_dtypes_as_pytorch_does(device):
    a, b = rand(2, 3).astype(np.float32), rand(3, 2)
    with pytest.raises(RuntimeError, match=r"matmul: expected both operands to have the same "
                                           r"dtype, got float32 \(shape \(2, 3\)\) and float64"):
        on(device, a) @ on(device, b)
    check(on(device, a) @ on(device, b.astype(np.float32)), a @ b.astype(np.float32))


def test_float16_products_on_numpy_devices_accumulate_in_float32() -> None:
    """NumPy's float16 matmul rounds every partial sum to half (and has no BLAS); dlcore's
    cpu/emu paths for matmul, linear and conv2d compute float16 in float32 and round once,
    so they equal the float32 computation rounded, exactly."""
    rng = np.random.default_rng(0)
    a = dlcore.tensor(rng.standard_normal((5, 300)).astype(np.float16))
    b = dlcore.tensor(rng.standard_normal((300, 4)).astype(np.float16))
    img = dlcore.tensor(rng.standard_normal((2, 8, 6, 6)).astype(np.float16))
    k = dlcore.tensor(rng.standard_normal((3, 8, 3, 3)).astype(np.float16))
    pairs = [((a @ b), (a.float() @ b.float()).half()),
             (F.linear(a, b.t()), F.linear(a.float(), b.t().float()).half()),
             (F.conv2d(img, k, padding=1), F.conv2d(img.float(), k.float(), padding=1).half())]
    for got, want in pairs:
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got.numpy(), want.numpy())
