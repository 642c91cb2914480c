"""DP-SGD (Abadi et al. 2016) with Opacus's interface: ``PrivacyEngine.make_private`` wraps a
model, an optimizer and a data loader; the training loop stays as it was.

* :class:`GradSampleModule` records per-sample gradients during the loop's own
  ``loss.backward()`` (:mod:`.grad_sample`: forward hooks, ``retain_grad()`` on the
  layers' outputs).
* :class:`DPOptimizer` ``step()``: clip each sample's gradient to total L2 norm
  ``max_grad_norm`` over all parameters (flat clipping; factor ``min(1, C / (norm + 1e-6))``,
  Opacus's), sum, add Gaussian noise of std ``noise_multiplier * max_grad_norm`` per
  coordinate, divide by the *expected* batch size ``sample_rate * N`` (with
  ``loss_reduction="mean"``; not the drawn one, which would leak it), then the wrapped
  optimizer's step. Each step is reported to the accountant.
* :class:`DPDataLoader`: Poisson sampling, each sample in each batch independently with
  probability ``sample_rate = batch_size / N``, ``int(1 / sample_rate)`` batches an epoch;
  a batch may be empty (then its tensors have a zero leading dim and the step adds noise
  only). The accountant's analysis (:mod:`.accountant`) assumes exactly this sampling.

NOTE: Opacus takes ``sample_rate = 1 / len(data_loader)``; here it is ``batch_size / N``
(equal when the batch size divides N). With ``poisson_sampling=False`` the loader's own
shuffled fixed-size batches are kept and accounted as if Poisson-sampled, as Opacus does;
the guarantee then is the usual approximation, not a proof.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import nn
from ..autograd import no_grad
from ..data import DataLoader
from ..data.sampler import BatchSampler, GeneratorLike, numpy_generator
from ..device import Device
from ..random import generator_for, normal_array
from ..tensor import Tensor
from .accountant import (DEFAULT_ORDERS, compute_rdp, epsilon_from_rdp,
                         get_noise_multiplier)
from .grad_sample import LOSS_REDUCTIONS, Capture


class GradSampleModule(nn.Module):
    """``module`` whose calls record what per-sample gradients need; after
    ``loss.backward()``, :meth:`grad_samples` gives them (name -> (N, *shape)).

    ``loss_reduction`` says what the loss over the batch is: ``"mean"`` (the default, as
    ``F.cross_entropy``'s) or ``"sum"``; with the mean the recorded gradients are multiplied
    by the batch size, so they are each sample's own.
    """

    def __init__(self, module: nn.Module, loss_reduction: str = "mean") -> None:
        super().__init__()
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"GradSampleModule: loss_reduction must be one of "
                             f"{LOSS_REDUCTIONS}, got {loss_reduction!r}")
        self._module = module
        self.loss_reduction = loss_reduction
        self.capture = Capture(module, retain_grad=True)
        self._active = self.capture.active()
        self._active.__enter__()  # hooks (and unrolled recurrent layers) while wrapped

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._module(*args, **kwargs)

    def grad_samples(self) -> dict[str, Tensor] | None:
        """Per-sample gradients of the recorded forward passes since :meth:`clear` (None
        when none was recorded, e.g. an empty batch that skipped the forward)."""
        if not self.capture.records:
            return None
        outputs = self.capture.outputs()
        grads = [t.grad for t in outputs]
        n = _batch_size(self.capture)
        return self.capture.per_sample(grads, n, float(n) if self.loss_reduction == "mean"
                                       else 1.0)

    def clear(self) -> None:
        self.capture.clear()

    def remove_hooks(self) -> None:
        """Unwrap: the module's hooks go and its recurrent layers run fused again."""
        self._active.__exit__(None, None, None)


def _batch_size(capture: Capture) -> int:
    """N from the first record's saved input (batch-first for every rule but the
    recurrent, whose input is (T, N, I))."""
    from . import recurrent

    first = capture.records[0]
    if isinstance(first.module, recurrent.SUPPORTED):
        return int(first.saved[0].shape[1])
    saved = first.saved
    return int(saved.shape[0])


class DPOptimizer:
    """Wraps ``optimizer``: :meth:`step` privatises the gradients of ``module``'s recorded
    batch (module docstring) and then steps. ``param_groups``, ``state_dict`` and the rest
    are the wrapped optimizer's."""

    def __init__(self, optimizer: Any, *, module: GradSampleModule, noise_multiplier: float,
                 max_grad_norm: float, expected_batch_size: float,
                 loss_reduction: str = "mean") -> None:
        if max_grad_norm <= 0:
            raise ValueError(f"DPOptimizer: max_grad_norm must be > 0, got {max_grad_norm}")
        if noise_multiplier < 0:
            raise ValueError(f"DPOptimizer: noise_multiplier must be >= 0, got "
                             f"{noise_multiplier}")
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"DPOptimizer: loss_reduction must be one of {LOSS_REDUCTIONS}, "
                             f"got {loss_reduction!r}")
        self.original_optimizer, self.module = optimizer, module
        self.noise_multiplier, self.max_grad_norm = noise_multiplier, max_grad_norm
        self.expected_batch_size, self.loss_reduction = expected_batch_size, loss_reduction
        self.step_hook: Callable[[DPOptimizer], None] | None = None
        self.per_sample_norms: Tensor | None = None  # of the last step, before clipping
        self.params = dict(module._module.named_parameters())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["original_optimizer"], name)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.original_optimizer.zero_grad(set_to_none)
        self.module.clear()

    def clipped_sum(self, grad_samples: dict[str, Tensor]) -> dict[str, Any]:
        """Sum over samples of the per-sample gradients, each scaled to total L2 norm at
        most ``max_grad_norm`` (arrays by name); records :attr:`per_sample_norms`."""
        arrays = {k: g._data for k, g in grad_samples.items()}
        first = next(iter(arrays.values()))
        xp, n = _xp_of(first), first.shape[0]
        squares = sum(((a.reshape(n, -1).astype(np.float64)) ** 2).sum(axis=1)
                      for a in arrays.values())
        norms = xp.sqrt(squares)
        factor = xp.minimum(self.max_grad_norm / (norms + 1e-6), 1.0)
        self.per_sample_norms = Tensor._make(norms, grad_samples[next(iter(arrays))]._device)
        return {k: xp.tensordot(factor.astype(a.dtype), a, axes=1)
                for k, a in arrays.items()}

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            from ..autograd import enable_grad
            with enable_grad():
                loss = closure()
        samples = self.module.grad_samples()
        summed = {} if samples is None else self.clipped_sum(samples)
        std = self.noise_multiplier * self.max_grad_norm
        divide = self.expected_batch_size if self.loss_reduction == "mean" else 1.0
        with no_grad():
            for name, p in self.params.items():
                if not p.requires_grad:
                    continue
                xp = p._device.xp
                total = summed.get(name)
                if total is None:
                    total = xp.zeros(p.shape, p.dtype)
                noise = normal_array(p.shape, 0.0, std, p.dtype, p._device) if std > 0 \
                    else 0.0
                p.grad = Tensor._make(((total + noise) / divide).astype(p.dtype, copy=False),
                                      p._device)
        self.module.clear()
        self.original_optimizer.step()
        if self.step_hook is not None:
            self.step_hook(self)
        return loss

    def state_dict(self) -> dict[str, Any]:
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.original_optimizer.load_state_dict(state)


