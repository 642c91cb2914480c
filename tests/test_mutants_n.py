"""Behaviour pinned down for survivors of a mutation sample over the elementwise, reduction and
shape ops (dlcore/ops/elementwise.py, reduce.py, shape.py): each test checks something no test
of the suite checked before, against an independent reference (NumPy, math, PyTorch's
documented semantics, or values worked out by hand)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import dlcore


def _grad(fn, x: np.ndarray) -> np.ndarray:
    """The gradient of ``fn(t).sum()`` at ``x`` (a float64 array), as a NumPy array."""
    t = dlcore.tensor(x, requires_grad=True)
    fn(t).sum().backward()
    return t.grad.numpy()


# ---- elementwise --------------------------------------------------------------------------


def test_add_and_sub_scale_the_other_operand_by_alpha() -> None:
    """add(x, y, alpha) is x + alpha*y and sub(x, y, alpha) is x - alpha*y, for a tensor and
    for a scalar ``other`` (torch.add/torch.sub's alpha)."""
    x = np.array([1.0, 2.0, 3.0])
    y = np.array([0.5, -1.0, 4.0])
    tx, ty = dlcore.tensor(x), dlcore.tensor(y)
    np.testing.assert_array_equal(dlcore.add(tx, ty, alpha=3).numpy(), x + 3 * y)
    np.testing.assert_array_equal(dlcore.sub(tx, ty, alpha=2).numpy(), x - 2 * y)
    np.testing.assert_array_equal(dlcore.add(tx, 2.0, alpha=3).numpy(), x + 6.0)
    np.testing.assert_array_equal(dlcore.sub(tx, 1.0, alpha=3).numpy(), x - 3.0)
    np.testing.assert_array_equal(dlcore.add(2.0, tx).numpy(), x + 2.0)


@pytest.mark.parametrize("c", [0, 1, 2, 3, 0.5, -1])
def test_tensor_to_a_scalar_power_gradient_is_c_x_to_the_c_minus_1(c: float) -> None:
    """d/dx x**c = c x^(c-1) (0 for c = 0), for the special-cased exponents 0 and 2 too."""
    x = np.array([0.5, 1.5, 3.0])
    got = _grad(lambda t: t ** c, x)
    np.testing.assert_allclose(got, c * x ** (c - 1) if c != 0 else np.zeros(3), rtol=1e-14)


def test_scalar_to_a_tensor_power_and_its_gradient() -> None:
    """2**x has gradient 2**x ln 2; a negative base gives a nan gradient (log of a negative
    number), as in PyTorch."""
    x = np.array([1.0, 2.0, 3.0])
    t = dlcore.tensor(x, requires_grad=True)
    y = 2.0 ** t
    np.testing.assert_array_equal(y.numpy(), 2.0 ** x)
    y.sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), 2.0 ** x * math.log(2.0), rtol=1e-15)
    assert np.isnan(_grad(lambda t: (-2.0) ** t, x)).all()
    # a base in (0, 1): ln 0.5 < 0
    np.testing.assert_allclose(_grad(lambda t: 0.5 ** t, x), 0.5 ** x * math.log(0.5),
                               rtol=1e-15)


def test_tensor_power_gradients_for_base_and_exponent() -> None:
    """a**b: d/da = b a^(b-1), d/db = a^b ln a, defined as 0 where a == 0 (PyTorch's rule)."""
    a = np.array([0.0, 2.0, 3.0])
    b = np.array([2.0, 3.0, 0.5])
    ta = dlcore.tensor(a, requires_grad=True)
    tb = dlcore.tensor(b, requires_grad=True)
    (ta ** tb).sum().backward()
    np.testing.assert_allclose(ta.grad.numpy(), b * a ** (b - 1), rtol=1e-14)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.where(a == 0, 0.0, a ** b * np.log(a))
    np.testing.assert_allclose(tb.grad.numpy(), want, rtol=1e-14)


def test_softplus_beta_and_threshold() -> None:
    """softplus(x, beta, threshold) = log(1 + exp(beta x)) / beta, and x itself where
    beta x > threshold; the gradient is sigmoid(beta x), 1 on the linear part."""
    x = np.array([-1.0, 0.5, 2.0, 2.5, 3.0])
    beta, threshold = 2.0, 5.0  # beta*x = -2, 1, 4, 5, 6: only the last is linear (5 > 5 no)
    soft = np.log1p(np.exp(beta * x)) / beta
    want = np.where(beta * x > threshold, x, soft)
    got = dlcore.nn.functional.softplus(dlcore.tensor(x), beta=beta, threshold=threshold)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-14)
    g = _grad(lambda t: dlcore.nn.functional.softplus(t, beta=beta, threshold=threshold), x)
    sig = 1 / (1 + np.exp(-beta * x))
    np.testing.assert_allclose(g, np.where(beta * x > threshold, 1.0, sig), rtol=1e-14)


