"""Tensor API (metadata, conversion, DLPack, devices) and creation functions."""

from __future__ import annotations

import numpy as np
import pytest
from op_check import check, on, rand

import dlcore


def test_metadata(device):
    t = on(device, rand(2, 3).astype(np.float32))
    assert t.shape == (2, 3) and t.size() == (2, 3) and t.size(1) == 3
    assert t.dtype == dlcore.float32 and t.ndim == 2 and t.dim() == 2 and len(t) == 2
    # a cuda tensor's device carries the current index, as PyTorch's: str is 'cuda:0'
    assert t.numel() == 6 and t.device == dlcore.device(device)
    assert str(t.device) == ("cuda:0" if device == "cuda" else device)
    assert t.is_floating_point() and t.is_leaf and not t.requires_grad
    with pytest.raises(TypeError):
        len(on(device, np.array(1.0)))


def test_item_and_tolist(device):
    assert on(device, np.array([2.5])).item() == 2.5
    assert isinstance(on(device, np.array(3)).item(), int)
    with pytest.raises(RuntimeError, match="item"):
        on(device, rand(2)).item()
    assert on(device, np.arange(4).reshape(2, 2)).tolist() == [[0, 1], [2, 3]]


def test_numpy_and_array_protocol(device):
    x = rand(2, 3)
    t = on(device, x)
    np.testing.assert_array_equal(t.numpy(), x)
    np.testing.assert_array_equal(np.asarray(t), x)
    assert np.asarray(t, dtype=np.float32).dtype == np.float32
    if device != "cuda":
        assert np.shares_memory(t.numpy(), t.array)


def test_reductions_and_0d_results_are_arrays(device):
    """Regression: NumPy returns scalars (np.generic) from full reductions; tensors must
    still hold arrays (numpy(), in-place ops, DLPack all need one)."""
    s = on(device, rand(3)).sum()
    assert s.shape == () and isinstance(s.numpy(), np.ndarray)
    e = on(device, np.array(1.0)).exp()
    assert isinstance(e.numpy(), np.ndarray)
    e.add_(1.0)
    assert abs(e.item() - (np.e + 1)) < 1e-12


def test_to_device_and_dtype(device):
    x = rand(2, 3)
    t = on(device, x)
    assert t.to(device) is t and t.to(dlcore.float64) is t
    f = t.to(dlcore.float32)
    check(f, x.astype(np.float32))
    c = t.cpu()
    assert c.device == dlcore.device("cpu")
    check(c, x)
    e = t.to("emu", dlcore.float32)
    assert e.device == dlcore.device("emu") and e.dtype == dlcore.float32
    check(e, x.astype(np.float32))
    check(t.to(dtype=dlcore.int64), x.astype(np.int64))
    assert t.double().dtype == dlcore.float64 and t.float().dtype == dlcore.float32
    assert t.long().dtype == dlcore.int64


def test_to_is_differentiable_across_devices_and_dtypes(device):
    t = on(device, rand(3, seed=1), requires_grad=True)
    other = "emu" if device != "emu" else "cpu"
    y = t.to(other).to(dlcore.float32)
    assert y.device == dlcore.device(other)
    (y * 2).sum().backward()
    assert t.grad.device == t.device and t.grad.dtype == dlcore.float64
    check(t.grad, np.full(3, 2.0))


def test_to_int_of_tensor_requiring_grad_changes_device():
    """Regression: the non-differentiable cast path kept the old device."""
    t = dlcore.tensor([1.5, 2.5], dtype=dlcore.float64, requires_grad=True)
    i = t.to("emu", dlcore.int64)
    assert i.device == dlcore.device("emu") and i.dtype == dlcore.int64
    assert not i.requires_grad
    assert i.tolist() == [1, 2]


def test_dlpack_zero_copy_with_numpy():
    t = dlcore.arange(4.0)
    n = np.from_dlpack(t)
    n[1] = 50.0
    assert t.tolist() == [0.0, 50.0, 2.0, 3.0]
    a = np.arange(6.0)
    d = dlcore.from_dlpack(a)
    assert d.device == dlcore.device("cpu") and d.shape == (6,)
    a[0] = 100.0
    assert d.numpy()[0] == 100.0


def test_from_numpy_shares_memory():
    a = np.arange(4, dtype=np.int32)
    t = dlcore.from_numpy(a)
    assert t.dtype == dlcore.int32
    t.array[2] = 9
    assert a[2] == 9
    with pytest.raises(TypeError):
        dlcore.from_numpy([1, 2])


def test_tensor_copies_its_data():
    a = np.arange(3.0)
    t = dlcore.tensor(a)
    a[0] = 7.0
    assert t.tolist() == [0.0, 1.0, 2.0]


