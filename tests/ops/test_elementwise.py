"""Elementwise ops: arithmetic (all operand forms), math functions, activations,
comparisons, where; forward against NumPy/math and float64 gradchecks on every device."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from op_check import away_from_zero, check, grad_ok, gradgrad_ok, on, rand

import dlcore

FLOATS = [np.float32, np.float64]


def _erf_gelu(x: np.ndarray) -> np.ndarray:
    return np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.ravel().tolist()],
                    dtype=np.float64).reshape(x.shape)


def _tanh_gelu(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _away_from(bound: float, *shape: int, seed: int = 0) -> np.ndarray:
    """|x| in [0.2, 2] but at least 0.2 from +-bound: clamp's kinks stay out of gradcheck."""
    x = away_from_zero(*shape, seed=seed)
    near = np.abs(np.abs(x) - bound) < 0.2
    return np.where(near, x * 0.5, x)


# name, dlcore fn, NumPy reference (float64), input generator
UNARY = [
    ("neg", lambda t: -t, lambda x: -x, rand),
    ("exp", dlcore.exp, np.exp, rand),
    ("log", dlcore.log, np.log, lambda *s, **k: rand(*s, low=0.2, high=3.0, **k)),
    ("log1p", dlcore.log1p, np.log1p, lambda *s, **k: rand(*s, low=-0.8, high=3.0, **k)),
    ("sqrt", dlcore.sqrt, np.sqrt, lambda *s, **k: rand(*s, low=0.2, high=3.0, **k)),
    ("rsqrt", dlcore.rsqrt, lambda x: 1 / np.sqrt(x),
     lambda *s, **k: rand(*s, low=0.2, high=3.0, **k)),
    ("abs", dlcore.abs, np.abs, away_from_zero),
    ("abs_op", abs, np.abs, away_from_zero),
    ("sign", dlcore.sign, np.sign, away_from_zero),
    ("sin", dlcore.sin, np.sin, rand),
    ("cos", dlcore.cos, np.cos, rand),
    ("tanh", dlcore.tanh, np.tanh, rand),
    ("sigmoid", dlcore.sigmoid, lambda x: 1 / (1 + np.exp(-x)), rand),
    ("relu", dlcore.relu, lambda x: np.maximum(x, 0), away_from_zero),
    ("leaky_relu", dlcore.leaky_relu, lambda x: np.where(x > 0, x, 0.01 * x), away_from_zero),
    ("leaky_relu_0.2", lambda t: dlcore.leaky_relu(t, 0.2), lambda x: np.where(x > 0, x, 0.2 * x),
     away_from_zero),
    ("gelu", dlcore.gelu, _erf_gelu, lambda *s, **k: rand(*s, low=-4, high=4, **k)),
    ("gelu_tanh", lambda t: dlcore.gelu(t, approximate="tanh"), _tanh_gelu,
     lambda *s, **k: rand(*s, low=-4, high=4, **k)),
    ("softplus", dlcore.softplus, lambda x: np.log1p(np.exp(x)), rand),
    ("softplus_beta", lambda t: dlcore.softplus(t, beta=2.0, threshold=3.0),
     lambda x: np.where(2 * x > 3.0, x, np.log1p(np.exp(2 * x)) / 2),
     lambda *s, **k: away_from_zero(*s, low=0.1, high=2.5, **k)),
    ("clamp", lambda t: dlcore.clamp(t, -1.0, 1.0), lambda x: np.clip(x, -1.0, 1.0),
     lambda *s, **k: _away_from(1.0, *s, **k)),
    ("clamp_min", lambda t: t.clamp(min=0.1), lambda x: np.maximum(x, 0.1), away_from_zero),
    ("clamp_max", lambda t: t.clamp(max=0.1), lambda x: np.minimum(x, 0.1), away_from_zero),
]
UNARY_IDS = [u[0] for u in UNARY]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name,fn,ref,gen", UNARY, ids=UNARY_IDS)
def test_unary_forward(device, dtype, name, fn, ref, gen):
    x = gen(3, 5, seed=1)
    out = fn(on(device, x.astype(dtype)))
    # reference in float64 from the same (rounded) inputs
    check(out, ref(x.astype(dtype).astype(np.float64)), dtype=dtype)


