"""``einsum``: PyTorch's ``torch.einsum`` (subscripts, ``->``, ``...``), differentiable.

The forward is the array module's ``einsum`` (NumPy's or CuPy's, with ``optimize`` on NumPy
so chains contract pairwise through BLAS). The gradient of operand k is again an einsum: the
upstream gradient contracted with the other operands onto operand k's subscripts, so double
backward comes for free. Subscripts of operand k that appear nowhere else (summed over k
alone, as ``j`` in ``ij->i``) come back by broadcasting. An ellipsis stands for the same
dims in every operand that has one (right-aligned, equal sizes or 1: size-1 dims broadcast,
and their gradients are summed back).
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np

from ..autograd import Function
from ..tensor import Tensor
from ._util import low_precision, sum_to

__all__ = ["einsum"]

_LETTERS = string.ascii_letters


def _parse(equation: str, ndims: list[int]) -> tuple[list[str], str]:
    """Explicit subscripts per operand and for the output, ellipses spelled as letters
    unused by the equation."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    subs = lhs.split(",")
    if len(subs) != len(ndims):
        raise ValueError(f"einsum: the equation {equation!r} names {len(subs)} operands, "
                         f"got {len(ndims)}")
    for ch in eq.replace("...", "").replace(",", "").replace("->", ""):
        if ch not in _LETTERS:
            raise ValueError(f"einsum: invalid subscript {ch!r} in {equation!r} (letters "
                             "a-z, A-Z and '...' only)")
    free = [c for c in _LETTERS if c not in eq]
    ell_dims = 0
    for s, n in zip(subs, ndims):
        if "..." in s:
            ell_dims = max(ell_dims, n - (len(s) - 3))
    ell = "".join(free[:ell_dims])
    out_subs = []
    for i, (s, n) in enumerate(zip(subs, ndims)):
        if "..." in s:
            k = n - (len(s) - 3)
            if k < 0:
                raise ValueError(f"einsum: operand {i} has {n} dims, fewer than its "
                                 f"subscripts {s!r} name")
            s = s.replace("...", ell[ell_dims - k:])
        if len(s) != n:
            raise ValueError(f"einsum: operand {i} has {n} dims but subscripts {s!r} name "
                             f"{len(s)}")
        out_subs.append(s)
    if arrow:
        out = rhs.replace("...", ell)
    else:  # implicit output: the ellipsis dims, then the letters used once, sorted
        counts = {c: "".join(out_subs).count(c) for c in "".join(out_subs)}
        out = ell + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in ell))
    for c in out:
        if c not in "".join(out_subs):
            raise ValueError(f"einsum: output subscript {c!r} of {equation!r} appears in no "
                             "operand")
    if len(set(out)) != len(out):
        raise ValueError(f"einsum: output subscripts of {equation!r} repeat a letter")
    return out_subs, out


class Einsum(Function):
    save_inputs = True

    def forward(self, *arrays: Any, subs: tuple[str, ...], out: str) -> Any:
        xp = self.device.xp
        spec = ",".join(subs) + "->" + out
        self.subs, self.out = subs, out
        if xp is np:
            return np.einsum(spec, *arrays, optimize=len(arrays) > 2)
        return xp.einsum(spec, *arrays)

    def backward(self, g: Tensor) -> tuple[Tensor | None, ...]:
        operands = self.saved_tensors
        grads: list[Tensor | None] = []
        for k, needs in enumerate(self.needs_input_grad):
            grads.append(_operand_grad(g, operands, self.subs, self.out, k) if needs else None)
        return tuple(grads)


def _operand_grad(g: Tensor, operands: tuple[Tensor, ...], subs: tuple[str, ...], out: str,
                  k: int) -> Tensor:
    target = subs[k]
    if len(set(target)) != len(target):
        raise RuntimeError(f"einsum: backward through a subscript repeated within one "
                           f"operand ({target!r}, a diagonal or trace) is not supported")
    others = [i for i in range(len(operands)) if i != k]
    known = set(out).union(*[set(subs[i]) for i in others])
    sizes = _sizes(operands, subs)
    reach = "".join(c for c in target if c in known)
    spec = [out] + [subs[i] for i in others]
    # a letter broadcast (size 1 in operand k, larger elsewhere) is summed back below
    part = _einsum_tensors(spec, reach, [g] + [operands[i] for i in others])
    shape = [sizes[c] if c in reach else 1 for c in target]
    part = part.reshape(*shape)
    full = tuple(sizes[c] for c in target)
    if part.shape != full:
        part = part.expand(*full)
    return sum_to(part, operands[k].shape) if operands[k].shape != full else part


def _sizes(operands: tuple[Tensor, ...], subs: tuple[str, ...]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for t, s in zip(operands, subs):
        for c, n in zip(s, t.shape):
            if sizes.get(c, 1) == 1:
                sizes[c] = n
            elif n not in (1, sizes[c]):
                raise RuntimeError(f"einsum: subscript {c!r} has size {sizes[c]} in one "
                                   f"operand and {n} in another")
    return sizes


def _einsum_tensors(subs: list[str], out: str, tensors: list[Tensor]) -> Tensor:
    """einsum over already explicit subscripts, size-1 dims broadcast against the others."""
    sizes = _sizes(tuple(tensors), tuple(subs))
    expanded = []
    for t, s in zip(tensors, subs):
        full = tuple(sizes[c] for c in s)
        expanded.append(t.expand(*full) if t.shape != full else t)
    return Einsum.apply(*expanded, subs=tuple(subs), out=out)


@low_precision
def einsum(equation: str, *operands: Any) -> Tensor:
    """Einstein summation over ``operands`` (``torch.einsum``): ``"ij,jk->ik"`` is a matrix
    product, ``"bij->bji"`` a transpose, ``"ii"``... see the module docstring for the rules.
    Operands may also be passed as one list.

    >>> dlcore.einsum("ij,j->i", dlcore.ones(2, 3), dlcore.ones(3)).tolist()
    [3.0, 3.0]
    """
    if len(operands) == 1 and isinstance(operands[0], list | tuple):
        operands = tuple(operands[0])
    if not operands or not all(isinstance(t, Tensor) for t in operands):
        raise TypeError("einsum: operands must be tensors")
    dtypes = {t.dtype for t in operands}
    if len(dtypes) > 1:
        raise RuntimeError(f"einsum: expected operands of one dtype, got "
                           f"{sorted(str(d) for d in dtypes)} (shapes "
                           f"{[tuple(t.shape) for t in operands]})")
    subs, out = _parse(equation, [t.ndim for t in operands])
    return _einsum_tensors(subs, out, list(operands))