@pytest.mark.parametrize("op", ["gelu", "softplus"])
def test_gelu_and_softplus_reject_integer_tensors_naming_themselves(op: str) -> None:
    """gelu/softplus of an integer tensor raise a TypeError naming the op and the dtype."""
    with pytest.raises(TypeError, match=rf"{op}: expected a floating point tensor, got dtype"):
        getattr(dlcore.nn.functional, op)(dlcore.tensor([1, 2]))


def test_clamp_without_bounds_says_so() -> None:
    """clamp with neither bound raises a ValueError saying one is needed."""
    with pytest.raises(ValueError, match="^clamp: at least one of min and max must be given$"):
        dlcore.clamp(dlcore.zeros(2))


def test_leaky_relu_slope_and_gradient() -> None:
    """leaky_relu(x, 0.2) = 0.2 x for x <= 0, x above; the gradient is 0.2 at and below 0
    (PyTorch's x > 0 test), 1 above."""
    x = np.array([-1.0, 0.0, 0.5, 2.0])
    got = dlcore.nn.functional.leaky_relu(dlcore.tensor(x), 0.2)
    np.testing.assert_array_equal(got.numpy(), np.where(x > 0, x, 0.2 * x))
    g = _grad(lambda t: dlcore.nn.functional.leaky_relu(t, 0.2), x)
    np.testing.assert_array_equal(g, [0.2, 0.2, 1.0, 1.0])


def test_where_with_a_float_scalar_and_an_integer_tensor_is_float32() -> None:
    """where(c, 1.5, int tensor) is float32 (a float scalar with an integer tensor gives the
    default float dtype); with a float64 tensor the scalar takes float64."""
    cond = dlcore.tensor([True, False])
    got = dlcore.where(cond, 1.5, dlcore.tensor([1, 2]))
    assert got.dtype == dlcore.float32
    np.testing.assert_array_equal(got.numpy(), [1.5, 2.0])
    got = dlcore.where(cond, dlcore.tensor([3, 4]), 7)
    assert got.dtype == dlcore.int64
    np.testing.assert_array_equal(got.numpy(), [3, 7])
    assert dlcore.where(cond, 1.5, dlcore.tensor([1.0, 2.0], dtype=dlcore.float64)).dtype \
        == dlcore.float64


def test_logical_ops_and_nan_checks() -> None:
    """logical_not/and/or, isnan and isfinite agree with NumPy's."""
    a = np.array([True, False, True, False])
    b = np.array([True, True, False, False])
    ta, tb = dlcore.tensor(a), dlcore.tensor(b)
    np.testing.assert_array_equal(dlcore.logical_not(ta).numpy(), ~a)
    np.testing.assert_array_equal(dlcore.logical_and(ta, tb).numpy(), a & b)
    np.testing.assert_array_equal(dlcore.logical_or(ta, tb).numpy(), a | b)
    x = np.array([1.0, np.nan, np.inf, -np.inf])
    np.testing.assert_array_equal(dlcore.isnan(dlcore.tensor(x)).numpy(), np.isnan(x))
    np.testing.assert_array_equal(dlcore.isfinite(dlcore.tensor(x)).numpy(), np.isfinite(x))


def test_comparisons_with_a_scalar_on_either_side() -> None:
    """lt/le/gt/ge/eq/ne accept a Python scalar as either operand, as NumPy does."""
    x = np.array([1.0, 2.0, 3.0])
    t = dlcore.tensor(x)
    for name, ref in [("lt", np.less), ("le", np.less_equal), ("gt", np.greater),
                      ("ge", np.greater_equal), ("eq", np.equal), ("ne", np.not_equal)]:
        fn = getattr(dlcore, name)
        np.testing.assert_array_equal(fn(t, 2.0).numpy(), ref(x, 2.0), err_msg=name)
        np.testing.assert_array_equal(fn(2.0, t).numpy(), ref(2.0, x), err_msg=name)


def test_zero_to_a_tensor_power() -> None:
    """0.0 ** x is 0 for x > 0 and 1 for x == 0 (0^0 = 1, as in PyTorch)."""
    got = 0.0 ** dlcore.tensor(np.array([1.0, 2.0, 0.0]))
    np.testing.assert_array_equal(got.numpy(), [0.0, 0.0, 1.0])


