"""APIs ported PyTorch programs need: dlcore.accelerator, dlcore.utils.data, inference_mode,
backends.cudnn, // and %, isinf/all/any, tril/triu, narrow, new_* and is_contiguous,
__format__, LSTM.flatten_parameters. References are NumPy (and Python's own // and %)."""

from __future__ import annotations

import numpy as np
import pytest
from op_check import check, grad_ok, on, rand

import dlcore
import dlcore.nn as nn


@pytest.mark.tf32_default
def test_accelerator_and_backends_as_ported_programs_use_them() -> None:
    available = dlcore.accelerator.is_available()
    assert available == dlcore.cuda.is_available()
    device = (dlcore.accelerator.current_accelerator() if available
              else dlcore.device("cpu"))
    assert device.type in ("cuda", "cpu")
    assert dlcore.accelerator.current_accelerator() is (dlcore.device("cuda") if available
                                                        else None)
    cudnn = dlcore.backends.cudnn
    assert (cudnn.enabled, cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic) == \
        (True, True, False, False)
    cudnn.benchmark = True  # what ported code does; accepted
    cudnn.benchmark = False


def test_utils_data_is_dlcore_data() -> None:
    from dlcore.utils.data import DataLoader, TensorDataset, random_split

    import dlcore.data

    assert DataLoader is dlcore.data.DataLoader and TensorDataset is dlcore.data.TensorDataset
    assert random_split is dlcore.data.random_split


def test_inference_mode_disables_recording() -> None:
    x = dlcore.ones(2, requires_grad=True)
    with dlcore.inference_mode():
        assert not (x * 2).requires_grad
    with dlcore.inference_mode(False):
        assert (x * 2).requires_grad

    @dlcore.inference_mode()
    def f(t: dlcore.Tensor) -> dlcore.Tensor:
        return t * 2

    assert not f(x).requires_grad and dlcore.is_grad_enabled()


