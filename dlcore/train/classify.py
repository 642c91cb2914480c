"""``dlcore train cnn`` and ``dlcore train rnn``: digit classifiers on the shipped 8x8 digits.

cnn: :class:`~dlcore.models.LeNet` on the images ``(N, 1, 8, 8)``. rnn:
:class:`~dlcore.models.LSTMClassifier` reading each image as a sequence of its 8 rows of 8
pixels, through two LSTM layers of 64 with dropout 0.1 between them (one layer of 128
gave 97.5-98.6% test accuracy over seeds 0-2; this, 98.1-99.4% over seeds 0-4). Both:
Adam with cosine annealing of the learning rate to zero over the run (the late small
steps settle the weights), cross-entropy, test accuracy on the 360 held-out images after
every epoch. ``--amp``: forward and loss under autocast (bfloat16 on the CPU, float16 with
backward and Adam through a GradScaler on cuda and emu); see :mod:`.common`.
Under ``mpiexec -n N`` the model trains in DistributedDataParallel on each rank's slice of
the global batch (:mod:`.parallel`); LeNet's dropout masks then differ per rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import nn, optim
from ..autograd import no_grad
from ..data import datasets
from ..device import Device
from ..explain import attribution_figure
from ..models import LeNet, LSTMClassifier
from ..nn import functional as F
from ..tensor import Tensor
from .common import Batches, Defaults, MixedPrecision, Options, Task, capturable
from .parallel import Ranks

# Defaults, chosen to reach the quality targets in about a minute on a 2-core laptop CPU.
DEFAULTS: dict[str, Defaults] = {"cnn": {"epochs": 30, "batch_size": 32, "lr": 2e-3},
                                  "rnn": {"epochs": 40, "batch_size": 32, "lr": 5e-3}}


class ClassifierTask(Task):
    """Cross-entropy training of ``model`` with train and test accuracy (the test set on
    every rank: the ranks' weights are the same, so are the figures)."""

    def __init__(self, name: str, model: nn.Module, train: Any, test: Any, options: Options,
                 device: Device, epochs: int, batch_size: int, lr: float,
                 ranks: Ranks | None = None) -> None:
        ranks = ranks or Ranks()
        model = model.to(device)
        batches = Batches(train, batch_size, options.seed, device, ranks)
        opt = optim.Adam(model.parameters(), lr=lr, **capturable(options, device))
        super().__init__(name=name, modules={"model": model}, optimizers={"optimizer": opt},
                         batches=batches,
                         config={"model": type(model).__name__, "epochs": epochs,
                                 "batch_size": batch_size, "lr": lr, "device": str(device)},
                         schedulers={"lr": optim.lr_scheduler.CosineAnnealingLR(opt, epochs)},
                         precision=MixedPrecision(device, options.amp))
        self.model, self.opt = model, opt
        self.trained = ranks.wrap(model)  # what the steps call: DDP under several ranks
        self.test = [t.to(device) for t in test.tensors]

    def step(self, batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        x, y = batch
        with self.precision.autocast():
            logits = self.trained(x)
            loss = F.cross_entropy(logits, y)
        scaler = self.precision.scaler
        self.opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(self.opt)
        scaler.update()
        correct = (logits.argmax(1) == y).float().mean()  # from argmax: in no graph
        return {"loss": loss.detach(), "train_accuracy": correct}

    def evaluate(self) -> dict[str, float]:
        x, y = self.test
        with no_grad():
            logits = self.model(x)
            return {"test_loss": F.cross_entropy(logits, y).item(),
                    "test_accuracy": (logits.argmax(1) == y).float().mean().item()}

    def finish(self, out: Path, history: list[dict[str, float]]) -> dict[str, Any]:
        """cnn: attributions.png, integrated gradients and Grad-CAM of the first test image
        of each class (dlcore.explain)."""
        if self.name == "cnn":
            x, y = self.test
            labels = y.numpy()
            first = np.array([np.flatnonzero(labels == c)[0] for c in np.unique(labels)])
            attribution_figure(self.model, x[first], y[first], out / "attributions.png")
        return {}


def build(kind: str, options: Options, device: Device,
          ranks: Ranks | None = None) -> tuple[Task, int]:
    """The cnn or rnn task (over ``ranks``: one process unless given) and its epochs."""
    d = DEFAULTS[kind]
    epochs = options.epochs or d["epochs"]
    batch_size, lr = options.batch_size or d["batch_size"], options.lr or d["lr"]
    if kind == "cnn":
        train, test = datasets.digits()
        model: nn.Module = LeNet()
    else:
        train, test = datasets.digit_rows()
        model = LSTMClassifier(input_size=8, num_classes=10, hidden_size=64, num_layers=2,
                               dropout=0.1)
    return ClassifierTask(kind, model, train, test, options, device, epochs, batch_size,
                          lr, ranks), epochs