def test_where_backward_forms_no_gradient_for_a_constant_branch() -> None:
    """where(c, constant, x) forms only x's gradient: summing the upstream over the
    constant's broadcast dim would overflow float32 to inf, which anomaly mode reports."""
    cond = dlcore.tensor([True, True])
    c = dlcore.tensor([1.0])
    x = dlcore.zeros(2, requires_grad=True)
    upstream = np.array([3e38, 3e38], np.float32)
    with dlcore.autograd.detect_anomaly():
        dlcore.where(cond, c, x).backward(dlcore.tensor(upstream))
        dlcore.where(~cond, x, c).backward(dlcore.tensor(upstream))
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0])


def test_nan_checks_replay_in_a_captured_graph() -> None:
    """isnan, isfinite and logical_not captured in a graph on emu re-run on replay, so
    their outputs follow the input's new values."""
    x = dlcore.tensor([1.0, 2.0], device="emu")
    b = dlcore.tensor([True, False], device="emu")
    g = dlcore.cuda.CUDAGraph()
    with dlcore.cuda.graph(g, device="emu"):
        n, f, nb = dlcore.isnan(x), dlcore.isfinite(x), dlcore.logical_not(b)
    x.copy_(dlcore.tensor([float("nan"), float("inf")], device="emu"))
    b.copy_(dlcore.tensor([False, True], device="emu"))
    g.replay()
    np.testing.assert_array_equal(n.numpy(), [True, False])
    np.testing.assert_array_equal(f.numpy(), [False, False])
    np.testing.assert_array_equal(nb.numpy(), [True, False])


def test_float64_over_an_integer_tensor_divides_in_float64() -> None:
    """A float64 tensor divided by an int64 tensor is float64 division (1/3, 2/7 to the last
    bit), not a float32 division widened afterwards."""
    got = dlcore.tensor(np.array([1.0, 2.0])) / dlcore.tensor([3, 7])
    assert got.dtype == dlcore.float64
    np.testing.assert_array_equal(got.numpy(), np.array([1.0, 2.0]) / np.array([3.0, 7.0]))


def test_leaky_relu_of_a_bfloat16_tensor() -> None:
    """leaky_relu works on bfloat16 (ml_dtypes) tensors: the slope is applied and the result
    rounded to bfloat16 (reference: the float32 product rounded by ml_dtypes)."""
    x = np.array([-1.5, 0.0, 2.0, -8.0], np.float32)
    t = dlcore.tensor(x).to(dlcore.bfloat16)
    got = dlcore.nn.functional.leaky_relu(t, 0.25)  # 0.25 and the x are exact in bfloat16
    assert got.dtype == dlcore.bfloat16
    want = np.where(x > 0, x, x * np.float32(0.25)).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got.numpy().astype(np.float32), want.astype(np.float32))


def test_nan_checks_keep_the_input_device() -> None:
    """isnan/isfinite/logical_not results live on their input's device."""
    t = dlcore.tensor([1.0, float("nan")])
    for fn in (dlcore.isnan, dlcore.isfinite):
        assert fn(t).device == t.device
    assert dlcore.logical_not(dlcore.tensor([True])).device == t.device


# ---- reductions ---------------------------------------------------------------------------


def test_sum_and_prod_with_a_dtype_argument() -> None:
    """sum(dtype=) and prod(dtype=) cast first: int32 [100, 100, 100] summed as float64 and
    int8 [10, 20] multiplied as int64 (200, which int8 could not hold)."""
    got = dlcore.sum(dlcore.tensor(np.array([100, 100, 100], np.int32)), dtype=dlcore.float64)
    assert got.dtype == dlcore.float64 and got.item() == 300.0
    got = dlcore.prod(dlcore.tensor(np.array([10, 20], np.int8)), dtype=dlcore.int64)
    assert got.dtype == dlcore.int64 and got.item() == 200


def test_mean_with_a_dtype_accepts_integers_and_names_itself_otherwise() -> None:
    """mean(int tensor, dtype=float64) is the float mean; without dtype= it raises naming
    the op and the dtype."""
    t = dlcore.tensor([1, 2, 4])
    got = dlcore.mean(t, dtype=dlcore.float64)
    assert got.dtype == dlcore.float64
    assert got.item() == pytest.approx(7 / 3, rel=1e-15)
    with pytest.raises(RuntimeError, match=r"mean: could not infer output dtype; input dtype "
                                           r"int64 is not floating point"):
        dlcore.mean(t)