@pytest.mark.parametrize("dtype", [np.int64, np.float64])
def test_floor_divide_and_remainder_follow_python(device: str, dtype: type) -> None:
    a = np.array([7, -7, 7, -7, 0], dtype=dtype)
    b = np.array([3, 3, -3, -3, 5], dtype=dtype)
    ta, tb = on(device, a), on(device, b)
    check(ta // tb, np.array([x // y for x, y in zip(a, b)], dtype=dtype))
    check(ta % tb, np.array([x % y for x, y in zip(a, b)], dtype=dtype))
    check(ta % 4, np.array([x % 4 for x in a], dtype=dtype))
    check(10 // ta[:4], np.array([10 // x for x in a[:4]], dtype=dtype))


def test_remainder_gradient(device: str) -> None:
    a = rand(6, seed=1) * 5
    b = np.abs(rand(6, seed=2)) + 0.5
    assert grad_ok(lambda x, y: x % y, [a, b], device)
    x = on(device, a, requires_grad=True)
    with pytest.raises(RuntimeError, match="FloorDivide is not differentiable"):
        (x // 2.0).sum().backward()


def test_isinf_all_any(device: str) -> None:
    x = np.array([[1.0, np.inf, 0.0], [-np.inf, 2.0, 3.0]])
    t = on(device, x)
    check(t.isinf(), np.isinf(x))
    check((t != 0).all(), np.array(np.all(x != 0)))
    check((t != 0).all(1), np.all(x != 0, axis=1))
    check(t.isinf().any(0, keepdim=True), np.any(np.isinf(x), axis=0, keepdims=True))
    check(dlcore.any(t > 2.5), np.array(True))


@pytest.mark.parametrize("diagonal", [-1, 0, 2])
def test_tril_triu_values_and_gradients(device: str, diagonal: int) -> None:
    x = rand(2, 3, 4, seed=3)
    check(on(device, x).tril(diagonal), np.tril(x, diagonal))
    check(on(device, x).triu(diagonal), np.triu(x, diagonal))
    assert grad_ok(lambda t: t.tril(diagonal) * 2 + t.triu(diagonal), [x], device)
    with pytest.raises(RuntimeError, match="tril: expected a tensor with at least 2 dims"):
        on(device, np.ones(3)).tril()


def test_narrow_is_a_view(device: str) -> None:
    x = on(device, np.arange(12.0).reshape(3, 4))
    n = x.narrow(1, -3, 2)
    check(n, np.arange(12.0).reshape(3, 4)[:, 1:3])
    n.fill_(0.0)
    assert x.numpy()[:, 1:3].sum() == 0.0
    with pytest.raises(IndexError, match="narrow: start 3 \\+ length 2 is out of range"):
        x.narrow(1, 3, 2)


def test_new_tensors_take_dtype_and_device_from_self(device: str) -> None:
    base = on(device, np.ones(2, np.float64))
    z = base.new_zeros(2, 3)
    assert z.dtype == np.float64 and z.device is base.device and z.shape == (2, 3)
    check(base.new_ones((3,)), np.ones(3))
    check(base.new_full((2,), 7.0), np.full(2, 7.0))
    assert base.new_empty(4).shape == (4,)
    t = base.new_tensor([1, 2], dtype=dlcore.float32)
    assert t.dtype == np.float32 and t.device is base.device
    assert base.new_zeros(2, dtype=dlcore.int64, requires_grad=False).dtype == np.int64
    assert base.is_contiguous() and not on(device, np.ones((2, 3))).t().is_contiguous()


def test_format_of_a_zero_dim_tensor_is_its_value() -> None:
    loss = dlcore.tensor(0.123456)
    assert f"{loss:.3f}" == "0.123" and f"{dlcore.tensor(3)}" == "3"  # PyTorch's rule
    assert f"{dlcore.ones(2)}" == repr(dlcore.ones(2))
    with pytest.raises(TypeError):
        f"{dlcore.ones(2):.3f}"


def test_lstm_flatten_parameters_is_a_no_op() -> None:
    lstm = nn.LSTM(3, 4)
    before = {k: v.numpy().copy() for k, v in lstm.state_dict().items()}
    assert lstm.flatten_parameters() is None
    assert all(np.array_equal(before[k], v.numpy()) for k, v in lstm.state_dict().items())


# ---- bad input gets a clear error naming the op (or, where PyTorch gives one, a result) ---

@pytest.mark.parametrize("layer", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_layers_take_a_zero_batch_and_refuse_zero_steps(device: str,
                                                                   layer: type) -> None:
    m = layer(3, 4, num_layers=2).to(device)
    x = on(device, np.ones((5, 0, 3), np.float32), requires_grad=True)
    out = m(x)
    y = out[0]
    assert tuple(y.shape) == (5, 0, 4)
    y.sum().backward()
    assert tuple(x.grad.shape) == (5, 0, 3)
    with pytest.raises(RuntimeError, match=f"{layer.__name__}: expected a sequence length "
                                           "above 0"):
        m(on(device, np.ones((0, 2, 3), np.float32)))


def test_repeat_with_a_negative_count_names_the_op() -> None:
    with pytest.raises(RuntimeError, match=r"repeat: repeat counts must be non-negative, got "
                                           r"\(-1,\)"):
        dlcore.ones(2).repeat(-1)


def test_masked_fill_with_a_mask_that_does_not_broadcast() -> None:
    with pytest.raises(RuntimeError, match=r"masked_fill: mask of shape \(2,\) does not "
                                           r"broadcast to the input's shape \(2, 3\)"):
        dlcore.ones(2, 3).masked_fill(dlcore.tensor([True, False]), 0.0)


def test_manual_seed_takes_any_int64_as_pytorch() -> None:
    dlcore.manual_seed(-1)
    a = dlcore.randn(3).numpy()
    dlcore.manual_seed(2**64 - 1)  # the same 64 bits
    np.testing.assert_array_equal(a, dlcore.randn(3).numpy())
    with pytest.raises(ValueError, match="manual_seed: seed must fit in 64 bits"):
        dlcore.manual_seed(2**64)


def test_saving_a_structure_that_contains_itself_names_where(tmp_path) -> None:
    d: dict = {"w": dlcore.ones(2)}
    d["again"] = [d]
    with pytest.raises(ValueError, match=r"save: the structure contains itself at "
                                         r"obj\['again'\]\[0\]"):
        dlcore.save(d, tmp_path / "x.safetensors")
    shared = dlcore.ones(2)
    dlcore.save({"a": [shared], "b": [shared]}, tmp_path / "ok.safetensors")  # a DAG is fine


def test_multinomial_draws_in_proportion(device: str) -> None:
    dlcore.manual_seed(3)
    w = on(device, np.array([[1.0, 2.0, 7.0], [0.0, 0.0, 1.0]]))
    s = dlcore.multinomial(w, 20000, replacement=True).numpy()
    assert s.shape == (2, 20000) and s.dtype == np.int64
    freq = np.bincount(s[0], minlength=3) / 20000
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.7], atol=0.015)  # ~4 standard errors
    assert (s[1] == 2).all()  # zero weights are never drawn
    no_repeat = w.multinomial(3)
    assert sorted(no_repeat.numpy()[0].tolist()) == [0, 1, 2]
    firsts = np.array([dlcore.multinomial(w[0], 1).item() for _ in range(3000)])
    np.testing.assert_allclose(np.bincount(firsts, minlength=3) / 3000, [0.1, 0.2, 0.7],
                               atol=0.03)
    with pytest.raises(RuntimeError, match="cannot draw 4 samples without replacement"):
        w.multinomial(4)
    with pytest.raises(RuntimeError, match="finite and non-negative"):
        on(device, np.array([1.0, -1.0])).multinomial(1)


def test_set_num_threads_sets_the_blas_pool() -> None:
    before = dlcore.get_num_threads()
    try:
        dlcore.set_num_threads(1)
        assert dlcore.get_num_threads() == 1
    finally:
        dlcore.set_num_threads(max(1, before))
    with pytest.raises(ValueError, match="set_num_threads: expected an int >= 1"):
        dlcore.set_num_threads(0)


def test_load_accepts_weights_only(tmp_path) -> None:
    dlcore.save({"w": dlcore.ones(2)}, tmp_path / "c.safetensors")
    assert dlcore.load(tmp_path / "c.safetensors", weights_only=True)["w"].shape == (2,)
    with pytest.raises(ValueError, match="weights_only=False has nothing to enable"):
        dlcore.load(tmp_path / "c.safetensors", weights_only=False)


def test_bce_shape_mismatch_raises_without_a_warning_first() -> None:
    import warnings

    import dlcore.nn.functional as F

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="target size"):
            F.binary_cross_entropy_with_logits(dlcore.zeros(4, 2), dlcore.zeros(4, 1))


@pytest.mark.parametrize("descending", [False, True])
def test_sort_and_argsort_are_stable(device: str, descending: bool) -> None:
    x = np.array([[3.0, 1.0, 2.0, 1.0], [0.0, 5.0, 5.0, -1.0]])
    values, indices = on(device, x).sort(1, descending=descending)
    keys = -x if descending else x
    want = np.argsort(keys, axis=1, kind="stable")
    check(indices, want)
    check(values, np.take_along_axis(x, want, axis=1))
    check(on(device, x).argsort(0, descending=descending),
          np.argsort(-x if descending else x, axis=0, kind="stable"))


def test_topk_values_indices_and_gradient(device: str) -> None:
    x = np.array([[1.0, 5.0, 3.0, 4.0], [2.0, 2.0, 9.0, 0.0]])
    values, indices = on(device, x).topk(2, dim=1)
    check(indices, np.array([[1, 3], [2, 0]]))  # ties: the first index wins
    check(values, np.array([[5.0, 4.0], [9.0, 2.0]]))
    check(on(device, x).topk(1, 1, largest=False).values, np.array([[1.0], [0.0]]))
    t = on(device, x, requires_grad=True)
    t.topk(2, 1).values.sum().backward()
    check(t.grad, np.array([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]]))
    with pytest.raises(RuntimeError, match=r"topk: k \(5\) is out of range"):
        on(device, x).topk(5, dim=1)


@pytest.mark.parametrize("order", [2, 1, 3, float("inf"), 0])
def test_vector_norm_matches_numpy(device: str, order: float) -> None:
    x = rand(3, 4, seed=7)
    check(dlcore.linalg.vector_norm(on(device, x), order, dim=1),
          np.linalg.norm(x, ord=order, axis=1))
    check(on(device, x).norm(), np.array(np.linalg.norm(x)))


def test_euclidean_norm_gradient_is_zero_at_zero(device: str) -> None:
    x = on(device, np.array([[3.0, 4.0], [0.0, 0.0]]), requires_grad=True)
    x.norm(dim=1).sum().backward()
    check(x.grad, np.array([[0.6, 0.8], [0.0, 0.0]]))
    assert grad_ok(lambda t: dlcore.linalg.norm(t, dim=1), [rand(3, 4, seed=8)], device)
    # matrix norms exist now (tests/ops/test_matrix_norm.py): the nuclear norm of ones(2, 2)
    check(dlcore.linalg.norm(on(device, np.ones((2, 2))), ord="nuc"), np.array(2.0))
