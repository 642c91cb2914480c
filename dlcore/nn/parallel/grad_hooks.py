"""Per-parameter gradient hooks for DistributedDataParallel, outside the core.

DDP must learn, during backward, the moment each parameter's gradient for this backward is
complete, to start a bucket's all-reduce while backward goes on. dlcore's autograd has no
hook for that yet (no ``Tensor.register_post_accumulate_grad_hook``), so this module puts a
node of its own in front of the leaf's ``AccumulateGrad``: every graph built afterwards
reaches the leaf through :class:`GradHook` (a leaf's edge is its ``_accum`` node), whose
``backward`` receives the leaf's summed gradient (the engine runs a node once all its
inputs' gradients have arrived) and passes on what the callback returns to a fresh
``AccumulateGrad``, the node right after it in the engine's order.

NOTE: the core change that would replace this file: ``Tensor.register_post_accumulate_grad_hook
(hook)`` keeping hooks on the leaf's AccumulateGrad node, run by ``AccumulateGrad.accumulate``
after it accumulated (and not by ``autograd.grad``, which accumulates nothing). Until then:
``Tensor.set_`` to another device drops the node (``_accum = None``; DDP refuses a module
moved after wrapping anyway), and ``dlcore.autograd.grad`` through a wrapped parameter runs
the hook too (PyTorch's DDP does not support ``autograd.grad`` either).
"""

from __future__ import annotations

from collections.abc import Callable

from ... import autograd
from ...tensor import Tensor

# receives the leaf's gradient for this backward; returns what AccumulateGrad then adds to
# .grad (the gradient itself, another tensor, or None to add nothing)
Callback = Callable[[Tensor], Tensor | None]


class GradHook(autograd.Function):
    """An identity node in front of one leaf's AccumulateGrad that calls ``callback``."""

    def __init__(self, leaf: Tensor, callback: Callback) -> None:
        self.device = leaf._device
        self.accumulator = autograd.AccumulateGrad(leaf)
        self.next_functions = ((self.accumulator, 0),)
        self.needs_input_grad = (True,)
        self.callback = callback

    def backward(self, grad: Tensor) -> tuple[Tensor | None]:
        return (self.callback(grad),)

    def _free(self) -> None:
        """Keep the node: like AccumulateGrad it serves every graph, not one backward."""


def install(leaf: Tensor, callback: Callback) -> GradHook:
    """Route ``leaf``'s future gradients through ``callback``; returns the node."""
    node = GradHook(leaf, callback)
    leaf._accum = node
    return node