@pytest.mark.parametrize("name,fn,ref,gen", UNARY, ids=UNARY_IDS)
def test_unary_gradcheck(device, name, fn, ref, gen):
    assert grad_ok(fn, [gen(2, 3, seed=2)], device)


@pytest.mark.parametrize("name", ["exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh",
                                  "sigmoid", "gelu", "gelu_tanh", "softplus"])
def test_unary_gradgradcheck(device, name):
    _, fn, _, gen = UNARY[UNARY_IDS.index(name)]
    assert gradgrad_ok(fn, [gen(2, 3, seed=3)], device)


def test_gelu_float64_matches_erf_closely(device):
    """float64 gelu must be float64-accurate (regression: it used a 1e-7 erf fit)."""
    x = np.linspace(-6, 6, 97)
    check(dlcore.gelu(on(device, x)), _erf_gelu(x), rtol=1e-12, atol=1e-14)


def test_sigmoid_extremes_do_not_overflow(device):
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0], np.float32)
    check(dlcore.sigmoid(on(device, x)), np.array([0, 1 / (1 + math.exp(50)), 0.5,
                                                    1 / (1 + math.exp(-50)), 1], np.float32))


def test_softplus_large_input_is_linear(device):
    x = np.array([30.0, 100.0, 1000.0])
    check(dlcore.softplus(on(device, x)), x)


# ---- binary ---------------------------------------------------------------------------
BINARY = [
    ("add", lambda a, b: a + b, np.add),
    ("sub", lambda a, b: a - b, np.subtract),
    ("mul", lambda a, b: a * b, np.multiply),
    ("div", lambda a, b: a / b, np.divide),
    ("pow", lambda a, b: a ** b, np.power),
    ("maximum", dlcore.maximum, np.maximum),
    ("minimum", dlcore.minimum, np.minimum),
]
SHAPE_PAIRS = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 3), (4, 1)), ((), (2, 3)),
               ((1, 3), (2, 1))]


def _binary_inputs(name: str, sa: tuple, sb: tuple) -> tuple[np.ndarray, np.ndarray]:
    if name == "pow":  # positive base
        return rand(*sa, seed=4, low=0.5, high=2.0), rand(*sb, seed=5, low=-2.0, high=2.0)
    if name == "div":
        return rand(*sa, seed=4), away_from_zero(*sb, seed=5, low=0.5)
    # distinct values (no ties for maximum/minimum)
    return rand(*sa, seed=4), rand(*sb, seed=5) + 0.01


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("sa,sb", SHAPE_PAIRS)
@pytest.mark.parametrize("name,fn,ref", BINARY, ids=[b[0] for b in BINARY])
def test_binary_forward(device, dtype, name, fn, ref, sa, sb):
    a, b = (x.astype(dtype) for x in _binary_inputs(name, sa, sb))
    check(fn(on(device, a), on(device, b)), ref(a.astype(np.float64), b.astype(np.float64)),
          dtype=dtype)


@pytest.mark.parametrize("sa,sb", SHAPE_PAIRS)
@pytest.mark.parametrize("name,fn,ref", BINARY, ids=[b[0] for b in BINARY])
def test_binary_gradcheck(device, name, fn, ref, sa, sb):
    """Gradients of broadcast operands are summed back to each operand's shape."""
    assert grad_ok(fn, list(_binary_inputs(name, sa, sb)), device)


@pytest.mark.parametrize("name,fn,ref", BINARY[:5], ids=[b[0] for b in BINARY[:5]])
def test_binary_gradgradcheck(device, name, fn, ref):
    assert gradgrad_ok(fn, list(_binary_inputs(name, (2, 3), (3,))), device)