@pytest.mark.parametrize("dim,keepdim", [(None, False), (1, True), (0, False)])
def test_prod_gradient_with_a_zero_is_the_product_of_the_others(dim: int | None,
                                                                 keepdim: bool) -> None:
    """With a zero in the input, d prod / d x_i is the product of the other entries of its
    reduced slice (computed here by brute force)."""
    x = np.array([[2.0, 0.0, 3.0], [4.0, 5.0, 0.5]])
    t = dlcore.tensor(x, requires_grad=True)
    dlcore.prod(t, dim=dim, keepdim=keepdim).sum().backward()
    want = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        others = np.ones_like(x, dtype=bool)
        if dim is None:
            others[idx] = False
        else:
            others[:] = False
            sl = list(idx)
            sl[dim] = slice(None)
            others[tuple(sl)] = True
            others[idx] = False
        want[idx] = x[others].prod()
    np.testing.assert_array_equal(t.grad.numpy(), want)


def test_prod_gradient_of_all_zeros_and_of_float32_keeps_dtype() -> None:
    """All-zero input: every entry's gradient is the product of the others, 0 (not 0/0);
    a float32 input with a zero gets a float32 gradient."""
    t = dlcore.tensor(np.zeros(3), requires_grad=True)
    dlcore.prod(t).backward()
    np.testing.assert_array_equal(t.grad.numpy(), [0.0, 0.0, 0.0])
    t = dlcore.tensor(np.array([2.0, 0.0, 3.0], np.float32), requires_grad=True)
    dlcore.prod(t, dim=0).backward()
    assert t.grad.dtype == dlcore.float32
    np.testing.assert_array_equal(t.grad.numpy(), [0.0, 6.0, 0.0])


def test_max_dim_of_a_size_one_leading_dim_keeps_it_and_float32_gradient() -> None:
    """max over dim 1 of a (1, 3) tensor gives values of shape (1,) (only the reduced dim
    goes); its float32 gradient stays float32."""
    t = dlcore.tensor(np.array([[1.0, 4.0, 2.0]], np.float32), requires_grad=True)
    vals, idx = dlcore.max(t, dim=1)
    assert vals.shape == (1,) and idx.shape == (1,)
    vals.sum().backward()
    assert t.grad.dtype == dlcore.float32
    np.testing.assert_array_equal(t.grad.numpy(), [[0.0, 1.0, 0.0]])


def test_max_of_a_0d_tensor_along_dim_0_is_itself_with_index_0() -> None:
    """max(0-d x, dim=0) is (x, 0), like torch.max(torch.tensor(5.), 0)."""
    vals, idx = dlcore.max(dlcore.tensor(5.0), 0)
    assert vals.item() == 5.0 and idx.item() == 0 and idx.dtype == dlcore.int64
    assert idx.shape == ()


@pytest.mark.parametrize("op", ["max", "min"])
def test_max_min_of_an_empty_tensor_raise_naming_the_op_and_shape(op: str) -> None:
    """Reducing an empty tensor with max/min raises a RuntimeError naming the op and shape."""
    with pytest.raises(RuntimeError, match=rf"{op}: cannot reduce an empty tensor of shape "
                                           r"\(0, 3\)"):
        getattr(dlcore, op)(dlcore.zeros(0, 3))


def test_min_dim_gradient_goes_to_the_argmin() -> None:
    """min(x, dim=0) sends the gradient to each column's argmin."""
    x = np.array([[1.0, 5.0], [-7.0, 6.0]])
    t = dlcore.tensor(x, requires_grad=True)
    vals, idx = dlcore.min(t, dim=0)
    np.testing.assert_array_equal(vals.numpy(), x.min(axis=0))
    np.testing.assert_array_equal(idx.numpy(), x.argmin(axis=0))
    vals.sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), [[0, 1], [1, 0]])


def test_amax_over_a_dim_tuple_with_ties_shares_the_gradient() -> None:
    """amax over dims (0, 2) with keepdim: ties in a reduced slice share its gradient."""
    x = np.array([[[1.0, 3.0], [2.0, 2.0]], [[3.0, 0.0], [2.0, 1.0]]])  # shape (2, 2, 2)
    t = dlcore.tensor(x, requires_grad=True)
    out = dlcore.amax(t, dim=(0, 2), keepdim=True)
    np.testing.assert_array_equal(out.numpy(), x.max(axis=(0, 2), keepdims=True))
    out.sum().backward()
    # slice j=0 holds 1, 3, 3, 0: two 3s share; slice j=1 holds 2, 2, 2, 1: three 2s share
    want = np.array([[[0, 0.5], [1 / 3, 1 / 3]], [[0.5, 0], [1 / 3, 0]]])
    np.testing.assert_allclose(t.grad.numpy(), want, rtol=1e-15)


