"""Grad-CAM (Selvaraju et al., 2017): where in a layer's feature maps the evidence for a
class lies. Shape letters: N examples, C channels of the layer, H and W its map's size.

For activations ``A`` (N, C, H, W) of ``layer`` and the gradient ``G`` of each example's
``target`` score with respect to them, each channel's weight is the spatial mean of ``G``
and the map is ``relu(sum over C of weight * A)``, (N, 1, H, W), as Captum's
``LayerGradCam`` with ``relu_attributions=True``.
"""

from __future__ import annotations

from typing import Any

from ..autograd import enable_grad, grad, no_grad
from ..nn import Module
from ..nn import functional as F
from ..tensor import Tensor
from ._common import Target, check_input, scores, targets


def grad_cam(model: Any, inputs: Tensor, target: Target, layer: Module,
             relu_attributions: bool = True, upsample_to_input: bool = False) -> Tensor:
    """Grad-CAM maps of ``layer`` (a module of ``model``, seen through a forward hook) for
    each example's ``target``: (N, 1, H, W) at the layer's resolution, or at the inputs'
    with ``upsample_to_input`` (bilinear; 4-d inputs). Activations with no spatial dims,
    (N, C), give (N, 1) (the channel weights are then the gradients themselves).

    >>> net = dlcore.models.LeNet()
    >>> grad_cam(net, dlcore.randn(2, 1, 8, 8), 3, net.features[3]).shape
    (2, 1, 4, 4)
    """
    op = "grad_cam"
    x = check_input(op, model, inputs)
    if not isinstance(layer, Module):
        raise TypeError(f"{op}: layer must be a Module of the model, got {type(layer).__name__}")
    t = targets(op, target, x.shape[0])
    seen: list[Any] = []
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        # NOTE: the input requires grad so that the activations are in a graph even when the
        # model's parameters are frozen
        with enable_grad():
            s = scores(op, model(x.requires_grad_()), t)
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"{op}: the layer {type(layer).__name__} did not run in the model's "
                         "forward")
    activations = seen[-1]
    if not isinstance(activations, Tensor) or activations.ndim < 2:
        raise ValueError(f"{op}: the layer must output one Tensor of shape (N, C, ...), got "
                         + (f"shape {tuple(activations.shape)}" if isinstance(activations, Tensor)
                            else type(activations).__name__))
    (g,) = grad(s.sum(), activations, allow_unused=True)
    if g is None:
        raise ValueError(f"{op}: the scores do not depend on the layer's output")
    with no_grad():
        spatial = tuple(range(2, g.ndim))
        weights = g.mean(spatial, keepdim=True) if spatial else g
        cam = (weights * activations).sum(1, keepdim=True)
        if relu_attributions:
            cam = F.relu(cam)
        if upsample_to_input:
            if cam.ndim != 4 or x.ndim != 4:
                raise ValueError(f"{op}: upsample_to_input needs 4-d inputs and maps, got "
                                 f"inputs {tuple(x.shape)} and maps {tuple(cam.shape)}")
            cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode="bilinear",
                                align_corners=False)
    return cam.detach()