def test_tensor_from_python_data(device):
    t = dlcore.tensor([[1.0, 2.0], [3.0, 4.0]], device=device)
    assert t.dtype == dlcore.float32 and t.shape == (2, 2)
    assert dlcore.tensor([1, 2], device=device).dtype == dlcore.int64
    assert dlcore.tensor([True], device=device).dtype == dlcore.bool
    with pytest.raises((TypeError, ValueError)):  # ragged
        dlcore.tensor([[1.0], [2.0, 3.0]])


# ---- creation --------------------------------------------------------------------------
def test_filled_creation(device):
    check(dlcore.zeros(2, 3, device=device), np.zeros((2, 3), np.float32))
    check(dlcore.ones((2, 3), device=device), np.ones((2, 3), np.float32))
    check(dlcore.full((2, 2), 1.5, device=device), np.full((2, 2), 1.5, np.float32))
    check(dlcore.full((2,), 7, device=device), np.full(2, 7, np.int64))
    e = dlcore.empty(4, 5, dtype=dlcore.float64, device=device)
    assert e.shape == (4, 5) and e.dtype == dlcore.float64 and e.device == dlcore.device(device)
    base = on(device, rand(2, 3).astype(np.float64))
    check(dlcore.zeros_like(base), np.zeros((2, 3)))
    check(dlcore.ones_like(base, dtype=dlcore.float32), np.ones((2, 3), np.float32))
    check(dlcore.full_like(base, -2.0), np.full((2, 3), -2.0))
    assert dlcore.empty_like(base).shape == (2, 3)
    assert dlcore.zeros_like(base).device == dlcore.device(device)
    z = dlcore.zeros(3, requires_grad=True, device=device)
    assert z.requires_grad and z.is_leaf


def test_ranges(device):
    check(dlcore.arange(5, device=device), np.arange(5))
    check(dlcore.arange(1, 7, 2, device=device), np.arange(1, 7, 2))
    check(dlcore.arange(0.0, 1.0, 0.25, device=device), np.arange(0, 1, 0.25, dtype=np.float32))
    check(dlcore.linspace(-1, 1, 5, device=device), np.linspace(-1, 1, 5).astype(np.float32))
    check(dlcore.eye(3, device=device), np.eye(3, dtype=np.float32))
    check(dlcore.eye(2, 4, dtype=dlcore.float64, device=device), np.eye(2, 4))


@pytest.mark.parametrize("make", [
    lambda d: dlcore.rand(3, 4, device=d),
    lambda d: dlcore.randn(3, 4, device=d),
    lambda d: dlcore.randint(0, 10, (3, 4), device=d),
    lambda d: dlcore.randint(5, size=(6,), device=d),
])
def test_random_is_reproducible_with_manual_seed(device, make):
    dlcore.manual_seed(123)
    a = make(device).numpy().copy()
    dlcore.manual_seed(123)
    b = make(device).numpy()
    np.testing.assert_array_equal(a, b)
    dlcore.manual_seed(124)
    assert not np.array_equal(a, make(device).numpy())


def test_random_cpu_and_emu_agree():
    dlcore.manual_seed(7)
    cpu = [dlcore.rand(5).numpy(), dlcore.randn(5).numpy(), dlcore.randint(0, 100, (5,)).numpy()]
    dlcore.manual_seed(7)
    emu = [dlcore.rand(5, device="emu").numpy(), dlcore.randn(5, device="emu").numpy(),
           dlcore.randint(0, 100, (5,), device="emu").numpy()]
    for c, e in zip(cpu, emu):
        np.testing.assert_array_equal(c, e)


def test_random_ranges_and_dtypes(device):
    dlcore.manual_seed(0)
    u = dlcore.rand(1000, device=device).numpy()
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() < 1
    n = dlcore.randn(4000, dtype=dlcore.float64, device=device).numpy()
    assert n.dtype == np.float64 and abs(n.mean()) < 0.1 and abs(n.std() - 1) < 0.1
    r = dlcore.randint(-3, 3, (1000,), device=device).numpy()
    assert r.dtype == np.int64 and r.min() == -3 and r.max() == 2
    with pytest.raises(ValueError, match="randint"):
        dlcore.randint(3, 3, (2,))


def test_unknown_device_raises():
    with pytest.raises(ValueError, match="unknown device"):
        dlcore.zeros(2, device="tpu")


def test_cuda_without_gpu_raises_clearly():
    from dlcore.device import device_count

    if device_count() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="cuda"):
        dlcore.zeros(2, device="cuda")