def test_argmax_argmin_over_all_with_keepdim_and_of_a_0d_tensor() -> None:
    """argmax(x, keepdim=True) over all elements is the flat index shaped (1,)*ndim; the arg
    of a 0-d tensor along dim 0 is 0 (int64, 0-d)."""
    x = np.array([[1.0, 9.0, 2.0], [0.0, 3.0, -4.0]])
    t = dlcore.tensor(x)
    got = dlcore.argmax(t, keepdim=True)
    assert got.shape == (1, 1) and got.dtype == dlcore.int64 and got.item() == 1
    got = dlcore.argmin(t, keepdim=True)
    assert got.shape == (1, 1) and got.item() == 5
    got = dlcore.argmin(t)
    assert got.shape == () and got.item() == 5
    got = dlcore.argmax(dlcore.tensor(3.0), dim=0)
    assert got.shape == () and got.dtype == dlcore.int64 and got.item() == 0


@pytest.mark.parametrize("op,call", [
    ("amax", lambda t: dlcore.amax(t, 5)),
    ("amin", lambda t: dlcore.amin(t, 5)),
    ("unflatten", lambda t: dlcore.unflatten(t, 5, (1, 3))),
    ("flatten", lambda t: dlcore.flatten(t, 5)),
    ("flatten", lambda t: dlcore.flatten(t, 0, 5)),
    ("stack", lambda t: dlcore.stack([t], 5)),
    ("chunk", lambda t: dlcore.chunk(t, 2, 5)),
    ("flip", lambda t: dlcore.flip(t, 5)),
    ("narrow", lambda t: dlcore.narrow(t, 5, 0, 1)),
    ("split", lambda t: dlcore.split(t, 1, 5)),
], ids=["amax", "amin", "unflatten", "flatten_start", "flatten_end", "stack", "chunk", "flip",
        "narrow", "split"])
def test_bad_dim_errors_name_the_op(op: str, call) -> None:
    """A dim out of range raises an IndexError whose message starts with the op's name."""
    with pytest.raises(IndexError, match=rf"^{op}: dim 5 is out of range for a tensor with"):
        call(dlcore.zeros(2, 3))


# ---- shape --------------------------------------------------------------------------------


@pytest.mark.parametrize("src,shape", [((2, 3), (-1, -1)), ((0, 3), (-1, 0)), ((2, 3), (4, -1)),
                                       ((2, 3), (7,))])
def test_reshape_to_an_invalid_shape_raises_naming_both(src: tuple, shape: tuple) -> None:
    """reshape rejects two -1s, a -1 next to a zero, a -1 that does not divide the size and a
    size mismatch, with a RuntimeError naming the shapes (as PyTorch's 'shape is invalid')."""
    with pytest.raises(RuntimeError, match=rf"reshape: shape \({shape[0]}, ?"):
        dlcore.zeros(*src).reshape(*shape)


def test_view_of_a_transposed_tensor_raises() -> None:
    """view() of a non-contiguous (transposed) tensor to a flat shape raises, naming reshape
    as the way out, as PyTorch does."""
    t = dlcore.arange(6).reshape(2, 3).transpose(0, 1)
    with pytest.raises(RuntimeError, match=r"^view: size \(6,\) is not compatible.*use "
                                           r"\.reshape\(\.\.\.\) instead, or \.contiguous\(\) "
                                           r"first$"):
        t.view(6)
    np.testing.assert_array_equal(t.reshape(6).numpy(), np.arange(6).reshape(2, 3).T.ravel())


def test_flatten_ranges_and_a_0d_tensor() -> None:
    """flatten(start, end) merges dims start..end; a 0-d tensor flattens to shape (1,);
    start after end raises."""
    t = dlcore.zeros(2, 3, 4, 5)
    assert dlcore.flatten(t, 1, 2).shape == (2, 12, 5)
    assert dlcore.flatten(t, 2).shape == (2, 3, 20)
    assert dlcore.flatten(t, 0, -2).shape == (24, 5)
    assert dlcore.flatten(dlcore.tensor(3.0)).shape == (1,)
    assert dlcore.flatten(dlcore.zeros(3)).shape == (3,)
    assert dlcore.flatten(t, 1, 1).shape == (2, 3, 4, 5)  # start == end is allowed
    with pytest.raises(RuntimeError, match="flatten: start_dim 2 comes after end_dim 1"):
        dlcore.flatten(t, 2, 1)