SCALAR_FORMS = [
    ("t+s", lambda t: t + 2.5, lambda x: x + 2.5),
    ("s+t", lambda t: 2.5 + t, lambda x: 2.5 + x),
    ("t-s", lambda t: t - 2.5, lambda x: x - 2.5),
    ("s-t", lambda t: 2.5 - t, lambda x: 2.5 - x),
    ("t*s", lambda t: t * -1.5, lambda x: x * -1.5),
    ("s*t", lambda t: -1.5 * t, lambda x: -1.5 * x),
    ("t/s", lambda t: t / 4.0, lambda x: x / 4.0),
    ("s/t", lambda t: 3.0 / t, lambda x: 3.0 / x),
    ("t**2", lambda t: t ** 2, lambda x: x ** 2),
    ("t**3", lambda t: t ** 3, lambda x: x ** 3),
    ("t**0.5", lambda t: t.abs() ** 0.5, lambda x: np.abs(x) ** 0.5),
    ("t**-1.5", lambda t: t.abs() ** -1.5, lambda x: np.abs(x) ** -1.5),
    ("t**0", lambda t: t ** 0, lambda x: x ** 0),
    ("s**t", lambda t: 2.0 ** t, lambda x: 2.0 ** x),
    ("t+int", lambda t: t + 3, lambda x: x + 3),
    ("int-t", lambda t: 3 - t, lambda x: 3 - x),
    ("add_alpha", lambda t: dlcore.add(t, t, alpha=2), lambda x: x + 2 * x),
    ("sub_alpha", lambda t: dlcore.sub(t, 1.0, alpha=3), lambda x: x - 3.0),
    ("np_scalar", lambda t: t * np.float64(2.0), lambda x: x * 2.0),
]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name,fn,ref", SCALAR_FORMS, ids=[s[0] for s in SCALAR_FORMS])
def test_scalar_forms_forward(device, dtype, name, fn, ref):
    x = away_from_zero(2, 3, seed=6).astype(dtype)
    check(fn(on(device, x)), ref(x.astype(np.float64)), dtype=dtype)


@pytest.mark.parametrize("name,fn,ref", SCALAR_FORMS, ids=[s[0] for s in SCALAR_FORMS])
def test_scalar_forms_gradcheck(device, name, fn, ref):
    assert grad_ok(fn, [away_from_zero(2, 3, seed=7)], device)


def test_maximum_ties_split_gradient(device):
    a = on(device, np.array([1.0, 2.0, 3.0]), requires_grad=True)
    b = on(device, np.array([1.0, 5.0, 0.0]), requires_grad=True)
    dlcore.maximum(a, b).sum().backward()
    check(a.grad, np.array([0.5, 0.0, 1.0]))
    check(b.grad, np.array([0.5, 1.0, 0.0]))


def test_clamp_with_tensor_bounds(device):
    x, lo, hi = rand(3, 4, seed=8), rand(4, seed=9, high=0.0), rand(3, 1, seed=10, low=0.1)
    check(dlcore.clamp(on(device, x), on(device, lo), on(device, hi)),
          np.minimum(np.maximum(x, lo), hi))


def test_clamp_requires_a_bound(device):
    with pytest.raises(ValueError, match="clamp"):
        dlcore.clamp(on(device, rand(3)))


def test_gelu_rejects_unknown_approximation(device):
    with pytest.raises(ValueError, match="approximate"):
        dlcore.gelu(on(device, rand(3)), approximate="erf")


# ---- where ----------------------------------------------------------------------------
def test_where_forward_broadcast(device):
    c = rand(3, 1, seed=11) > 0
    x, y = rand(3, 4, seed=12), rand(4, seed=13)
    check(dlcore.where(on(device, c), on(device, x), on(device, y)), np.where(c, x, y))


def test_where_scalar_operands(device):
    c, x = rand(2, 3, seed=14) > 0, rand(2, 3, seed=15).astype(np.float32)
    check(dlcore.where(on(device, c), on(device, x), 0.0), np.where(c, x, np.float32(0)))
    check(dlcore.where(on(device, c), -1.0, on(device, x)), np.where(c, np.float32(-1), x))


def test_where_gradcheck(device):
    c = on(device, rand(3, 1, seed=16) > 0)
    assert grad_ok(lambda x, y: dlcore.where(c, x, y), [rand(3, 4, seed=17), rand(4, seed=18)],
                   device)


# ---- comparisons ----------------------------------------------------------------------
COMPARISONS = [
    ("eq", lambda a, b: a == b, np.equal),
    ("ne", lambda a, b: a != b, np.not_equal),
    ("lt", lambda a, b: a < b, np.less),
    ("le", lambda a, b: a <= b, np.less_equal),
    ("gt", lambda a, b: a > b, np.greater),
    ("ge", lambda a, b: a >= b, np.greater_equal),
]


