"""``attribution_figure``: a PNG of images with their integrated-gradient and Grad-CAM maps
(what ``dlcore train cnn`` writes as attributions.png). Shape letters: N images, C channels,
H and W their size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..autograd import no_grad
from ..nn import Module
from ..tensor import Tensor
from ._common import last_conv
from .gradients import integrated_gradients
from .layer import grad_cam


def _picture(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An image (C, H, W) as matplotlib shows it: gray for one channel, else RGB in [0, 1]."""
    if image.shape[0] == 1:
        return image[0], "gray"
    rgb = image[:3].transpose(1, 2, 0)
    span = rgb.max() - rgb.min()
    return (rgb - rgb.min()) / (span if span > 0 else 1), None


def attribution_figure(model: Module, images: Tensor, labels: Any, path: str | Path,
                       layer: Module | None = None, n_steps: int = 32) -> Path:
    """Write a grid to ``path``: one column per image (N, C, H, W), its label and the model's
    prediction above; rows: the image, its integrated gradients for the label (zero
    baseline, summed over channels; red for evidence for the class, blue against) and
    Grad-CAM of ``layer`` (default: the model's last Conv2d) upsampled over the image. The
    model runs in eval mode (its mode is restored after)."""
    import matplotlib  # the cli extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display needed

    if images.ndim != 4:
        raise ValueError(f"attribution_figure: images must be (N, C, H, W), got shape "
                         f"{tuple(images.shape)}")
    was_training = model.training
    model.eval()
    try:
        ig = integrated_gradients(model, images, labels, n_steps=n_steps)
        cam = grad_cam(model, images, labels, layer or last_conv(model),
                       upsample_to_input=True)
        with no_grad():
            predicted = model(images.detach()).argmax(1).numpy()
    finally:
        model.train(was_training)
    pictures, ig_maps, cams = images.numpy(), ig.numpy().sum(1), cam.numpy()[:, 0]
    wanted = labels.numpy() if isinstance(labels, Tensor) else np.broadcast_to(
        np.asarray(labels), (len(pictures),))
    n = len(pictures)
    fig, axes = plt.subplots(3, n, figsize=(1.2 * n + 0.8, 4.0), squeeze=False)
    for i in range(n):
        picture, cmap = _picture(pictures[i])
        axes[0, i].imshow(picture, cmap=cmap)
        axes[0, i].set_title(f"{wanted[i]} -> {predicted[i]}", fontsize=9,
                             color="black" if wanted[i] == predicted[i] else "red")
        bound = float(np.abs(ig_maps[i]).max()) or 1.0
        axes[1, i].imshow(ig_maps[i], cmap="RdBu_r", vmin=-bound, vmax=bound)
        axes[2, i].imshow(picture, cmap=cmap)
        axes[2, i].imshow(cams[i], cmap="jet", alpha=0.5, vmin=0,
                          vmax=float(cams[i].max()) or 1.0)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, name in zip(axes[:, 0], ("image", "integrated\ngradients", "Grad-CAM")):
        ax.set_ylabel(name, fontsize=9)
    fig.suptitle("label -> prediction; attributions for the label", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