def test_unflatten_splits_a_dim() -> None:
    """unflatten(x, 1, (2, 3)) of shape (4, 6, 5) is (4, 2, 3, 5), same element order."""
    x = np.arange(120).reshape(4, 6, 5)
    got = dlcore.unflatten(dlcore.tensor(x), 1, (2, 3))
    np.testing.assert_array_equal(got.numpy(), x.reshape(4, 2, 3, 5))
    assert dlcore.unflatten(dlcore.tensor(x), -1, (5, 1)).shape == (4, 6, 5, 1)


def test_squeeze_given_dims_only_drops_size_one_dims() -> None:
    """squeeze(dim) drops a size-1 dim and ignores one of another size; a tuple of dims
    drops those that are size 1."""
    t = dlcore.zeros(1, 3, 1, 1)
    assert dlcore.squeeze(t, 0).shape == (3, 1, 1)
    assert dlcore.squeeze(t, 1).shape == (1, 3, 1, 1)
    assert dlcore.squeeze(t, (0, 2)).shape == (3, 1)
    assert dlcore.squeeze(t, -1).shape == (1, 3, 1)
    assert dlcore.squeeze(t).shape == (3,)


def test_unsqueeze_at_negative_dims() -> None:
    """unsqueeze(-1) appends a dim, unsqueeze(-2) inserts before the last (dims counted over
    ndim + 1, as PyTorch)."""
    t = dlcore.zeros(2, 3)
    assert dlcore.unsqueeze(t, -1).shape == (2, 3, 1)
    assert dlcore.unsqueeze(t, -2).shape == (2, 1, 3)
    assert dlcore.unsqueeze(t, 2).shape == (2, 3, 1)


def test_permute_validates_its_dims() -> None:
    """permute with the wrong number of dims or a repeated dim raises; a negative dim counts
    from the end; the gradient is permuted back."""
    t = dlcore.zeros(2, 3, 4)
    with pytest.raises(RuntimeError, match=r"permute: number of dims 2 does not match the "
                                           r"tensor's 3 dims \(shape \(2, 3, 4\)\)"):
        dlcore.permute(t, 0, 1)
    with pytest.raises(RuntimeError, match=r"permute: dims \(0, 0, 1\) is not a permutation"):
        dlcore.permute(t, 0, 0, 1)
    x = np.arange(24.0).reshape(2, 3, 4)
    tx = dlcore.tensor(x, requires_grad=True)
    y = dlcore.permute(tx, -1, 0, 1)
    np.testing.assert_array_equal(y.numpy(), x.transpose(2, 0, 1))
    (y * dlcore.tensor(x.transpose(2, 0, 1))).sum().backward()
    np.testing.assert_array_equal(tx.grad.numpy(), x)


def test_transpose_of_a_1d_tensor_is_itself() -> None:
    """transpose(0, -1) of a 1-d tensor is a no-op; of a 3-d one it swaps the two dims."""
    t = dlcore.arange(3)
    assert dlcore.transpose(t, 0, -1) is t
    x = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(dlcore.transpose(dlcore.tensor(x), 0, -1).numpy(),
                                  x.swapaxes(0, 2))


def test_expand_errors_and_minus_one() -> None:
    """expand keeps a dim given as -1, adds leading dims, and rejects too few sizes and a
    size that does not match a non-1 dim, naming the shapes."""
    t = dlcore.tensor(np.array([[1.0], [2.0]]))
    got = dlcore.expand(t, 3, -1, 4)
    assert got.shape == (3, 2, 4)
    np.testing.assert_array_equal(got.numpy(), np.broadcast_to([[1.0], [2.0]], (3, 2, 4)))
    with pytest.raises(RuntimeError, match=r"expand: the number of sizes 1 must be at least "
                                           r"the tensor's dims 2 \(shape \(2, 1\)\)"):
        dlcore.expand(t, 4)
    with pytest.raises(RuntimeError, match=r"expand: the expanded size 3 must match the "
                                           r"existing size 2 at dim 0"):
        dlcore.expand(t, 3, 4)
    assert dlcore.broadcast_to(t, (2, 1)) is t


def test_repeat_is_numpy_tile_and_validates_its_sizes() -> None:
    """repeat(sizes) tiles like np.tile (extra sizes add leading dims); too few sizes or a
    negative count raise; the gradient sums over the copies."""
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    t = dlcore.tensor(x, requires_grad=True)
    got = dlcore.repeat(t, 2, 1, 3)
    np.testing.assert_array_equal(got.numpy(), np.tile(x, (2, 1, 3)))
    got.sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), np.full((2, 2), 6.0))
    with pytest.raises(RuntimeError, match="repeat: number of repeat dims 1 is less than the "
                                           "tensor's dims 2"):
        dlcore.repeat(t, 2)
    with pytest.raises(RuntimeError, match=r"repeat: repeat counts must be non-negative, got "
                                           r"\(2, -1\)"):
        dlcore.repeat(t, 2, -1)
    assert dlcore.repeat(t, 0, 1).shape == (0, 2)


