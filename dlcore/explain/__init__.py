"""``dlcore.explain``: which parts of an input a model's output rests on (Captum's methods).

>>> net = dlcore.models.LeNet().eval()
>>> x = dlcore.randn(2, 1, 8, 8)
>>> integrated_gradients(net, x, target=3).shape
(2, 1, 8, 8)

* gradients: :func:`saliency`, :func:`integrated_gradients` (with the convergence delta)
* layers: :func:`grad_cam`
* perturbation: :func:`occlusion`
* pictures: :func:`attribution_figure`

Every method takes a model (a Module, or any callable from a Tensor to (N, K) scores), the
inputs (N, ...) and ``target``: an int or N class indices (a sequence or a Tensor) saying
which output to explain; None for a model with one output per example. The model is run as
it is (call ``model.eval()`` first so that dropout does not make the maps random).
"""

from .figure import attribution_figure
from .gradients import approximation, integrated_gradients, saliency
from .layer import grad_cam
from .perturbation import occlusion

__all__ = ["approximation", "attribution_figure", "grad_cam", "integrated_gradients",
           "occlusion", "saliency"]