def _xp_of(array: Any) -> Any:
    from ..device import device_of_array
    return device_of_array(array).xp


class PoissonBatchSampler(BatchSampler):
    """Batches of a dataset of ``num_samples`` in which each index appears independently
    with probability ``sample_rate``, ``int(1 / sample_rate)`` batches per epoch (Opacus's
    ``UniformWithReplacementSampler``); a batch may be empty. Draws come from
    ``generator`` (or dlcore's cpu generator, looked up at each epoch)."""

    def __init__(self, num_samples: int, sample_rate: float,
                 generator: GeneratorLike = None) -> None:
        if not 0 < sample_rate <= 1:
            raise ValueError(f"PoissonBatchSampler: sample_rate must be in (0, 1], got "
                             f"{sample_rate}")
        super().__init__(range(num_samples), max(1, round(sample_rate * num_samples)),
                         drop_last=False)
        self.num_samples, self.sample_rate = num_samples, sample_rate
        self.generator = numpy_generator(generator)
        self.steps = int(1 / sample_rate)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        gen = self.generator if self.generator is not None else generator_for(Device("cpu"))
        for _ in range(self.steps):
            mask = gen.random(self.num_samples) < self.sample_rate
            yield np.flatnonzero(mask).tolist()


def _empty_like(batch: Any) -> Any:
    """A batch of the same structure with zero samples (every tensor cut to ``[:0]``)."""
    if isinstance(batch, Tensor):
        return batch[:0]
    if isinstance(batch, tuple | list):
        return type(batch)(_empty_like(b) for b in batch)
    if isinstance(batch, dict):
        return {k: _empty_like(v) for k, v in batch.items()}
    return batch


