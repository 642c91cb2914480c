"""Privacy accounting for DP-SGD: the Rényi DP (RDP) of the subsampled Gaussian mechanism and
its conversion to (epsilon, delta)-DP.

One DP-SGD step releases ``sum_i clip(g_i) + N(0, (sigma C)^2 I)`` over a batch in which
every sample took part independently with probability ``q`` (Poisson sampling): the
*sampled Gaussian mechanism* (SGM). Mironov, Talwar and Zhang 2019, "Rényi Differential
Privacy of the Sampled Gaussian Mechanism" (arXiv:1908.10530), Section 3.3, give its RDP at
order ``alpha`` as ``log(A_alpha) / (alpha - 1)`` with

* integer alpha: ``A_alpha = sum_{k=0}^{alpha} C(alpha, k) (1-q)^(alpha-k) q^k
  exp((k^2 - k) / (2 sigma^2))``, a finite sum;
* fractional alpha: ``A_alpha = sum_{i>=0} C(alpha, i) [ (1-q)^(alpha-i) q^i
  exp((i^2 - i) / (2 sigma^2)) erfc((i - z0) / (sqrt(2) sigma)) / 2 + (1-q)^i q^(alpha-i)
  exp((j^2 - j) / (2 sigma^2)) erfc((z0 - j) / (sqrt(2) sigma)) / 2 ]`` with ``j = alpha - i``
  and ``z0 = sigma^2 log(1/q - 1) + 1/2``, summed until the terms fall below e^-30
  (the generalised binomial coefficient changes sign past ``i > alpha``, so the two partial
  sums are kept in log space with their signs).

RDP composes by addition, so ``steps`` steps cost ``steps`` times one step's RDP at each order.
The orders are Opacus's (:data:`DEFAULT_ORDERS`), and epsilon is the minimum over them.

Conversion to (epsilon, delta): :func:`epsilon_from_rdp` uses, by default, the one Opacus (since
1.0) and TensorFlow Privacy's ``dp_accounting`` use, Balle et al. 2020, "Hypothesis Testing
Interpretations and Renyi Differential Privacy", Theorem 21 (arXiv:1905.09982):
``eps = rdp - (log(delta) + log(alpha)) / (alpha - 1) + log((alpha - 1) / alpha)``, which is
always below the classic ``eps = rdp - log(delta) / (alpha - 1)`` (Mironov 2017, Proposition
3), by ``log(alpha)/(alpha-1) - log(1 - 1/alpha)``. The classic one is kept (``conversion=
"classic"``) because the published tables (TensorFlow Privacy's MNIST tutorial, 2019) used it.

Only the standard library's ``math`` (``lgamma``, ``erfc``) and NumPy: SciPy is not a
dependency of dlcore.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)]
                                          + [float(a) for a in range(12, 64)])
CONVERSIONS = ("balle2020", "classic")


def _log_add(a: float, b: float) -> float:
    """log(e^a + e^b)."""
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def _log_sub(a: float, b: float) -> float:
    """log(e^a - e^b) for a >= b (-inf when they are equal)."""
    if b == -math.inf:
        return a
    if b >= a:
        return -math.inf
    return a + math.log(-math.expm1(b - a))


def _log_erfc(x: float) -> float:
    """log(erfc(x)), accurate where erfc underflows (x > 26): there the asymptotic series
    ``erfc(x) = exp(-x^2) / (x sqrt(pi)) (1 - 1/(2x^2) + 3/(4x^4) - 15/(8x^6))``, whose
    truncation error at x = 26 is below 1e-11 relative."""
    if x < 25.0:
        return math.log(math.erfc(x))
    r = 1.0 / (2.0 * x * x)
    series = 1.0 - r + 3.0 * r * r - 15.0 * r ** 3
    return -x * x - math.log(x) - 0.5 * math.log(math.pi) + math.log(series)


def _log_binomial(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _log_a_integer(q: float, sigma: float, alpha: int) -> float:
    log_a = -math.inf
    for k in range(alpha + 1):
        term = (_log_binomial(alpha, k) + k * math.log(q) + (alpha - k) * math.log1p(-q)
                + (k * k - k) / (2 * sigma ** 2))
        log_a = _log_add(log_a, term)
    return log_a


def _log_a_fractional(q: float, sigma: float, alpha: float) -> float:
    z0 = sigma ** 2 * math.log(1 / q - 1) + 0.5
    # (positive part, negative part) of each of the two sums, in log space
    pos, neg = [-math.inf, -math.inf], [-math.inf, -math.inf]
    log_coef, sign = 0.0, 1.0  # log|C(alpha, i)| and its sign, updated term by term
    i = 0
    while True:
        j = alpha - i
        terms = (log_coef + i * math.log(q) + j * math.log1p(-q) + (i * i - i) / (2 * sigma ** 2)
                 + math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma)),
                 log_coef + j * math.log(q) + i * math.log1p(-q) + (j * j - j) / (2 * sigma ** 2)
                 + math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma)))
        for part, term in enumerate(terms):
            if sign > 0:
                pos[part] = _log_add(pos[part], term)
            else:
                neg[part] = _log_add(neg[part], term)
        if max(terms) < -30:
            break
        # C(alpha, i+1) = C(alpha, i) (alpha - i) / (i + 1)
        factor = (alpha - i) / (i + 1)
        if factor == 0:
            break
        sign *= 1.0 if factor > 0 else -1.0
        log_coef += math.log(abs(factor))
        i += 1
    return _log_add(_log_sub(pos[0], neg[0]), _log_sub(pos[1], neg[1]))


def rdp_sampled_gaussian(q: float, noise_multiplier: float, order: float) -> float:
    """RDP at ``order`` of one step of the sampled Gaussian mechanism (sampling rate ``q``,
    noise std ``noise_multiplier`` times the sensitivity)."""
    if q == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    if q == 1.0:
        return order / (2 * noise_multiplier ** 2)
    if float(order).is_integer():
        log_a = _log_a_integer(q, noise_multiplier, int(order))
    else:
        log_a = _log_a_fractional(q, noise_multiplier, order)
    return log_a / (order - 1)


def compute_rdp(q: float, noise_multiplier: float, steps: int,
                orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP at each of ``orders`` after ``steps`` steps (composition adds)."""
    _check(q, noise_multiplier, steps)
    return np.array([steps * rdp_sampled_gaussian(q, noise_multiplier, a) for a in orders])


