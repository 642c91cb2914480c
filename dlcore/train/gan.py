"""``dlcore train gan``: a GAN on the ring of 8 Gaussians, or (``--data digits``) a DCGAN
on the 8x8 digits.

Ring: modes evenly spaced on a circle of radius 2, std 0.02 (VEEGAN's and PacGAN's
benchmark). After training, 2,500 samples from fixed noise are scored as those papers do:
a sample is *high-quality* when it lies within 3 std (0.06) of some mode's centre; a mode
is *covered* when it holds at least one high-quality sample. ``modes_covered`` (of 8) and
``high_quality_fraction`` go to metrics.json, the samples to samples.npy, a scatter over
the modes to samples.png, and the published figures are printed beside ours.

Recipe: MLP generator and discriminator (2 hidden layers of 128), the non-saturating
generator loss, Adam (lr 1e-3, betas (0.5, 0.999)) for both, one discriminator step per
generator step, and the learning rate decayed linearly to zero over the run (the clusters
tighten as it falls). ``--pack 2`` packs 2 samples per discriminator input (PacGAN2). Over
seeds 0-4 the plain GAN covered all 8 modes with 92.8-96.3% high-quality samples (mean
94.9%), PacGAN2 all 8 with 87.3-95.8% (mean 92.9%): with this recipe packing buys no
coverage, so the default is the plain GAN (measured 2026-11-25, 2-core x86_64 VM).

Digits: the DCGAN pair of :mod:`dlcore.models.gan` on the 1,437 training images, the same
losses and Adam betas at lr 5e-4 without decay, 60 epochs of 22 batches (about 30 s on 2
cores); samples.png shows 64 digits from the fixed evaluation noise. There is no agreed
score for 8x8 digits, so metrics.json holds the losses only.

``--amp``: both networks' forward and the losses under autocast (bfloat16 on the CPU, float16
elsewhere), and one GradScaler
for the two optimizers, updated once per iteration after both steps (PyTorch's recipe for
several losses and optimizers); samples are drawn in float32. See :mod:`.common`.

Under ``mpiexec -n N`` (:mod:`.parallel`) both networks train in DistributedDataParallel:
each rank takes its B/N slice of the global batch of real samples and draws B/N noise
vectors from its own generator stream, so a step still sees B real and B generated
samples. The generator's loss runs the bare discriminator: the gradient it leaves in D's
parameters is never used (``opt_d.zero_grad()`` clears it before D's next backward), so
it is not worth an all-reduce. The DCGAN's BatchNorm normalises over each rank's B/N
samples (dlcore has no SyncBatchNorm).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import nn, optim
from ..autograd import no_grad
from ..creation import from_numpy, ones, randn, zeros
from ..data import datasets
from ..device import Device
from ..models import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator
from ..nn import functional as F
from ..tensor import Tensor
from .common import Batches, Defaults, MixedPrecision, Options, Task, capturable
from .parallel import OptionError, Ranks

MODES, RADIUS, STD, EVAL_SAMPLES = 8, 2.0, 0.02, 2500
RING_TRAIN_SIZE = 32_000


class GANDefaults(Defaults):
    pack: int  # samples per discriminator input (PacGAN)


DEFAULTS: dict[str, GANDefaults] = {
    "ring": {"epochs": 80, "batch_size": 256, "lr": 1e-3, "pack": 1},
    "digits": {"epochs": 60, "batch_size": 64, "lr": 5e-4, "pack": 1}}

# (source, method, modes covered of 8, high-quality %) on this benchmark.
PUBLISHED = [("VEEGAN (Srivastava et al., 2017), table 1", "GAN", 1.0, 99.3),
             ("VEEGAN (Srivastava et al., 2017), table 1", "Unrolled GAN", 7.6, 35.6),
             ("VEEGAN (Srivastava et al., 2017), table 1", "VEEGAN", 8.0, 52.9),
             ("PacGAN (Lin et al., 2018), table 2", "GAN", 6.3, 98.2),
             ("PacGAN (Lin et al., 2018), table 2", "PacGAN2", 7.9, 95.6)]


def ring_centres() -> np.ndarray:
    angle = 2.0 * np.pi * np.arange(MODES) / MODES
    return RADIUS * np.stack([np.cos(angle), np.sin(angle)], axis=1)


def score_ring(samples: np.ndarray) -> dict[str, float]:
    """``modes_covered`` and ``high_quality_fraction`` of ``samples`` (n, 2), as defined
    in the module docstring."""
    distance = np.linalg.norm(samples[:, None, :] - ring_centres()[None], axis=2)
    high = distance.min(axis=1) <= 3 * STD
    covered = np.unique(distance.argmin(axis=1)[high])
    return {"modes_covered": int(covered.size), "high_quality_fraction": float(high.mean())}


class GANTask(Task):
    """Alternating discriminator and generator steps with logits-based BCE losses."""

    def __init__(self, options: Options, device: Device, epochs: int, batch_size: int,
                 lr: float, pack: int, ranks: Ranks | None = None) -> None:
        ranks = ranks or Ranks()
        self.data_kind = options.data
        local = ranks.check_batch(batch_size)  # this rank's samples per step
        if self.data_kind == "ring":
            if local % pack:
                per_rank = f" ({local} per rank of {ranks.world_size})" \
                    if ranks.parallel else ""
                raise OptionError(f"--batch-size {batch_size}{per_rank} must be a multiple of "
                                  f"--pack {pack}")
            train = datasets.ring(RING_TRAIN_SIZE, MODES, RADIUS, STD, seed=1)
            gen: nn.Module = MLPGenerator()
            disc: nn.Module = MLPDiscriminator(pack=pack)
        else:
            if pack != 1:
                raise OptionError("--pack applies to --data ring only")
            train = datasets.digits()[0]
            gen, disc = DCGANGenerator(), DCGANDiscriminator()
        gen, disc = gen.to(device), disc.to(device)
        betas = (0.5, 0.999)
        opt_g = optim.Adam(gen.parameters(), lr=lr, betas=betas, **capturable(options, device))
        opt_d = optim.Adam(disc.parameters(), lr=lr, betas=betas, **capturable(options, device))
        decay = {f"lr_{k}": optim.lr_scheduler.LambdaLR(o, lambda e: 1.0 - e / epochs)
                 for k, o in (("g", opt_g), ("d", opt_d))}
        super().__init__(name="gan", modules={"generator": gen, "discriminator": disc},
                         optimizers={"generator": opt_g, "discriminator": opt_d},
                         batches=Batches(train, batch_size, options.seed, device, ranks),
                         config={"data": self.data_kind, "pack": pack, "epochs": epochs,
                                 "batch_size": batch_size, "lr": lr, "betas": list(betas),
                                 "device": str(device)},
                         schedulers=decay if self.data_kind == "ring" else {},
                         precision=MixedPrecision(device, options.amp))
        self.gen, self.disc, self.opt_g, self.opt_d = gen, disc, opt_g, opt_d
        # what the steps call: DDP under several ranks
        self.gen_trained, self.disc_trained = ranks.wrap(gen), ranks.wrap(disc)
        self.device, self.batch_size = device, local
        self.real_label = ones(local // pack, 1, device=device)
        self.fake_label = zeros(local // pack, 1, device=device)
        # Fixed evaluation noise, apart from the training RNG: scoring never moves training.
        noise = np.random.default_rng(options.seed).standard_normal(
            (EVAL_SAMPLES, gen.noise_dim)).astype(np.float32)
        self.eval_noise = from_numpy(noise).to(device)

    def step(self, batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        real = batch[0]
        scaler = self.precision.scaler
        with self.precision.autocast():
            fake = self.gen_trained(randn(self.batch_size, self.gen.noise_dim,
                                          device=self.device))
            loss_d = (F.binary_cross_entropy_with_logits(self.disc_trained(real),
                                                         self.real_label)
                      + F.binary_cross_entropy_with_logits(self.disc_trained(fake.detach()),
                                                           self.fake_label))
        self.opt_d.zero_grad()
        scaler.scale(loss_d).backward()
        scaler.step(self.opt_d)
        # Non-saturating loss: the generator maximises log D(G(z)) (Goodfellow et al., 2014).
        # NOTE: a region of its own: the first one's cached low-precision copies of D's weights
        # predate opt_d's step. The bare discriminator: D's gradients from this loss are
        # discarded, so DDP need not average them.
        with self.precision.autocast():
            loss_g = F.binary_cross_entropy_with_logits(self.disc(fake), self.real_label)
        self.opt_g.zero_grad()
        scaler.scale(loss_g).backward()
        scaler.step(self.opt_g)
        scaler.update()
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}

    def samples(self) -> np.ndarray:
        """The generator's output for the fixed evaluation noise (run in eval mode)."""
        with no_grad():
            return self.gen(self.eval_noise).numpy()

    def evaluate(self) -> dict[str, float]:
        if self.data_kind != "ring":
            return {}
        return score_ring(self.samples())

    def finish(self, out: Path, history: list[dict[str, float]]) -> dict[str, Any]:
        samples = self.samples()
        if self.data_kind == "ring":
            np.save(out / "samples.npy", samples)
            plot_ring(samples, out / "samples.png")
            return {"published": [{"source": s, "method": m, "modes_covered": c,
                                   "high_quality_percent": q} for s, m, c, q in PUBLISHED]}
        plot_digits(samples[:64], out / "samples.png")
        return {}

    def progress_figures(self, means: dict[str, float]) -> dict[str, str]:
        return {"D": f"{means['loss_d']:.3f}", "G": f"{means['loss_g']:.3f}"}


