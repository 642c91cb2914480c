"""``dlcore train adding``: the adding problem with T = 100 steps (Hochreiter & Schmidhuber,
1997): read 100 (value, marker) pairs and output the sum of the two marked values.

A model that remembers nothing predicts 1.0 and scores MSE 1/6 (about 0.167); the target is
test MSE < 0.01, which needs the value seen up to 100 steps back. A GRU
(:class:`~dlcore.models.SequenceRegressor`) with Adam, gradient-norm clipping at 1 (a
guard against the gradient bursts of long recurrences) and cosine annealing leaves the
plateau in its second epoch (steps 250-500 at batch 64) and is below 0.01 by the end of
the third, for seeds 0-4; five epochs end at 0.0018-0.0036. Training set:
16,000 sequences (seed 1); test set: 1,000 (seed 2). ``--amp``: forward and loss under
autocast (bfloat16 on the CPU, float16 elsewhere), the gradients unscaled before clipping
(the clip threshold is in true units); see :mod:`.common`. Under ``mpiexec -n N``:
DistributedDataParallel on each rank's slice of the global batch, the clipping applied to
the averaged gradient (as one process clips the whole batch's); see :mod:`.parallel`.
"""

from __future__ import annotations

from .. import optim
from ..autograd import no_grad
from ..data import datasets
from ..device import Device
from ..models import SequenceRegressor
from ..nn import functional as F
from ..nn.utils import clip_grad_norm_
from ..tensor import Tensor
from .common import Batches, Defaults, MixedPrecision, Options, Task, capturable
from .parallel import Ranks

SEQ_LEN, TRAIN_SIZE, TEST_SIZE = 100, 16_000, 1_000
DEFAULTS: Defaults = {"epochs": 5, "batch_size": 64, "lr": 3e-3}


class AddingTask(Task):
    """Mean-squared-error regression of the marked sum."""

    def __init__(self, options: Options, device: Device, epochs: int, batch_size: int,
                 lr: float, ranks: Ranks | None = None) -> None:
        ranks = ranks or Ranks()
        model = SequenceRegressor(input_size=2).to(device)
        opt = optim.Adam(model.parameters(), lr=lr, **capturable(options, device))
        train = datasets.adding_problem(TRAIN_SIZE, SEQ_LEN, seed=1)
        super().__init__(name="adding", modules={"model": model},
                         optimizers={"optimizer": opt},
                         batches=Batches(train, batch_size, options.seed, device, ranks),
                         config={"model": "SequenceRegressor(gru)", "seq_len": SEQ_LEN,
                                 "epochs": epochs, "batch_size": batch_size, "lr": lr,
                                 "device": str(device)},
                         schedulers={"lr": optim.lr_scheduler.CosineAnnealingLR(opt, epochs)},
                         precision=MixedPrecision(device, options.amp))
        self.model, self.opt = model, opt
        self.trained = ranks.wrap(model)  # what the steps call: DDP under several ranks
        self.test = [t.to(device) for t in
                     datasets.adding_problem(TEST_SIZE, SEQ_LEN, seed=2).tensors]

    def step(self, batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        x, y = batch
        with self.precision.autocast():
            loss = F.mse_loss(self.trained(x), y)
        scaler = self.precision.scaler
        self.opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(self.opt)  # clip the true gradients, not the scaled ones
        clip_grad_norm_(self.model.parameters(), 1.0)
        scaler.step(self.opt)
        scaler.update()
        return {"loss": loss.detach()}

    def evaluate(self) -> dict[str, float]:
        x, y = self.test
        with no_grad():
            return {"test_mse": F.mse_loss(self.model(x), y).item()}


def build(options: Options, device: Device, ranks: Ranks | None = None) -> tuple[Task, int]:
    """The adding task (over ``ranks``: one process unless given) and its epochs."""
    epochs = options.epochs or DEFAULTS["epochs"]
    return AddingTask(options, device, epochs, options.batch_size or DEFAULTS["batch_size"],
                      options.lr or DEFAULTS["lr"], ranks), epochs