class DPDataLoader(DataLoader):
    """A DataLoader over ``dataset`` with Poisson-sampled batches (:class:`PoissonBatchSampler`);
    an empty batch comes as the collated structure with a zero leading dim."""

    def __init__(self, dataset: Any, sample_rate: float, collate_fn: Callable | None = None,
                 generator: GeneratorLike = None, device: str | Device | None = None,
                 num_workers: int = 0, prefetch: int = 2) -> None:
        super().__init__(dataset, batch_size=1, collate_fn=collate_fn, num_workers=num_workers,
                         prefetch=prefetch, device=device)
        collate = self.collate_fn
        self.collate_fn = lambda samples: (collate(samples) if samples
                                           else _empty_like(collate([dataset[0]])))
        self.sample_rate = sample_rate
        self.batch_sampler = PoissonBatchSampler(len(dataset), sample_rate, generator)

    @classmethod
    def from_data_loader(cls, loader: DataLoader, generator: GeneratorLike = None
                         ) -> DPDataLoader:
        """The Poisson-sampled loader of ``loader``'s dataset, at its expected batch size."""
        n = len(loader.dataset)
        return cls(loader.dataset, sample_rate=min(1.0, loader.batch_size / n),
                   collate_fn=loader.collate_fn, generator=generator, device=loader.device,
                   num_workers=loader.num_workers, prefetch=loader.prefetch)


class RDPAccountant:
    """The steps taken, as ``(noise_multiplier, sample_rate, steps)`` runs, and their
    epsilon (:mod:`.accountant`)."""

    def __init__(self) -> None:
        self.history: list[tuple[float, float, int]] = []

    def step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, steps = self.history[-1]
            self.history[-1] = (sigma, q, steps + 1)
        else:
            self.history.append((noise_multiplier, sample_rate, 1))

    def get_epsilon(self, delta: float) -> float:
        if not self.history:
            return 0.0
        rdp = np.sum([compute_rdp(q, sigma, steps) for sigma, q, steps in self.history], axis=0)
        return epsilon_from_rdp(DEFAULT_ORDERS, rdp, delta)[0]

    def __len__(self) -> int:
        return sum(steps for _, _, steps in self.history)


class PrivacyEngine:
    """Opacus's entry point: make a model, optimizer and loader private; read epsilon.

    >>> engine = PrivacyEngine()
    >>> model, opt, loader = engine.make_private(module=model, optimizer=opt,
    ...     data_loader=loader, noise_multiplier=1.1, max_grad_norm=1.0)  # doctest: +SKIP
    >>> # ... the usual loop: opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    >>> engine.get_epsilon(1e-5)  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.accountant = RDPAccountant()

    def make_private(self, *, module: nn.Module, optimizer: Any, data_loader: DataLoader,
                     noise_multiplier: float, max_grad_norm: float,
                     poisson_sampling: bool = True, loss_reduction: str = "mean",
                     generator: GeneratorLike = None
                     ) -> tuple[GradSampleModule, DPOptimizer, DataLoader]:
        """The wrapped (module, optimizer, data_loader); ``optimizer`` must be over
        ``module``'s parameters."""
        n = len(data_loader.dataset)
        sample_rate = min(1.0, data_loader.batch_size / n)
        if poisson_sampling:
            data_loader = DPDataLoader.from_data_loader(data_loader, generator)
        gsm = module if isinstance(module, GradSampleModule) else \
            GradSampleModule(module, loss_reduction)
        dp = DPOptimizer(optimizer, module=gsm, noise_multiplier=noise_multiplier,
                         max_grad_norm=max_grad_norm, expected_batch_size=sample_rate * n,
                         loss_reduction=loss_reduction)
        accountant = self.accountant

        def account(opt: DPOptimizer) -> None:
            accountant.step(noise_multiplier=opt.noise_multiplier, sample_rate=sample_rate)

        dp.step_hook = account
        return gsm, dp, data_loader

    def make_private_with_epsilon(self, *, module: nn.Module, optimizer: Any,
                                  data_loader: DataLoader, target_epsilon: float,
                                  target_delta: float, epochs: int, max_grad_norm: float,
                                  poisson_sampling: bool = True, loss_reduction: str = "mean",
                                  generator: GeneratorLike = None,
                                  epsilon_tolerance: float = 0.01
                                  ) -> tuple[GradSampleModule, DPOptimizer, DataLoader]:
        """:meth:`make_private` with the smallest noise multiplier whose epsilon after
        ``epochs`` epochs is at most ``target_epsilon`` (bisection on the accountant)."""
        n = len(data_loader.dataset)
        sample_rate = min(1.0, data_loader.batch_size / n)
        steps = epochs * (int(1 / sample_rate) if poisson_sampling else len(data_loader))
        sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=target_delta,
                                     sample_rate=sample_rate, steps=steps,
                                     epsilon_tolerance=epsilon_tolerance)
        return self.make_private(module=module, optimizer=optimizer, data_loader=data_loader,
                                 noise_multiplier=sigma, max_grad_norm=max_grad_norm,
                                 poisson_sampling=poisson_sampling,
                                 loss_reduction=loss_reduction, generator=generator)

    def get_epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta``."""
        return self.accountant.get_epsilon(delta)


__all__ = ["DPDataLoader", "DPOptimizer", "GradSampleModule", "PoissonBatchSampler",
           "PrivacyEngine", "RDPAccountant"]