def epsilon_from_rdp(orders: Sequence[float], rdp: Sequence[float] | np.ndarray, delta: float,
                     conversion: str = "balle2020") -> tuple[float, float]:
    """(epsilon, the order that gives it): the smallest epsilon over the orders at which the
    RDP guarantees ``rdp`` imply (epsilon, delta)-DP (module docstring: the conversions)."""
    if not 0 < delta < 1:
        raise ValueError(f"epsilon_from_rdp: delta must be in (0, 1), got {delta}")
    if conversion not in CONVERSIONS:
        raise ValueError(f"epsilon_from_rdp: conversion must be one of {CONVERSIONS}, got "
                         f"{conversion!r}")
    a, r = np.asarray(orders, dtype=np.float64), np.asarray(rdp, dtype=np.float64)
    if a.shape != r.shape:
        raise ValueError(f"epsilon_from_rdp: {a.size} orders but {r.size} RDP values")
    if not r.any():  # nothing released (no steps, or q = 0): the distributions are equal
        return 0.0, float(a[0])
    if conversion == "classic":
        eps = r - math.log(delta) / (a - 1)
    else:
        eps = r - (math.log(delta) + np.log(a)) / (a - 1) + np.log((a - 1) / a)
    best = int(np.nanargmin(eps))
    return max(float(eps[best]), 0.0), float(a[best])


def rdp_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                orders: Sequence[float] = DEFAULT_ORDERS,
                conversion: str = "balle2020") -> float:
    """Epsilon of ``steps`` DP-SGD steps at ``delta`` (RDP accounting of the sampled
    Gaussian mechanism, Opacus's orders and conversion by default).

    >>> round(rdp_epsilon(noise_multiplier=1.12, sample_rate=256 / 60000, steps=14062,
    ...                   delta=1e-5, conversion="classic"), 2)
    2.92
    """
    return epsilon_from_rdp(orders, compute_rdp(sample_rate, noise_multiplier, steps, orders),
                            delta, conversion)[0]


def _check(q: float, noise_multiplier: float, steps: int) -> None:
    if not 0 <= q <= 1:
        raise ValueError(f"privacy accounting: sample_rate must be in [0, 1], got {q}")
    if noise_multiplier < 0:
        raise ValueError(f"privacy accounting: noise_multiplier must be >= 0, got "
                         f"{noise_multiplier}")
    if steps < 0:
        raise ValueError(f"privacy accounting: steps must be >= 0, got {steps}")


def get_noise_multiplier(*, target_epsilon: float, target_delta: float, sample_rate: float,
                         steps: int, epsilon_tolerance: float = 0.01,
                         conversion: str = "balle2020") -> float:
    """The smallest noise multiplier (to within the bisection's tolerance) whose epsilon
    after ``steps`` steps at ``sample_rate`` is at most ``target_epsilon``: bisection on the
    accountant, which is monotone in the noise. The result's epsilon lies in
    ``[target_epsilon - epsilon_tolerance, target_epsilon]``.

    >>> sigma = get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5,
    ...                              sample_rate=0.01, steps=1000)
    >>> 2.99 <= rdp_epsilon(noise_multiplier=sigma, sample_rate=0.01, steps=1000,
    ...                     delta=1e-5) <= 3.0
    True
    """
    if target_epsilon <= 0:
        raise ValueError(f"get_noise_multiplier: target_epsilon must be > 0, got "
                         f"{target_epsilon}")

    def eps(sigma: float) -> float:
        return rdp_epsilon(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps,
                           delta=target_delta, conversion=conversion)

    low, high = 0.0, 10.0
    while eps(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e4:
            raise ValueError(f"get_noise_multiplier: epsilon {target_epsilon} at delta "
                             f"{target_delta} is out of reach (noise multiplier above 1e4)")
    # invariant: eps(low) > target >= eps(high)
    while True:
        mid = (low + high) / 2
        e = eps(mid)
        if e > target_epsilon:
            low = mid
        else:
            high = mid
            if target_epsilon - e <= epsilon_tolerance:
                return high
        if high - low < 1e-9:
            return high