@pytest.mark.parametrize("name,fn,ref", COMPARISONS, ids=[c[0] for c in COMPARISONS])
def test_comparisons(device, name, fn, ref):
    a = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    b = np.array([2.0, 2.0, 2.0])
    ta = on(device, a, requires_grad=True)
    for out, exp in [(fn(ta, on(device, b)), ref(a, b)),  # tensor-tensor, broadcast
                     (fn(ta, 2.0), ref(a, 2.0)),          # tensor-scalar
                     (fn(2.0, ta), ref(2.0, a))]:         # scalar-tensor (reflected)
        check(out, exp, dtype=np.bool_)
        assert not out.requires_grad and out.grad_fn is None


def test_comparison_device_mismatch_raises():
    with pytest.raises(RuntimeError, match="cpu.*emu|emu.*cpu"):
        dlcore.ones(2) < dlcore.ones(2, device="emu")  # noqa: B015 - the comparison must raise


@pytest.mark.parametrize("op", [lambda a: a * 65536.0, lambda a: a + 10000.0, lambda a: a / 0.1,
                                lambda a: 0.3 - a, lambda a: 7.0 / a, lambda a: a ** 2.0,
                                lambda a: a - 1e-4, lambda a: 3 * a])
def test_half_tensor_scalar_ops_compute_in_float32_and_round_once(op: Callable) -> None:
    """PyTorch computes float16 tensor-scalar ops in float32 and rounds once: the scalar is
    never rounded to float16 first (65536 has no float16: it would turn 0.5 * 65536 into
    inf; 1e-4 would lose digits). Regression: the scalar was cast to the tensor's dtype."""
    values = np.array([0.5, 3.0, -2.0, 1.0009765625, 60000.0], dtype=np.float16)
    with np.errstate(over="ignore"):
        want = op(values.astype(np.float32)).astype(np.float16)
        got = op(dlcore.tensor(values)).numpy()
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, want)


def test_comparison_with_a_uint16_numpy_array_compares_numbers() -> None:
    """A plain uint16 NumPy operand is numbers, not cuda bfloat16 storage: it compares as
    NumPy does (it was refused with the cuda-bfloat16 error on any device)."""
    x = dlcore.tensor([1.0, 5.0, -1.0])
    w = np.array([2, 3, 0], dtype=np.uint16)
    np.testing.assert_array_equal((x < w).numpy(), x.numpy() < w)
    np.testing.assert_array_equal(dlcore.eq(x, w).numpy(), x.numpy() == w)


@pytest.mark.parametrize("dtype,n", [(dlcore.bfloat16, 257), (dlcore.float16, 2049)])
def test_half_divided_by_an_integer_tensor_reads_the_integers_in_float32(dtype, n) -> None:
    """PyTorch's true division of a 16-bit float tensor by an integer tensor computes in
    float32 and rounds once: 1/257 rounded to bfloat16, not 1/256 (the integer rounded to
    bfloat16 first); the gradient alike, and the quotient keeps the 16-bit dtype."""
    import ml_dtypes
    np_half = ml_dtypes.bfloat16 if dtype == dlcore.bfloat16 else np.float16
    a = dlcore.ones(2, dtype=dtype, requires_grad=True)
    b = dlcore.tensor([n, 3])
    y = a / b
    assert y.dtype == dtype
    want = (np.float32(1) / np.array([n, 3], np.float32)).astype(np_half)
    np.testing.assert_array_equal(y.numpy(), want)
    y.sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), want)
    np.testing.assert_array_equal((b / a.detach()).numpy(),
                                  np.array([n, 3], np.float32).astype(np_half))