def test_contiguous_memory_formats() -> None:
    """contiguous(channels_last) needs a 4-d tensor; an unknown memory_format raises; a
    transposed tensor becomes C-contiguous with the same values; preserve_format is a no-op."""
    with pytest.raises(RuntimeError, match=r"contiguous: memory_format=dlcore.channels_last "
                                           r"needs a 4-D \(N, C, H, W\) tensor, got shape"):
        dlcore.zeros(2, 3).contiguous(memory_format=dlcore.channels_last)
    with pytest.raises(ValueError, match="contiguous: memory_format must be"):
        dlcore.zeros(2, 3).contiguous(memory_format="nhwc")
    x = np.arange(6.0).reshape(2, 3)
    t = dlcore.tensor(x).transpose(0, 1)
    c = t.contiguous()
    assert c._data.flags.c_contiguous
    np.testing.assert_array_equal(c.numpy(), x.T)
    assert t.contiguous(memory_format=dlcore.preserve_format) is t
    n = dlcore.tensor(np.arange(24.0).reshape(1, 2, 3, 4))
    cl = n.contiguous(memory_format=dlcore.channels_last)
    assert cl.is_contiguous(memory_format=dlcore.channels_last)
    assert cl.contiguous(memory_format=dlcore.channels_last) is cl
    np.testing.assert_array_equal(cl.numpy(), n.numpy())


def test_cat_of_nothing_and_of_one_tensor() -> None:
    """cat([]) raises a ValueError; cat of one tensor is that tensor; a mismatch names the
    offending tensor's index."""
    with pytest.raises(ValueError, match="cat: expected a non-empty sequence of tensors"):
        dlcore.cat([])
    t = dlcore.zeros(2, 3)
    assert dlcore.cat([t], 1) is t
    with pytest.raises(RuntimeError, match=r"tensor 2 has shape \(2, 4\)"):
        dlcore.cat([t, t, dlcore.zeros(2, 4)], 0)
    with pytest.raises(RuntimeError, match="cat: sizes of tensors must match except in dim 0"):
        dlcore.cat([t, dlcore.zeros(3)], 0)


def test_stack_errors_name_the_entries() -> None:
    """stack([]) raises a ValueError; shapes that differ name the entry; a negative dim
    counts over ndim + 1."""
    with pytest.raises(ValueError, match="^stack: expected a non-empty sequence of tensors$"):
        dlcore.stack([])
    a = dlcore.zeros(2, 3)
    with pytest.raises(RuntimeError, match=r"stack: expects each tensor to be equal size, but "
                                           r"got \(2, 3\) at entry 0 and \(3, 2\) at entry 1"):
        dlcore.stack([a, dlcore.zeros(3, 2)])
    assert dlcore.stack([a, a], -1).shape == (2, 3, 2)
    b = dlcore.zeros(3, 4)
    assert dlcore.stack([b, b]).shape == (2, 3, 4)  # dim 0 by default


def test_split_by_size_edge_cases() -> None:
    """split by an int: a smaller last piece, one empty piece for an empty dim, and a
    non-positive size raises."""
    x = np.arange(10.0).reshape(5, 2)
    parts = dlcore.split(dlcore.tensor(x), 2)
    assert [p.shape for p in parts] == [(2, 2), (2, 2), (1, 2)]
    np.testing.assert_array_equal(parts[2].numpy(), x[4:])
    parts = dlcore.split(dlcore.tensor(x), 2, dim=1)
    assert [p.shape for p in parts] == [(5, 2)]
    empty = dlcore.split(dlcore.zeros(0, 2), 3)
    assert [p.shape for p in empty] == [(0, 2)]
    with pytest.raises(ValueError, match="split: split_size must be positive, got 0"):
        dlcore.split(dlcore.tensor(x), 0)


def test_chunk_sizes_and_bad_counts() -> None:
    """chunk(5 rows, 3) gives pieces of 2, 2, 1 (ceil division); chunks <= 0 raise."""
    t = dlcore.zeros(5, 2)
    assert [p.shape[0] for p in dlcore.chunk(t, 3)] == [2, 2, 1]
    assert [p.shape[1] for p in dlcore.chunk(t, 4, dim=1)] == [1, 1]
    assert [p.shape[0] for p in dlcore.chunk(dlcore.zeros(0), 2)] == [0, 0]  # as torch
    with pytest.raises(ValueError, match="chunk: chunks must be positive, got 0"):
        dlcore.chunk(t, 0)


