"""The built-in communication hooks of DistributedDataParallel (PyTorch's ``default_hooks``).

A hook is ``hook(state, bucket) -> Future``: it starts the reduction of ``bucket.buffer()``
and returns a Future whose value is the averaged flat gradient. Register one with
``ddp.register_comm_hook(state, hook)``::

    from dlcore.distributed.algorithms.ddp_comm_hooks import default_hooks
    model.register_comm_hook(None, default_hooks.fp16_compress_hook)

There is no ``bf16_compress_hook``: dlcore has no bfloat16 dtype (NumPy and CuPy lack it).
"""

from __future__ import annotations

from typing import Any

from ... import collectives
from ...collectives import Future
from ...grad_bucket import GradBucket
from ...process_group import ReduceOp, get_world_size
from ....dtypes import float16


def _all_reduce_async(tensor: Any) -> Future:
    work = collectives.all_reduce(tensor, ReduceOp.SUM, async_op=True)
    assert work is not None  # async_op=True always returns the Work
    return work.get_future()


def allreduce_hook(state: Any, bucket: GradBucket) -> Future:
    """DDP's default: divide by the world size, then sum over the ranks (the mean), in the
    bucket's own dtype."""
    buffer = bucket.buffer()
    buffer.div_(get_world_size())
    return _all_reduce_async(buffer).then(lambda fut: fut.value()[0])


def fp16_compress_hook(state: Any, bucket: GradBucket) -> Future:
    """Send the gradients as float16: half the bytes of float32, at float16's precision
    (about 3 decimal digits; values beyond 65504 overflow). The division by the world size
    comes first, so the sum stays in float16's range as well as the inputs do."""
    buffer = bucket.buffer()
    compressed = (buffer / get_world_size()).to(float16)

    def decompress(fut: Future) -> Any:
        return buffer.copy_(fut.value()[0])

    return _all_reduce_async(compressed).then(decompress)