def test_pow_gradients_at_a_zero_base_follow_pytorch() -> None:
    """d/db 0^b is 0 where b >= 0 (0^b is flat there) and -inf where b < 0 (0^b = inf,
    log 0 = -inf); d/da a^0 is 0 even at a = 0 (b * a^(b-1) would be 0 * inf). PyTorch
    2.13: a = 0, b = [-1, 0, 1, 2] gives a.grad [-inf, 0, 1, 0], b.grad [-inf, 0, 0, 0]; the
    scalar base 0 alike, and a negative scalar base gives nan (log of a negative)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the forward's 0 ** -1
        a = dlcore.tensor([0.0, 0.0, 0.0, 0.0], requires_grad=True)
        b = dlcore.tensor([-1.0, 0.0, 1.0, 2.0], requires_grad=True)
        (a ** b).sum().backward()
        x = dlcore.tensor([-1.0, 0.0, 1.0, 2.0], requires_grad=True)
        (0.0 ** x).sum().backward()
        z = dlcore.tensor([-1.0, 0.0, 1.0, 2.0], requires_grad=True)
        ((-2.0) ** z).sum().backward()
    assert a.grad.tolist() == [-math.inf, 0.0, 1.0, 0.0]
    assert b.grad.tolist() == [-math.inf, 0.0, 0.0, 0.0]
    assert x.grad.tolist() == [-math.inf, 0.0, 0.0, 0.0]
    assert np.isnan(z.grad.numpy()).all()
    # away from zero: b a^(b-1) and a^b log a
    a2 = dlcore.tensor([2.0, 3.0], requires_grad=True)
    b2 = dlcore.tensor([0.0, 2.0], requires_grad=True)
    (a2 ** b2).sum().backward()
    np.testing.assert_allclose(a2.grad.numpy(), [0.0, 6.0])
    np.testing.assert_allclose(b2.grad.numpy(), [math.log(2.0), 9 * math.log(3.0)], rtol=1e-6)


def test_leaky_relu_rejects_integer_tensors() -> None:
    """PyTorch: leaky_relu is not implemented for integer tensors (an int64 input with
    slope 0.5 silently truncated the slope to 0: [-3, 0, 2] -> [0, 0, 2])."""
    from dlcore.nn import functional as F
    with pytest.raises(NotImplementedError, match="leaky_relu.*int64"):
        F.leaky_relu(dlcore.tensor([-3, 0, 2]), 0.5)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("slope", [0.01, 0.1, 0.2, 1 / 3, -0.5, 1.0, 3.0, 0.0])
def test_leaky_relu_slope_bits_are_exact(dtype: type, slope: float) -> None:
    """The CPU path builds the per-element scale from the bits of 1 and of the slope; value
    and gradient equal np.where's exactly, for slopes whose sums with 1 - slope would round
    (0.1, 1/3), negative and above-one slopes, and for NaN, +-0 and +-inf inputs."""
    from dlcore.nn import functional as F
    x = np.concatenate([np.random.default_rng(1).standard_normal(997),
                        [0.0, -0.0, np.inf, -np.inf, np.nan]]).astype(dtype)
    s = dtype(slope)
    t = dlcore.tensor(x, requires_grad=True)
    y = F.leaky_relu(t, slope)
    with np.errstate(invalid="ignore"):  # -inf * 0 is NaN, in dlcore as in the reference
        np.testing.assert_array_equal(y.numpy(), x * np.where(x > 0, dtype(1), s))
    y.backward(dlcore.ones(*x.shape, dtype=t.dtype))
    np.testing.assert_array_equal(t.grad.numpy(), np.where(x > 0, dtype(1), s))


@pytest.mark.parametrize("n", [7, 1000])  # NumPy's SIMD body and its scalar tail
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_relu_values_and_zero_signs_are_pytorchs(dtype: type, n: int) -> None:
    """relu(x) is x where x >= 0 or NaN, else +0.0; -0.0 stays -0.0 (PyTorch's clamp_min
    keeps it); the gradient is 1 above 0, else 0. Compared bit for bit with that rule, but
    for float16 -0.0, which NumPy's half-precision maximum turns into +0.0."""
    x = np.resize(np.array([-2.0, -0.0, 0.0, 1.5, np.nan, np.inf, -np.inf, -1e-30, 3.0]),
                  n).astype(dtype)
    want = np.where((x >= 0) | np.isnan(x), x, dtype(0))
    if dtype == np.float16:
        want = np.where(want == 0, dtype(0), want)
    t = dlcore.tensor(x, requires_grad=True)
    y = dlcore.relu(t)
    np.testing.assert_array_equal(y.numpy().view(f"u{x.itemsize}"), want.view(f"u{x.itemsize}"))
    y.backward(dlcore.ones(n, dtype=t.dtype))
    np.testing.assert_array_equal(t.grad.numpy(), (x > 0).astype(dtype))


def test_relu_of_integers_keeps_the_dtype() -> None:
    got = dlcore.relu(dlcore.tensor([-3, 0, 2]))
    assert got.dtype == dlcore.int64
    np.testing.assert_array_equal(got.numpy(), [0, 0, 2])
