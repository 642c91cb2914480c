"""Per-sample gradients in one batched backward pass.

The standard method (Goodfellow 2015; Opacus's ``GradSampleModule``): a layer's weight
gradient is a sum over the batch of per-sample terms built from two things the batch pass
already has, the layer's input activation ``a_n`` and the gradient ``g_n`` of the summed loss
with respect to the layer's output. Keeping the sum apart gives every sample's gradient:

* Linear: ``W_n = g_n^T a_n`` (sums over any positions between batch and feature dims);
* Conv1d/Conv2d: the same product with the input unfolded into its kernel windows
  (im2col), per group;
* Embedding: ``g_n`` scattered into the rows ``a_n`` indexes;
* LayerNorm/GroupNorm: ``weight_n = sum(g_n * x_hat_n)``, ``bias_n = sum(g_n)`` over the
  positions that share a parameter, ``x_hat`` recomputed from the saved input;
* RNN/LSTM/GRU and their cells: :mod:`.recurrent` (sums over time of per-step products).

dlcore's modules have forward hooks but no backward hooks, so the capture is: a forward hook
saves each supported layer's input and its output tensor; the gradients with respect to the
saved outputs come from one ``autograd.grad`` of the loss (:func:`per_sample_gradients`) or,
in the training loop's ``loss.backward()``, from ``retain_grad()`` on the saved outputs
(:class:`GradSampleModule`). A layer called several times in one forward (shared weights, a
cell stepped through time) is saved once per call, and its per-sample gradients are summed.

BatchNorm mixes the samples of a batch (its output for one sample depends on all others), so
a per-sample gradient does not exist and DP-SGD's sensitivity argument fails: it is refused,
as Opacus refuses it; GroupNorm or LayerNorm take its place.

Shape letters: N batch, C channels, O output channels/features, G groups, K = C/G * kH * kW,
P output positions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .. import autograd, nn
from ..autograd import no_grad
from ..nn import functional as F
from ..tensor import Tensor
from . import recurrent

# rule(module, saved, grads) -> {parameter attribute: (N, *param.shape) array}
Rule = Callable[[Any, Any, list[Any]], dict[str, Any]]


@dataclass
class Record:
    """One call of a supported layer: what its rule needs (``saved``), the output tensors
    whose gradients it needs, and each output's ``grad_fn`` at record time (an in-place op
    on an output afterwards would change it: then the gradient is not the layer's)."""

    module: nn.Module
    rule: Rule
    saved: Any
    outputs: list[Tensor]
    grad_fns: list[Any] = field(default_factory=list)


# ---- the per-layer rules -------------------------------------------------------------------
def _linear(module: nn.Linear, a: Any, grads: list[Any]) -> dict[str, Any]:
    g = grads[0]
    n = g.shape[0]
    a3, g3 = a.reshape(n, -1, a.shape[-1]), g.reshape(n, -1, g.shape[-1])
    out = {"weight": g3.transpose(0, 2, 1) @ a3}
    if module.bias is not None:
        out["bias"] = g3.sum(axis=1)
    return out


def _conv_geometry(module: Any, spatial: tuple[int, ...]) -> tuple[tuple[int, int, int, int],
                                                                    tuple[int, int],
                                                                    tuple[int, int],
                                                                    tuple[int, int]]:
    """(top, bottom, left, right) padding, kernel, stride and dilation as 2-D pairs (a
    Conv1d is a Conv2d of height one, as dlcore's op runs it)."""
    one_d = isinstance(module, nn.Conv1d)
    pair = (lambda v: (1, v[0])) if one_d else (lambda v: (v[0], v[1]))
    kernel, stride, dilation = pair(module.kernel_size), pair(module.stride), \
        pair(module.dilation)
    if module.padding == "valid":
        return (0, 0, 0, 0), kernel, stride, dilation
    if module.padding == "same":  # PyTorch's: total d*(k-1), the odd extra bottom/right
        th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2), kernel, stride, dilation
    ph, pw = (0, module.padding[0]) if one_d else pair(module.padding)
    return (ph, ph, pw, pw), kernel, stride, dilation


