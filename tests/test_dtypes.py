"""dtypes and PyTorch's type promotion (weak Python scalars, float beats int)."""

from __future__ import annotations

import numpy as np
import pytest
from op_check import check, on

import dlcore


def test_default_float_is_float32(device):
    assert dlcore.get_default_dtype() == dlcore.float32
    assert dlcore.tensor([1.5], device=device).dtype == dlcore.float32
    assert dlcore.zeros(2, device=device).dtype == dlcore.float32
    assert dlcore.randn(2, device=device).dtype == dlcore.float32


def test_python_float_does_not_upcast_float32(device):
    t = on(device, np.ones(3, np.float32))
    for out in (t * 2.5, 2.5 * t, t + 0.1, t - 1.0, 1.0 - t, t / 3.0, 3.0 / t, t ** 2.0,
                2.0 ** t, dlcore.maximum(t, on(device, np.float32(0.5)))):
        assert out.dtype == dlcore.float32
    h = on(device, np.ones(3, np.float16))
    assert (h * 2.5).dtype == dlcore.float16


def test_int_tensor_times_float_scalar_is_float32(device):
    t = on(device, np.arange(3))
    out = t * 2.5
    check(out, np.arange(3) * np.float32(2.5), dtype=np.float32)
    assert (t + 1).dtype == dlcore.int64
    check(t / 2, np.arange(3, dtype=np.float32) / 2, dtype=np.float32)  # true division
    assert (on(device, np.array([True, False])) + 1).dtype == dlcore.int64


def test_int64_plus_float32_tensor_is_float32(device):
    i = on(device, np.arange(3, dtype=np.int64))
    f = on(device, np.full(3, 0.5, np.float32))
    check(i + f, np.arange(3) + np.float32(0.5), dtype=np.float32)
    check(f * i, np.arange(3) * np.float32(0.5), dtype=np.float32)


def test_float32_plus_float64_is_float64(device):
    a = on(device, np.full(2, 0.1, np.float32))
    b = on(device, np.full(2, 0.2, np.float64))
    check(a + b, np.full(2, np.float64(np.float32(0.1)) + 0.2), dtype=np.float64)
    assert (b * a).dtype == dlcore.float64


def test_int_promotion_and_bool(device):
    a = on(device, np.arange(3, dtype=np.int32))
    b = on(device, np.arange(3, dtype=np.int64))
    assert (a + b).dtype == dlcore.int64
    m = on(device, np.array([True, False, True]))
    assert (m + a).dtype == dlcore.int32


def test_gradient_dtype_follows_input_after_promotion(device):
    a = on(device, np.ones(2, np.float32), requires_grad=True)
    b = on(device, np.ones(2, np.float64), requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.dtype == dlcore.float32 and b.grad.dtype == dlcore.float64


def test_bfloat16_is_accepted_everywhere_a_dtype_is(device):
    """(bfloat16's arithmetic: tests/test_bfloat16.py.)"""
    for t in (dlcore.zeros(2, dtype=dlcore.bfloat16, device=device),
              on(device, np.ones(2)).to(dlcore.bfloat16),
              dlcore.tensor([1.0], dtype="bfloat16", device=device)):
        assert t.dtype == dlcore.bfloat16


def test_dtype_aliases_are_numpy_dtypes():
    assert dlcore.float32 == np.float32 and dlcore.float == np.float32
    assert dlcore.double == np.float64 and dlcore.long == np.int64 and dlcore.half == np.float16
    assert dlcore.tensor([1.0], dtype="double").dtype == np.float64


def test_set_default_dtype():
    try:
        dlcore.set_default_dtype(dlcore.float64)
        assert dlcore.tensor([1.5]).dtype == dlcore.float64
        assert (dlcore.tensor([1, 2]) * 0.5).dtype == dlcore.float64
    finally:
        dlcore.set_default_dtype(dlcore.float32)
    with pytest.raises(TypeError):
        dlcore.set_default_dtype(dlcore.int64)


UNSUPPORTED_DATA = {
    "string": "abc",
    "mixed list": [1, "a"],
    "complex": np.array([1 + 2j]),
    "datetime": np.array(["2020-01-01"], dtype="datetime64[D]"),
    "object": np.array([object()]),
    "uint16": np.array([1], np.uint16),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED_DATA))
def test_non_numeric_and_undocumented_dtypes_are_refused(name: str) -> None:
    """dlcore.tensor('abc') used to give a string tensor ('abc' + 1 -> 'abc1')."""
    data = UNSUPPORTED_DATA[name]
    for make in (dlcore.tensor, dlcore.as_tensor):
        with pytest.raises(TypeError, match=r"(tensor|as_tensor): (dtype .* is not supported|"
                                            r"cannot build)"):
            make(data)


def test_unsupported_dtype_refused_by_every_entry_point() -> None:
    with pytest.raises(TypeError, match="from_numpy: dtype complex128 is not supported"):
        dlcore.from_numpy(np.array([1j]))
    with pytest.raises(TypeError, match="dtype: dtype complex64 is not supported"):
        dlcore.zeros(2, dtype="complex64")
    with pytest.raises(TypeError, match="dtype: dtype complex128 is not supported"):
        dlcore.ones(2).to(np.complex128)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "int16", "int32",
                                   "int64", "uint8", "bool"])
def test_documented_dtypes_are_accepted(dtype: str) -> None:
    t = dlcore.tensor(np.zeros(2, dtype=dtype))
    assert t.dtype == np.dtype(dtype) and dlcore.zeros(2, dtype=dtype).dtype == np.dtype(dtype)