def comparison_table(metrics: dict[str, Any]) -> str:
    """Our ring result beside the published rows, as printed after training."""
    rows = [(f"{m} [{s}]", f"{c:.1f}", f"{q:.1f}") for s, m, c, q in PUBLISHED]
    name = "GAN" if metrics["config"]["pack"] == 1 else f"PacGAN{metrics['config']['pack']}"
    rows.append((f"{name} [dlcore, this run, seed {metrics['config']['seed']}]",
                 str(metrics["modes_covered"]), f"{100 * metrics['high_quality_fraction']:.1f}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'method':<{width}}  modes (of 8)  high-quality %"]
    lines += [f"{a:<{width}}  {b:>12}  {c:>14}" for a, b, c in rows]
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib  # the cli extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display needed

    return plt


def plot_ring(samples: np.ndarray, path: Path) -> None:
    """Generated points over the modes, each mode ringed at the 3-std radius."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, label="generated")
    for i, (x, y) in enumerate(ring_centres()):
        ax.add_patch(plt.Circle((x, y), 3 * STD, fill=False, color="red",
                                label="3 std of a mode" if i == 0 else None))
    ax.set_aspect("equal")
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    ax.legend(loc="upper right")
    ax.set_title(f"{len(samples)} generated samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_digits(images: np.ndarray, path: Path) -> None:
    """An 8x8 grid of generated digit images."""
    plt = _pyplot()
    fig, axes = plt.subplots(8, 8, figsize=(6, 6))
    for ax, image in zip(axes.flat, images):
        ax.imshow(image[0], cmap="gray_r", vmin=0, vmax=1)
        ax.axis("off")
    fig.suptitle("generated digits")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build(options: Options, device: Device, ranks: Ranks | None = None) -> tuple[Task, int]:
    """The GAN task for ``options.data`` (over ``ranks``: one process unless given) and its
    number of epochs."""
    if options.data not in DEFAULTS:
        raise OptionError(f"--data must be one of {sorted(DEFAULTS)}, got {options.data!r}")
    d = DEFAULTS[options.data]
    epochs = options.epochs or d["epochs"]
    pack = options.pack or d["pack"]
    return GANTask(options, device, epochs, options.batch_size or d["batch_size"],
                   options.lr or d["lr"], pack, ranks), epochs
