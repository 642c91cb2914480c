"""``dlcore.privacy``: differentially private training (DP-SGD) with Opacus's interface.

* :func:`per_sample_gradients`: every sample's gradient from one batched backward pass
  (Linear, Conv1d/2d, Embedding, LayerNorm, GroupNorm, RNN/LSTM/GRU and their cells, and
  models built of them); BatchNorm is refused.
* :class:`PrivacyEngine`: ``make_private`` / ``make_private_with_epsilon`` wrap a model,
  optimizer and data loader for DP-SGD (per-sample clipping, Gaussian noise, Poisson
  sampling); ``get_epsilon(delta)``.
* :func:`rdp_epsilon`, :func:`get_noise_multiplier`: RDP accounting of the subsampled
  Gaussian mechanism (Mironov, Talwar and Zhang 2019) with Opacus's orders and conversion.

>>> round(rdp_epsilon(noise_multiplier=1.1, sample_rate=0.01, steps=1000, delta=1e-5), 2)
1.71
"""

from .accountant import (DEFAULT_ORDERS, compute_rdp, epsilon_from_rdp, get_noise_multiplier,
                         rdp_epsilon)
from .engine import (DPDataLoader, DPOptimizer, GradSampleModule, PoissonBatchSampler,
                     PrivacyEngine, RDPAccountant)
from .grad_sample import SUPPORTED, check_module, per_sample_gradients

__all__ = ["DEFAULT_ORDERS", "DPDataLoader", "DPOptimizer", "GradSampleModule",
           "PoissonBatchSampler", "PrivacyEngine", "RDPAccountant", "SUPPORTED", "check_module",
           "compute_rdp", "epsilon_from_rdp", "get_noise_multiplier", "per_sample_gradients",
           "rdp_epsilon"]
