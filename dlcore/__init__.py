"""dlcore: a readable deep-learning array framework on NumPy (CPU) and CuPy (GPU).

>>> import dlcore
>>> x = dlcore.tensor([1.0, 2.0, 3.0], requires_grad=True)
>>> (x * x).sum().backward()
>>> x.grad.tolist()
[2.0, 4.0, 6.0]
"""

from . import host_memory  # noqa: F401  -- malloc's thresholds, before the first arrays
from . import autograd, cuda, data, dtypes, io
from ._version import __version__
from . import accelerator, backends, utils
from .autograd import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from .anomaly import is_anomaly_check_nan_enabled, is_anomaly_enabled
from .creation import (arange, as_tensor, empty, empty_like, eye, from_dlpack, from_numpy, full,
                       full_like, linspace, multinomial, ones, ones_like, rand, rand_like,
                       randint, randn, randn_like, randperm, tensor, zeros, zeros_like)
from .device import Device, device, get_default_device, set_default_device
from .dtypes import (bfloat16, bool, double, float, float16, float32, float64, get_default_dtype,
                     half, int8, int16, int32, int64, long, set_default_dtype, uint8)
from .ops import *  # noqa: F403
from .ops import linalg  # dlcore.linalg.norm / vector_norm, as torch.linalg
from .io import load, save
from .precision import autocast
from .random import get_rng_state, manual_seed, set_rng_state
from .threads import get_num_threads, set_num_threads
from .tensor import (Tensor, channels_last, contiguous_format, memory_format,
                     preserve_format)

from . import amp, distributed, nn, optim  # noqa: E402  -- built on everything above
from . import energy, explain  # noqa: E402  -- over nn and sysinfo

from . import graphs  # noqa: E402

# PyTorch spells the graph API under torch.cuda; dlcore.cuda sits below the core layer it is
# built on (dlcore.graphs), so the names are attached here, where both are loaded.
cuda.CUDAGraph = graphs.CUDAGraph  # type: ignore[attr-defined]
cuda.graph = graphs.graph  # type: ignore[attr-defined]
cuda.graph_pool_handle = graphs.graph_pool_handle  # type: ignore[attr-defined]
cuda.make_graphed_callables = graphs.make_graphed_callables  # type: ignore[attr-defined]
cuda.is_current_stream_capturing = graphs.is_current_stream_capturing  # type: ignore[attr-defined]
