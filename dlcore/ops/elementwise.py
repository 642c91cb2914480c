"""Elementwise operations: arithmetic, math functions, activations, comparisons.

Binary ops broadcast like NumPy and reduce gradients back to each operand's shape.
Tensor-scalar forms are separate Functions (no scalar is ever turned into a tensor), which
keeps the common ``x * 2 + 1`` lean and the scalar's dtype weak.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..autograd import Function, device_work
from ..dtypes import BF16_WORDS, get_default_dtype, is_floating
from ..tensor import Tensor
from ._util import (as_tensor_like, bfloat16_unsupported, cast, is_scalar, narrow_to,
                    opmath_scalar, promote_pair, reject_bfloat16_words,
                    scalar_operand, sum_to)


# ---- binary, tensor-tensor -----------------------------------------------------------
class Add(Function):
    def forward(self, a: Any, b: Any) -> Any:
        self.shapes = (a.shape, b.shape)
        return a + b

    def backward(self, g: Tensor) -> tuple:
        sa, sb = self.shapes
        na, nb = self.needs_input_grad
        return (sum_to(g, sa) if na else None, sum_to(g, sb) if nb else None)


class Sub(Function):
    def forward(self, a: Any, b: Any) -> Any:
        self.shapes = (a.shape, b.shape)
        return a - b

    def backward(self, g: Tensor) -> tuple:
        sa, sb = self.shapes
        na, nb = self.needs_input_grad
        return (sum_to(g, sa) if na else None, sum_to(-g, sb) if nb else None)


class Mul(Function):
    save_inputs = True

    def forward(self, a: Any, b: Any) -> Any:
        return a * b

    def backward(self, g: Tensor) -> tuple:
        a, b = self.saved_tensors
        na, nb = self.needs_input_grad
        return (sum_to(g * b, a.shape) if na else None, sum_to(g * a, b.shape) if nb else None)


class Div(Function):
    save_inputs = True

    def forward(self, a: Any, b: Any) -> Any:
        return a / b

    def backward(self, g: Tensor) -> tuple:
        a, b = self.saved_tensors
        na, nb = self.needs_input_grad
        ga = sum_to(g / b, a.shape) if na else None
        gb = sum_to(-g * a / (b * b), b.shape) if nb else None
        return ga, gb


class Pow(Function):
    save_inputs = True

    def forward(self, a: Any, b: Any) -> Any:
        return a ** b

    def backward(self, g: Tensor) -> tuple:
        a, b = self.saved_tensors
        na, nb = self.needs_input_grad
        ga = gb = None
        # NOTE: the masked-off lanes below hold 0 * inf (their where() drops them); NumPy's
        # warnings about them would name no user operation
        with np.errstate(invalid="ignore", divide="ignore"):
            if na:  # d/da a^b = b a^(b-1), 0 where b == 0 (PyTorch: a^0 is constant)
                ga = sum_to(where(b == 0, 0.0, g * b * a ** (b - 1)), a.shape)
            if nb:
                # d/db a^b = a^b log a; defined as 0 where a == 0 and b >= 0 (PyTorch's
                # convention: 0^b is constant 0 or 1 there); a == 0, b < 0 gives -inf
                zero_flat = (a == 0) & (b >= 0)
                safe = where(zero_flat, 1.0, a)
                gb = sum_to(where(zero_flat, 0.0, g * a ** b * safe.log()), b.shape)
        return ga, gb


class Maximum(Function):
    save_inputs = True
    pick = staticmethod(np.greater)

    def forward(self, a: Any, b: Any) -> Any:
        xp = self.device.xp
        return xp.maximum(a, b) if type(self) is Maximum else xp.minimum(a, b)

    def backward(self, g: Tensor) -> tuple:
        a, b = self.saved_tensors
        xp = self.device.xp
        first = self.pick(a._data, b._data)
        # ties split the gradient evenly, as PyTorch does
        wa = xp.where(first, 1.0, xp.where(a._data == b._data, 0.5, 0.0)).astype(g.dtype)
        wa_t = Tensor._make(wa, self.device)
        na, nb = self.needs_input_grad
        return (sum_to(g * wa_t, a.shape) if na else None,
                sum_to(g * (1 - wa_t), b.shape) if nb else None)


class Minimum(Maximum):
    pick = staticmethod(np.less)


# ---- binary, tensor-scalar -----------------------------------------------------------
class AddScalar(Function):
    def forward(self, a: Any, c: Any) -> Any:
        return narrow_to(a + c, a.dtype)

    def backward(self, g: Tensor) -> tuple:
        return (g,)


class MulScalar(Function):
    def forward(self, a: Any, c: Any) -> Any:
        self.c = c
        return narrow_to(a * c, a.dtype)

    def backward(self, g: Tensor) -> tuple:
        return (g * self.c,)


class DivScalar(Function):
    def forward(self, a: Any, c: Any) -> Any:
        self.c = c
        return narrow_to(a / c, a.dtype)

    def backward(self, g: Tensor) -> tuple:
        return (g / self.c,)


class RSubScalar(Function):
    def forward(self, a: Any, c: Any) -> Any:
        return narrow_to(c - a, a.dtype)

    def backward(self, g: Tensor) -> tuple:
        return (-g,)


class RDivScalar(Function):
    save_inputs = True

    def forward(self, a: Any, c: Any) -> Any:
        self.c = c
        return narrow_to(c / a, a.dtype)

    def backward(self, g: Tensor) -> tuple:
        (a,) = self.saved_tensors
        return (-g * self.c / (a * a),)


class PowScalar(Function):
    save_inputs = True

    def forward(self, a: Any, c: Any) -> Any:
        self.c = c
        return narrow_to(a ** c, a.dtype)

    def backward(self, g: Tensor) -> tuple:
        (a,) = self.saved_tensors
        c = self.c
        if c == 0:
            return (g * 0,)
        if c == 2:
            return (g * a * 2,)
        return (g * c * a ** (c - 1),)


class RPowScalar(Function):
    save_output = True

    def forward(self, a: Any, c: Any) -> Any:
        # d/da c^a = c^a log c: nan for c < 0; for c == 0, 0 where a >= 0 (0^a is flat)
        # and -inf where a < 0, as PyTorch
        self.logc = math.log(c) if c > 0 else (-math.inf if c == 0 else float("nan"))
        self.flat = a >= 0 if c == 0 else None
        return narrow_to(c ** a, a.dtype)

    def backward(self, g: Tensor) -> tuple:
        if self.flat is None:
            return (g * self.output() * self.logc,)
        with np.errstate(invalid="ignore"):  # 0 * -inf in the lanes where() drops
            return (where(Tensor._make(self.flat, self.device), 0.0,
                          g * self.output() * self.logc),)


def _binary(a: Any, b: Any, tensor_fn: type[Function], scalar_fn: type[Function] | None,
            rscalar_fn: type[Function] | None = None) -> Tensor:
    if isinstance(a, Tensor):
        if isinstance(b, Tensor):
            return _apply_broadcast(tensor_fn, *promote_pair(a, b, tensor_fn.__name__.lower()))
        tb = type(b)
        if scalar_fn is not None and (tb is float or tb is int) and is_floating(a._data.dtype):
            return scalar_fn.apply(a, c=opmath_scalar(a._data.dtype, b))  # fast path: floats
        if scalar_fn is not None and is_scalar(b):
            t, c = scalar_operand(a, b, tensor_fn.__name__.lower())
            return scalar_fn.apply(t, c=c)
        return _apply_broadcast(tensor_fn, *promote_pair(a, as_tensor_like(b, a),
                                                         tensor_fn.__name__.lower()))
    # a is not a tensor, b is
    if rscalar_fn is not None and is_scalar(a):
        t, c = scalar_operand(b, a, tensor_fn.__name__.lower())
        return rscalar_fn.apply(t, c=c)
    return _apply_broadcast(tensor_fn, *promote_pair(as_tensor_like(a, b), b,
                                                     tensor_fn.__name__.lower()))


def _apply_broadcast(fn: type[Function], a: Tensor, b: Tensor) -> Tensor:
    """``fn.apply(a, b)``; a failure to broadcast becomes an error naming the op and both
    shapes (the array module's own message names neither the op nor its caller)."""
    try:
        return fn.apply(a, b)
    except ValueError:
        try:
            np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise RuntimeError(f"{fn.__name__.lower()}: shapes {tuple(a.shape)} and "
                               f"{tuple(b.shape)} cannot be broadcast together") from None
        raise


def add(input: Any, other: Any, alpha: Any = 1) -> Tensor:
    """``input + alpha * other``.

    >>> dlcore.add(dlcore.tensor([1.0, 2.0]), 1).tolist()
    [2.0, 3.0]
    """
    if alpha != 1:
        other = other * alpha
    if not isinstance(input, Tensor):
        input, other = other, input  # addition commutes; keeps the scalar fast path
    return _binary(input, other, Add, AddScalar)


def sub(input: Any, other: Any, alpha: Any = 1) -> Tensor:
    if alpha != 1:
        other = other * alpha
    if isinstance(input, Tensor) and is_scalar(other):
        return add(input, -other)
    return _binary(input, other, Sub, None, RSubScalar)


def mul(input: Any, other: Any) -> Tensor:
    if not isinstance(input, Tensor):
        input, other = other, input
    return _binary(input, other, Mul, MulScalar)


def div(input: Any, other: Any) -> Tensor:
    """True division; integer inputs give the default float dtype (PyTorch's rule)."""
    if isinstance(input, Tensor) and input._data.dtype.kind in "biu" and not (
            isinstance(other, Tensor) and is_floating(other._data.dtype)):
        input = cast(input, get_default_dtype())
    if not isinstance(input, Tensor) and isinstance(other, Tensor) and \
            other._data.dtype.kind in "biu":
        other = cast(other, get_default_dtype())
    if isinstance(input, Tensor) and isinstance(other, Tensor) and \
            input._data.dtype != other._data.dtype:
        half = _half_over_integer(input._data.dtype, other._data.dtype)
        if half is not None:
            # PyTorch's true division reads an integer operand into float32, not into the
            # 16-bit result type (ones(1, bfloat16) / tensor([257]) is 1/257 rounded once,
            # not 1/256): divide in float32 and round the quotient once
            f32 = np.dtype(np.float32)
            return cast(_binary(cast(input, f32), cast(other, f32), Div, None), half)
    return _binary(input, other, Div, DivScalar, RDivScalar)


def _half_over_integer(da: np.dtype, db: np.dtype) -> np.dtype | None:
    """The float16/bfloat16 dtype of a division mixing it with an integer or bool tensor."""
    for half, other in ((da, db), (db, da)):
        if half.itemsize == 2 and is_floating(half) and half != BF16_WORDS \
                and other.kind in "biu":
            return half
    return None


def pow(input: Any, exponent: Any) -> Tensor:
    return _binary(input, exponent, Pow, PowScalar, RPowScalar)


def maximum(input: Tensor, other: Tensor) -> Tensor:
    return _binary(input, other, Maximum, None)


def minimum(input: Tensor, other: Tensor) -> Tensor:
    return _binary(input, other, Minimum, None)


# ---- unary ---------------------------------------------------------------------------
class Neg(Function):
    def forward(self, a: Any) -> Any:
        return -a

    def backward(self, g: Tensor) -> tuple:
        return (-g,)


class Exp(Function):
    save_output = True

    def forward(self, a: Any) -> Any:
        return self.device.xp.exp(a)

    def backward(self, g: Tensor) -> tuple:
        return (g * self.output(),)


class Log(Function):
    save_inputs = True

    def forward(self, a: Any) -> Any:
        return self.device.xp.log(a)

    def backward(self, g: Tensor) -> tuple:
        return (g / self.saved_tensors[0],)


class Log1p(Function):
    save_inputs = True

    def forward(self, a: Any) -> Any:
        return self.device.xp.log1p(a)

    def backward(self, g: Tensor) -> tuple:
        return (g / (self.saved_tensors[0] + 1),)


class Sqrt(Function):
    save_output = True

    def forward(self, a: Any) -> Any:
        return self.device.xp.sqrt(a)

    def backward(self, g: Tensor) -> tuple:
        return (g / (self.output() * 2),)


class Rsqrt(Function):
    save_inputs = True

    def forward(self, a: Any) -> Any:
        xp = self.device.xp
        return (1 / xp.sqrt(a)).astype(a.dtype, copy=False)

    def backward(self, g: Tensor) -> tuple:
        (a,) = self.saved_tensors
        return (g * -0.5 * a ** -1.5,)


class Abs(Function):
    save_inputs = True

    def forward(self, a: Any) -> Any:
        return self.device.xp.abs(a)

    def backward(self, g: Tensor) -> tuple:
        return (g * self.saved_tensors[0].sign(),)


class Sin(Function):
    save_inputs = True

    def forward(self, a: Any) -> Any:
        return self.device.xp.sin(a)

    def backward(self, g: Tensor) -> tuple:
        return (g * self.saved_tensors[0].cos(),)


class Cos(Function):
    save_inputs = True

    def forward(self, a: Any) -> Any:
        return self.device.xp.cos(a)

    def backward(self, g: Tensor) -> tuple:
        return (-g * self.saved_tensors[0].sin(),)


class Tanh(Function):
    save_output = True

    def forward(self, a: Any) -> Any:
        return self.device.xp.tanh(a)

    def backward(self, g: Tensor) -> tuple:
        return (TanhBackward.apply(g, self.output()),)


class TanhBackward(Function):
    """``g * (1 - y^2)`` as one node (one op instead of three in every tanh backward);
    differentiable itself, for second derivatives."""

    save_inputs = True

    def forward(self, g: Any, y: Any) -> Any:
        return g * (1 - y * y)

    def backward(self, gg: Tensor) -> tuple:
        g, y = self.saved_tensors
        return (gg * (1 - y * y), gg * g * y * -2)


class Sigmoid(Function):
    save_output = True

    def forward(self, a: Any) -> Any:
        xp = self.device.xp
        # 0.5 * (1 + tanh(x/2)) is exact sigmoid and never overflows
        return (xp.tanh(a * a.dtype.type(0.5)) + 1) * a.dtype.type(0.5)

    def backward(self, g: Tensor) -> tuple:
        return (SigmoidBackward.apply(g, self.output()),)


class SigmoidBackward(Function):
    """``g * y * (1 - y)`` as one node; differentiable itself."""

    save_inputs = True

    def forward(self, g: Any, y: Any) -> Any:
        return g * y * (1 - y)

    def backward(self, gg: Tensor) -> tuple:
        g, y = self.saved_tensors
        return (gg * y * (1 - y), gg * g * (1 - 2 * y))


class Relu(Function):
    def forward(self, a: Any) -> Any:
        self.mask = a > 0
        if a.dtype.kind not in "fiu":
            return a * self.mask
        # NOTE: maximum(0, a) reads one array where a * mask reads two of different dtypes
        # (32x16x32x32 float32: 220 against 450 us). In this order NumPy gives PyTorch's
        # values bit for bit: NaN stays NaN, -0.0 stays -0.0, negatives give +0.0 (a * mask
        # gave -0.0 for them)
        return self.device.xp.maximum(a.dtype.type(0), a)

    def backward(self, g: Tensor) -> tuple:
        return (g * Tensor._make(self.mask, self.device),)


class LeakyRelu(Function):
    def forward(self, a: Any, slope: float) -> Any:
        if not is_floating(a.dtype):  # PyTorch: not implemented for integer tensors
            raise NotImplementedError(f"leaky_relu: not implemented for {a.dtype} tensors "
                                      "(floating-point inputs only, as PyTorch)")
        xp = self.device.xp
        positive = a > 0
        if xp is np and a.dtype.kind == "f":
            # NOTE: the slope's bits, with those that differ from 1.0's flipped where the
            # mask is set: mask * (bits(slope) ^ bits(1)) ^ bits(slope) in unsigned integers
            # of the float's width, exactly slope or 1, in two branch-free passes. NumPy's
            # where() branches per element (256x128 float32, random signs: 220 us) and a
            # two-entry table's take() converts the mask to intp indices first (64 us
            # alone, 270 us inside the GAN step); this measured 24 us.
            bits = np.dtype(f"u{a.dtype.itemsize}")
            one, low = np.array([1, slope], a.dtype).view(bits)
            scale = np.multiply(positive, one ^ low, dtype=bits)
            scale ^= low
            self.scale = scale.view(a.dtype)
        else:
            self.scale = xp.where(positive, a.dtype.type(1), a.dtype.type(slope))
        return a * self.scale

    def backward(self, g: Tensor) -> tuple:
        return (g * Tensor._make(self.scale, self.device),)


class Sign(Function):
    def forward(self, a: Any) -> Any:
        return self.device.xp.sign(a)

    def backward(self, g: Tensor) -> tuple:
        return (g * 0,)


# terms of the erf series / depth of the erfc continued fraction per dtype: enough for
# full precision (|rel. error| < 1e-15 for float64, a few ulp for float32; see tests)
_ERF_TERMS = {8: (30, 40), 4: (20, 24), 2: (20, 24)}
_ERF_SPLIT = 2.0  # series below, continued fraction above


def _erf(xp: Any, x: Any) -> Any:
    """erf to the precision of ``x``'s dtype (neither NumPy nor CuPy's main namespace has
    erf, and SciPy is not a dependency).

    |x| < 2: erf(x) = 2/sqrt(pi) e^(-x^2) sum_n (2x^2)^n x / (1*3*...*(2n+1)), a series of
    positive terms (no cancellation). |x| >= 2: erf(x) = 1 - erfc(x) with
    erfc(x) = e^(-x^2) / (sqrt(pi) (x + (1/2)/(x + 1/(x + (3/2)/(x + ...))))).
    NOTE: replaces an Abramowitz-Stegun fit whose 1.5e-7 absolute error was visible in
    float64 and, relatively, near 0 in float32.
    """
    n_terms, depth = _ERF_TERMS.get(x.dtype.itemsize, (30, 40))
    one = x.dtype.type(1)
    a = xp.abs(x)
    xs = xp.minimum(a, x.dtype.type(_ERF_SPLIT))
    x2 = xs * xs
    term = xs
    series = xs
    for n in range(1, n_terms):
        term = term * (x2 * x.dtype.type(2 / (2 * n + 1)))
        series = series + term
    series = series * xp.exp(-x2) * x.dtype.type(2 / math.sqrt(math.pi))
    xc = xp.maximum(a, x.dtype.type(_ERF_SPLIT))
    frac = xc
    for k in range(depth, 0, -1):
        frac = xc + x.dtype.type(k / 2) / frac
    erfc = xp.exp(-xc * xc) / (frac * x.dtype.type(math.sqrt(math.pi)))
    return xp.sign(x) * xp.where(a < _ERF_SPLIT, series, one - erfc)


class Erf(Function):
    """erf as a node, so that gelu's backward (which uses the normal cdf) is itself
    differentiable: d/dx erf(x) = 2/sqrt(pi) exp(-x^2)."""

    save_inputs = True

    def forward(self, a: Any) -> Any:
        return _erf(self.device.xp, a)

    def backward(self, g: Tensor) -> tuple:
        (x,) = self.saved_tensors
        return (g * (x * x * -1.0).exp() * (2 / math.sqrt(math.pi)),)


class Gelu(Function):
    save_inputs = True

    def forward(self, a: Any, approximate: str) -> Any:
        xp = self.device.xp
        self.approximate = approximate
        if approximate == "tanh":
            k = math.sqrt(2.0 / math.pi)
            out = 0.5 * a * (1 + xp.tanh(k * (a + 0.044715 * a ** 3)))
        else:
            out = 0.5 * a * (1 + _erf(xp, a / math.sqrt(2.0)))
        return out.astype(a.dtype, copy=False)

    def backward(self, g: Tensor) -> tuple:
        (x,) = self.saved_tensors
        if self.approximate == "tanh":
            k = math.sqrt(2.0 / math.pi)
            inner = k * (x + 0.044715 * x ** 3)
            th = inner.tanh()
            d = 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * k * (1 + 3 * 0.044715 * x * x)
        else:
            # NOTE: through the Erf node (not a raw array), or second derivatives miss
            # the cdf's own derivative
            cdf = 0.5 * (1 + Erf.apply(x * (1 / math.sqrt(2.0))))
            pdf = (x * x * -0.5).exp() * (1 / math.sqrt(2 * math.pi))
            d = cdf + x * pdf
        return (g * d.to(g.dtype),)


class Softplus(Function):
    save_inputs = True

    def forward(self, a: Any, beta: float, threshold: float) -> Any:
        xp = self.device.xp
        self.beta, self.threshold = beta, threshold
        z = a * beta
        soft = xp.logaddexp(0, z) / beta
        return xp.where(z > threshold, a, soft).astype(a.dtype, copy=False)

    def backward(self, g: Tensor) -> tuple:
        (x,) = self.saved_tensors
        z = x * self.beta
        return (g * where(z > self.threshold, 1.0, z.sigmoid()),)


class Clamp(Function):
    save_inputs = True

    def forward(self, a: Any, lo: Any, hi: Any) -> Any:
        self.lo, self.hi = lo, hi
        # NOTE: clip with Python bounds promotes ml_dtypes' bfloat16 to float32
        return self.device.xp.clip(a, lo, hi).astype(a.dtype, copy=False)

    def backward(self, g: Tensor) -> tuple:
        x = self.saved_tensors[0]._data
        mask = self.device.xp.ones(x.shape, dtype=bool)
        if self.lo is not None:
            mask &= x >= self.lo
        if self.hi is not None:
            mask &= x <= self.hi
        return (g * Tensor._make(mask, self.device),)


class Where(Function):
    def forward(self, cond: Any, a: Any, b: Any) -> Any:
        self.cond = cond
        self.shapes = (a.shape, b.shape)
        return self.device.xp.where(cond, a, b)

    def backward(self, g: Tensor) -> tuple:
        c = Tensor._make(self.cond, self.device)
        zero = g * 0
        _, na, nb = self.needs_input_grad
        sa, sb = self.shapes
        return (None, sum_to(where(c, g, zero), sa) if na else None,
                sum_to(where(c, zero, g), sb) if nb else None)


def where(condition: Tensor, input: Any, other: Any) -> Tensor:
    """Elements of ``input`` where ``condition`` holds, else of ``other``."""
    like = condition
    for v in (input, other):
        if isinstance(v, Tensor):
            like = v
    x = input if isinstance(input, Tensor) else as_tensor_like(_scalar_arr(input, like), like)
    y = other if isinstance(other, Tensor) else as_tensor_like(_scalar_arr(other, like), like)
    x, y = promote_pair(x, y)
    cond = condition if isinstance(condition, Tensor) else as_tensor_like(condition, like)
    if cond._data.dtype != np.bool_:
        cond = Tensor._make(cond._data.astype(bool), cond.device)
    return Where.apply(cond, x, y)


def _scalar_arr(v: Any, like: Tensor) -> Any:
    if is_scalar(v):
        dt = like._data.dtype if is_floating(like._data.dtype) or not isinstance(v, float) \
            else np.dtype(np.float32)
        return np.asarray(v, dtype=dt)
    return v


def _unary(cls: type[Function]) -> Any:
    name = cls.__name__.lower()

    def op(input: Tensor) -> Tensor:
        if input._data.dtype == BF16_WORDS:
            raise bfloat16_unsupported(name)
        return cls.apply(input)

    op.__name__ = name
    op.__doc__ = f"Elementwise {name}, differentiable."
    return op


neg = _unary(Neg)
exp = _unary(Exp)
log = _unary(Log)
log1p = _unary(Log1p)
sqrt = _unary(Sqrt)
rsqrt = _unary(Rsqrt)
abs = _unary(Abs)
sign = _unary(Sign)
sin = _unary(Sin)
cos = _unary(Cos)
tanh = _unary(Tanh)
sigmoid = _unary(Sigmoid)
relu = _unary(Relu)


def _float_input(x: Tensor, op: str) -> Tensor:
    if not is_floating(x._data.dtype):
        raise TypeError(f"{op}: expected a floating point tensor, got dtype {x.dtype}")
    return x


def leaky_relu(input: Tensor, negative_slope: float = 0.01) -> Tensor:
    return LeakyRelu.apply(input, slope=negative_slope)


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return Gelu.apply(_float_input(input, "gelu"), approximate=approximate)


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    return Softplus.apply(_float_input(input, "softplus"), beta=beta, threshold=threshold)


def clamp(input: Tensor, min: Any = None, max: Any = None) -> Tensor:
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    if input._data.dtype == BF16_WORDS:
        raise bfloat16_unsupported("clamp")
    if isinstance(min, Tensor) or isinstance(max, Tensor):
        out = input
        if min is not None:
            out = maximum(out, min)
        if max is not None:
            out = minimum(out, max)
        return out
    return Clamp.apply(input, lo=min, hi=max)


# ---- comparisons (no gradient) -------------------------------------------------------
def _compare(a: Any, b: Any, ufunc: str) -> Tensor:
    t = a if isinstance(a, Tensor) else b
    da = a._data if isinstance(a, Tensor) else a
    db = b._data if isinstance(b, Tensor) else b
    if isinstance(a, Tensor) and isinstance(b, Tensor) and a.device is not b.device:
        raise RuntimeError(f"{ufunc}: expected both tensors on the same device, got "
                           f"{a.device} and {b.device}")
    # a cuda bfloat16 tensor's words compare as integers (wrong for negatives); a plain
    # uint16 array operand is numbers and compares as such
    reject_bfloat16_words(ufunc, a, b)
    xp = t.device.xp
    return Tensor._make(device_work(t.device, lambda: getattr(xp, ufunc)(da, db)), t.device)


def eq(a: Any, b: Any) -> Tensor:
    return _compare(a, b, "equal")


def ne(a: Any, b: Any) -> Tensor:
    return _compare(a, b, "not_equal")


def lt(a: Any, b: Any) -> Tensor:
    return _compare(a, b, "less")


def le(a: Any, b: Any) -> Tensor:
    return _compare(a, b, "less_equal")


def gt(a: Any, b: Any) -> Tensor:
    return _compare(a, b, "greater")


def ge(a: Any, b: Any) -> Tensor:
    return _compare(a, b, "greater_equal")


def logical_not(a: Tensor) -> Tensor:
    return Tensor._make(device_work(a.device, lambda: a.device.xp.logical_not(a._data)),
                        a.device)


def logical_and(a: Tensor, b: Tensor) -> Tensor:
    return _compare(a, b, "logical_and")


def logical_or(a: Tensor, b: Tensor) -> Tensor:
    return _compare(a, b, "logical_or")


def isnan(a: Tensor) -> Tensor:
    return Tensor._make(device_work(a.device, lambda: a.device.xp.isnan(a._data)), a.device)


def isfinite(a: Tensor) -> Tensor:
    return Tensor._make(device_work(a.device, lambda: a.device.xp.isfinite(a._data)),
                        a.device)