def test_pad_validates_its_arguments() -> None:
    """An odd pad length, more pairs than dims and an unknown mode raise ValueErrors; the
    backward of a non-constant mode raises a RuntimeError naming the mode."""
    t = dlcore.zeros(2, 3)
    with pytest.raises(ValueError, match="pad: padding length 3 must be even"):
        dlcore.nn.functional.pad(t, (1, 1, 1))
    with pytest.raises(ValueError, match=r"padding length 6 must be even and at most twice"):
        dlcore.nn.functional.pad(t, (1, 1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="pad: unknown mode 'mirror'"):
        dlcore.nn.functional.pad(t, (1, 1), mode="mirror")
    x = dlcore.zeros(1, 3, requires_grad=True)
    y = dlcore.nn.functional.pad(x, (1, 1), mode="reflect")
    with pytest.raises(RuntimeError, match="^pad: backward for mode 'reflect' is not "
                                           "supported; use mode='constant'$"):
        y.sum().backward()


def test_narrow_with_a_negative_start_and_out_of_range() -> None:
    """narrow(dim, -2, 2) takes the last two entries; a start or length beyond the dim
    raises an IndexError naming both."""
    x = np.arange(10).reshape(2, 5)
    t = dlcore.tensor(x)
    np.testing.assert_array_equal(dlcore.narrow(t, 1, -2, 2).numpy(), x[:, 3:])
    np.testing.assert_array_equal(dlcore.narrow(t, 1, 5, 0).numpy(), x[:, 5:])
    for start, length in [(3, 3), (6, 0), (-6, 1), (0, -1)]:
        with pytest.raises(IndexError, match=rf"narrow: start {start} \+ length {length} is "
                                             r"out of range for dim 1 of size 5"):
            dlcore.narrow(t, 1, start, length)


def test_in_place_write_through_a_3d_permuted_view_reaches_the_gradient() -> None:
    """Multiplying a permuted view of a non-leaf in place makes the base's gradient the
    multiplier permuted back (the view is replayed with the same dims)."""
    leaf = dlcore.tensor(np.zeros((2, 3, 4)), requires_grad=True)
    base = leaf.clone()
    w = np.arange(24.0).reshape(3, 2, 4)
    base.permute(1, 0, 2).mul_(dlcore.tensor(w))
    base.sum().backward()
    np.testing.assert_array_equal(leaf.grad.numpy(), w.transpose(1, 0, 2))


def test_in_place_write_through_a_split_piece_reaches_the_gradient() -> None:
    """Scaling one split piece of a non-leaf in place scales the gradient of that part of
    the base only."""
    leaf = dlcore.tensor(np.ones(4), requires_grad=True)
    base = leaf * 1
    _, right = dlcore.split(base, [1, 3])
    right.mul_(3)
    base.sum().backward()
    np.testing.assert_array_equal(leaf.grad.numpy(), [1.0, 3.0, 3.0, 3.0])


def test_stack_and_chunk_of_a_single_piece() -> None:
    """stack of one tensor adds the dim; chunk(x, 1) is x whole, as one piece."""
    got = dlcore.stack([dlcore.tensor([1.0, 2.0])], 1)
    np.testing.assert_array_equal(got.numpy(), [[1.0], [2.0]])
    parts = dlcore.chunk(dlcore.tensor([1.0, 2.0, 3.0]), 1)
    assert len(parts) == 1
    np.testing.assert_array_equal(parts[0].numpy(), [1.0, 2.0, 3.0])


def test_in_place_write_through_a_narrow_view_reaches_the_gradient() -> None:
    """Scaling a narrow() view of a non-leaf in place scales the gradient of that region of
    the base only."""
    leaf = dlcore.tensor(np.ones((2, 4)), requires_grad=True)
    base = leaf * 1
    dlcore.narrow(base, 1, 1, 2).mul_(5)
    base.sum().backward()
    np.testing.assert_array_equal(leaf.grad.numpy(), [[1, 5, 5, 1], [1, 5, 5, 1]])


def test_in_place_write_through_a_reshaped_view_reaches_the_gradient() -> None:
    """Multiplying a reshape() view of a non-leaf in place makes the base's gradient the
    multiplier reshaped back."""
    leaf = dlcore.tensor(np.zeros((2, 3)), requires_grad=True)
    base = leaf.clone()
    w = np.arange(6.0).reshape(3, 2)
    base.reshape(3, 2).mul_(dlcore.tensor(w))
    base.sum().backward()
    np.testing.assert_array_equal(leaf.grad.numpy(), w.reshape(2, 3))