def unfold(x: Any, padding: tuple[int, int, int, int], kernel: tuple[int, int],
           stride: tuple[int, int], dilation: tuple[int, int]) -> Any:
    """im2col of an (N, C, H, W) array: (N, C, kH, kW, OH, OW), one strided slice of the
    zero-padded input per kernel offset (works on NumPy and CuPy arrays alike)."""
    xp = _xp(x)
    top, bottom, left, right = padding
    xpad = xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    N, C, H, W = xpad.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    OH, OW = (H - dh * (kh - 1) - 1) // sh + 1, (W - dw * (kw - 1) - 1) // sw + 1
    cols = xp.empty((N, C, kh, kw, OH, OW), x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xpad[:, :, i * dh:i * dh + sh * (OH - 1) + 1:sh,
                                    j * dw:j * dw + sw * (OW - 1) + 1:sw]
    return cols


def _conv(module: Any, a: Any, grads: list[Any]) -> dict[str, Any]:
    g = grads[0]
    if isinstance(module, nn.Conv1d):
        a, g = a[:, :, None, :], g[:, :, None, :]
    padding, kernel, stride, dilation = _conv_geometry(module, a.shape[2:])
    cols = unfold(a, padding, kernel, stride, dilation)
    N, C, G, O = a.shape[0], a.shape[1], module.groups, g.shape[1]
    P = g.shape[2] * g.shape[3]
    cols = cols.reshape(N, G, (C // G) * kernel[0] * kernel[1], P)
    gw = g.reshape(N, G, O // G, P) @ cols.transpose(0, 1, 3, 2)  # (N, G, O/G, K)
    out = {"weight": gw.reshape(N, *module.weight.shape)}
    if module.bias is not None:
        out["bias"] = g.reshape(N, O, P).sum(axis=2)
    return out


def _embedding(module: nn.Embedding, indices: Any, grads: list[Any]) -> dict[str, Any]:
    g = grads[0]
    xp = _xp(g)
    N, V, D = g.shape[0], module.num_embeddings, g.shape[-1]
    idx = indices.reshape(N, -1).astype(xp.int64)
    # row n*V + index of sample n: one scatter-add into the (N*V, D) table
    flat = (xp.arange(N, dtype=xp.int64)[:, None] * V + idx).reshape(-1)
    gw = xp.zeros((N * V, D), g.dtype)
    xp.add.at(gw, flat, g.reshape(-1, D))
    gw = gw.reshape(N, V, D)
    if module.padding_idx is not None:  # that row receives no gradient (F.embedding)
        gw[:, module.padding_idx] = 0
    return {"weight": gw}


def _layer_norm(module: nn.LayerNorm, x: Tensor, grads: list[Any]) -> dict[str, Any]:
    g = grads[0]
    with no_grad():
        x_hat = F.layer_norm(x, module.normalized_shape, None, None, module.eps)._data
    k = len(module.normalized_shape)
    between = tuple(range(1, g.ndim - k))  # dims between batch and the normalised ones
    out = {}
    if module.weight is not None:
        out["weight"] = (g * x_hat).sum(axis=between)
    if module.bias is not None:
        out["bias"] = g.sum(axis=between)
    return out


def _group_norm(module: nn.GroupNorm, x: Tensor, grads: list[Any]) -> dict[str, Any]:
    g = grads[0]
    out = {}
    if module.weight is None:
        return out
    with no_grad():
        x_hat = F.group_norm(x, module.num_groups, None, None, module.eps)._data
    spatial = tuple(range(2, g.ndim))
    out["weight"] = (g * x_hat.astype(g.dtype, copy=False)).sum(axis=spatial)
    out["bias"] = g.sum(axis=spatial)
    return out


# the layers with per-sample rules, and what each saves of its input
_RULES: dict[type, tuple[Rule, Callable[[Tensor], Any]]] = {
    nn.Linear: (_linear, lambda x: x._data),
    nn.Conv1d: (_conv, lambda x: x._data),
    nn.Conv2d: (_conv, lambda x: x._data),
    nn.Embedding: (_embedding, lambda x: x._data),
    nn.LayerNorm: (_layer_norm, lambda x: x.detach()),
    nn.GroupNorm: (_group_norm, lambda x: x.detach()),
}
SUPPORTED = tuple(_RULES) + recurrent.SUPPORTED


def _xp(array: Any) -> Any:
    from ..device import device_of_array
    return device_of_array(array).xp


def _trainable(module: nn.Module) -> bool:
    return any(p is not None and p.requires_grad for p in module._parameters.values())


def check_module(model: nn.Module) -> None:
    """Raise unless every layer of ``model`` with trainable parameters of its own has a
    per-sample gradient rule (BatchNorm: refused, it mixes samples)."""
    for name, m in model.named_modules():
        if not _trainable(m) or isinstance(m, SUPPORTED):
            continue
        where = f"layer '{name}'" if name else "the model itself"
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            raise NotImplementedError(
                f"{type(m).__name__} ({where}) is not compatible with differential privacy: "
                "it normalises each sample with statistics of the whole batch, so one "
                "sample's gradient depends on the others and per-sample clipping bounds "
                "nothing. Replace it with GroupNorm (or LayerNorm), as Opacus's "
                "ModuleValidator.fix does")
        raise NotImplementedError(
            f"per-sample gradients: no rule for {type(m).__name__} ({where}), which has "
            f"trainable parameters; supported layers: "
            + ", ".join(t.__name__ for t in SUPPORTED)
            + " (or freeze its parameters with requires_grad_(False))")


class Capture:
    """Records the supported layers' calls while active (:meth:`active`); the recurrent
    layers run :mod:`.recurrent`'s unrolled forward meanwhile, with the same parameters.
    ``retain_grad``: the recorded outputs keep their gradients at the next ``backward()``
    (for :class:`~dlcore.privacy.GradSampleModule`); without, :func:`per_sample_gradients`
    asks ``autograd.grad`` for them."""

    def __init__(self, model: nn.Module, retain_grad: bool = False) -> None:
        check_module(model)
        self.model, self.retain_grad = model, retain_grad
        self.records: list[Record] = []
        self.names = {id(p): name for name, p in model.named_parameters()}

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not isinstance(output, Tensor) or not output.requires_grad:
            return  # no_grad or eval: nothing to differentiate
        rule, save = _RULES[type(module)]
        self.track(output)
        self.add(Record(module, rule, save(args[0]), [output]))

    def track(self, output: Tensor) -> None:
        """With ``retain_grad``, have the coming backward leave dL/d(output) on ``output``.
        NOTE: at once, before any op consumes it: ``retain_grad()`` puts a node in front of
        the tensor, which only the ops built afterwards see."""
        if self.retain_grad:
            output.retain_grad()

    def add(self, record: Record) -> None:
        record.grad_fns = [t.grad_fn for t in record.outputs]
        self.records.append(record)

    @contextmanager
    def active(self) -> Iterator[Capture]:
        handles, swapped = [], []
        try:
            for m in self.model.modules():
                if not _trainable(m):
                    continue
                if type(m) in _RULES:
                    handles.append(m.register_forward_hook(self._hook))
                elif isinstance(m, recurrent.SUPPORTED):
                    recurrent.swap_forward(m, self)
                    swapped.append(m)
            yield self
        finally:
            for h in handles:
                h.remove()
            for m in swapped:
                recurrent.restore_forward(m)

    def outputs(self) -> list[Tensor]:
        """Every recorded output, in record order (the order :meth:`per_sample` expects)."""
        for r in self.records:
            for t, fn in zip(r.outputs, r.grad_fns):
                if t.grad_fn is not fn:
                    raise RuntimeError(f"per-sample gradients: the output of a "
                                       f"{type(r.module).__name__} was modified in place "
                                       "after the layer ran (an inplace=True activation?); "
                                       "its gradient would not be the layer's")
        return [t for r in self.records for t in r.outputs]

    def per_sample(self, grads: list[Any], batch_size: int,
                   scale: float = 1.0) -> dict[str, Tensor]:
        """Per-sample gradients (name -> (N, *shape) tensor) from the gradients of the
        recorded outputs (arrays or tensors, None where unused, in :meth:`outputs` order),
        each multiplied by ``scale``. Parameters no recorded call reached get zeros."""
        sums: dict[str, Any] = {}
        position = 0
        for r in self.records:
            gs = grads[position:position + len(r.outputs)]
            position += len(r.outputs)
            arrays = [None if g is None else (g._data if isinstance(g, Tensor) else g)
                      for g in gs]
            arrays = [_zeros_like(t) if a is None else a for a, t in zip(arrays, r.outputs)]
            for attr, value in r.rule(r.module, r.saved, arrays).items():
                name = self.names[id(r.module._parameters[attr])]
                sums[name] = value if name not in sums else sums[name] + value
        out = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if name in sums:
                value = sums[name].astype(p.dtype, copy=False)
                if scale != 1.0:
                    value = value * scale
            else:
                value = p._device.xp.zeros((batch_size, *p.shape), p.dtype)
            out[name] = Tensor._make(value, p._device)
        return out

    def clear(self) -> None:
        self.records = []


def _zeros_like(t: Tensor) -> Any:
    return t._device.xp.zeros(t.shape, t.dtype)


LOSS_REDUCTIONS = ("sum", "mean")


def per_sample_gradients(model: nn.Module, loss_fn: Callable[[Any, Tensor], Tensor],
                         inputs: Any, targets: Tensor,
                         loss_reduction: str = "sum") -> dict[str, Tensor]:
    """Gradients of each sample's loss with respect to each trainable parameter of
    ``model``, from one forward and one backward pass: ``{name: (N, *param.shape)}`` with N
    = ``len(targets)``, names as in ``model.named_parameters()``.

    ``loss_fn(model(inputs), targets)`` must be the sum of the per-sample losses
    (``reduction="sum"``), or their mean with ``loss_reduction="mean"`` (then the gradients
    are multiplied by N). Samples are the first dim of ``targets``; recurrent layers may
    take them in any dim (``batch_first`` or not). Parameters' ``.grad`` are left as they
    are. Layers: :data:`SUPPORTED`; others with trainable parameters raise
    NotImplementedError naming them (BatchNorm, by design).

    >>> model = nn.Linear(3, 2)
    >>> loss = lambda out, y: nn.functional.cross_entropy(out, y, reduction="sum")
    >>> grads = per_sample_gradients(model, loss, dlcore.ones(4, 3), dlcore.tensor([0, 1, 0, 1]))
    >>> tuple(grads["weight"].shape), tuple(grads["bias"].shape)
    ((4, 2, 3), (4, 2))
    """
    if loss_reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"per_sample_gradients: loss_reduction must be one of "
                         f"{LOSS_REDUCTIONS}, got {loss_reduction!r}")
    capture = Capture(model)
    with capture.active():
        loss = loss_fn(model(inputs), targets)
    n = len(targets)
    outputs = capture.outputs()
    if not outputs:
        return capture.per_sample([], n)
    grads = autograd.grad(loss, outputs, allow_unused=True)
    return capture.per_sample(list(grads), n, float(n) if loss_reduction == "mean" else 1.0)
