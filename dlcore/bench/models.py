"""End-to-end training steps of the reference models (``dlcore.models``): forward, loss,
backward and optimizer step, as ``dlcore train`` runs them.

Cases: LeNet on digits (N=64, 1x8x8), ResNet-8 on 3x32x32 (N=32; quick: N=8), the LSTM
classifier on digit rows (N=64, T=8), the GRU regressor on the adding problem (N=64,
T=100) and one GAN step on ring points (discriminator and generator, N=256).
``samples_s`` is training samples per second. PyTorch runs the same architecture and step
when importable: on the CPU beside ``cpu`` (its threads: ``$OMP_NUM_THREADS``, default all
cores), on the GPU beside ``cuda`` (each step ending with a synchronize, as dlcore's); these
small models are dominated by per-op overhead, which is what the ratio shows.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import dlcore
from dlcore import models, optim
from dlcore.nn import functional as F

from .timing import time_host, time_pair

Step = Callable[[], None]


def _dlcore_cases(device: str, quick: bool) -> dict[str, tuple[int, Callable[[], Step]]]:
    """Case name -> (batch size, builder of a step closure)."""
    sync = dlcore.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def supervised(model: Any, x: Any, y: Any, loss: Callable) -> Step:
        model = model.to(device)
        opt = optim.Adam(model.parameters(), lr=1e-3)
        x, y = x.to(device), y.to(device)

        def step() -> None:
            opt.zero_grad()
            loss(model(x), y).backward()
            opt.step()
            sync()
        return step

    def gan() -> Step:
        g, d = models.MLPGenerator().to(device), models.MLPDiscriminator().to(device)
        og, od = optim.Adam(g.parameters()), optim.Adam(d.parameters())
        real = dlcore.randn(256, 2, device=device)
        ones, zeros = dlcore.ones(256, 1, device=device), dlcore.zeros(256, 1, device=device)
        bce = F.binary_cross_entropy_with_logits

        def step() -> None:
            fake = g(dlcore.randn(256, 2, device=device))
            od.zero_grad()
            (bce(d(real), ones) + bce(d(fake.detach()), zeros)).backward()
            od.step()
            og.zero_grad()
            bce(d(fake), ones).backward()
            og.step()
            sync()
        return step

    n_resnet = 8 if quick else 32
    labels = lambda n: dlcore.randint(0, 10, (n,))  # noqa: E731
    return {
        "lenet digits 1x8x8": (64, lambda: supervised(
            models.LeNet(), dlcore.rand(64, 1, 8, 8), labels(64), F.cross_entropy)),
        "resnet8 3x32x32": (n_resnet, lambda: supervised(
            models.ResNet(), dlcore.randn(n_resnet, 3, 32, 32), labels(n_resnet),
            F.cross_entropy)),
        "lstm classifier T=8": (64, lambda: supervised(
            models.LSTMClassifier(8, 10), dlcore.rand(64, 8, 8), labels(64),
            F.cross_entropy)),
        "gru adding T=100": (64, lambda: supervised(
            models.SequenceRegressor(2), dlcore.rand(64, 100, 2), dlcore.rand(64, 1),
            F.mse_loss)),
        "gan ring mlp": (256, gan),
    }


def _torch_cases(n_resnet: int, device: str = "cpu") -> dict[str, Callable[[], Step]]:
    """The same models and steps in PyTorch, on ``device`` ("cpu", or "cuda[:i]": each step
    then ends with a synchronize, as dlcore's do)."""
    import torch  # optional: a comparison, never a dependency
    from torch import nn  # optional: a comparison, never a dependency
    from torch.nn import functional as F  # optional: a comparison, never a dependency

    sync = ((lambda: torch.cuda.synchronize(device)) if device.startswith("cuda")
            else (lambda: None))

    def supervised(model: Any, x: Any, y: Any, loss: Callable) -> Step:
        model, x, y = model.to(device), x.to(device), y.to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step() -> None:
            opt.zero_grad()
            loss(model(x), y).backward()
            opt.step()
            sync()
        return step

    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                nn.ReLU(), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
            self.short = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x: Any) -> Any:
            return torch.relu(self.body(x) + self.short(x))

    class Last(nn.Module):
        def __init__(self, rnn: Any, out: int) -> None:
            super().__init__()
            self.rnn, self.head = rnn, nn.Linear(rnn.hidden_size, out)

        def forward(self, x: Any) -> Any:
            _, state = self.rnn(x)
            return self.head((state[0] if isinstance(state, tuple) else state)[-1])

    lenet = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Dropout(0.25), nn.Linear(256, 128), nn.ReLU(),
                          nn.Dropout(0.25), nn.Linear(128, 10))
    resnet = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                           nn.ReLU(), Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def gan() -> Step:
        g = nn.Sequential(nn.Linear(2, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 2))
        d = nn.Sequential(nn.Linear(2, 128), nn.LeakyReLU(0.2), nn.Linear(128, 128),
                          nn.LeakyReLU(0.2), nn.Linear(128, 1))
        g, d = g.to(device), d.to(device)
        og, od = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
        real = torch.randn(256, 2, device=device)
        ones, zeros = torch.ones(256, 1, device=device), torch.zeros(256, 1, device=device)
        bce = F.binary_cross_entropy_with_logits

        def step() -> None:
            fake = g(torch.randn(256, 2, device=device))
            od.zero_grad()
            (bce(d(real), ones) + bce(d(fake.detach()), zeros)).backward()
            od.step()
            og.zero_grad()
            bce(d(fake), ones).backward()
            og.step()
            sync()
        return step

    labels = lambda n: torch.randint(0, 10, (n,))  # noqa: E731
    return {
        "lenet digits 1x8x8": lambda: supervised(lenet, torch.rand(64, 1, 8, 8), labels(64),
                                                 F.cross_entropy),
        "resnet8 3x32x32": lambda: supervised(resnet, torch.randn(n_resnet, 3, 32, 32),
                                              labels(n_resnet), F.cross_entropy),
        "lstm classifier T=8": lambda: supervised(
            Last(nn.LSTM(8, 128, batch_first=True), 10), torch.rand(64, 8, 8), labels(64),
            F.cross_entropy),
        "gru adding T=100": lambda: supervised(
            Last(nn.GRU(2, 64, batch_first=True), 1), torch.rand(64, 100, 2),
            torch.rand(64, 1), F.mse_loss),
        "gan ring mlp": gan,
    }


def _reps(step: Step, quick: bool) -> int:
    """Repetitions sized to about 0.5 s (quick) or 2 s of ``step``."""
    step()
    t0 = time.perf_counter()
    step()
    once = time.perf_counter() - t0
    return int(np.clip((0.5 if quick else 2.0) / max(once, 1e-6), 3, 200))


def _time(step: Step, quick: bool, ref: Step | None = None) -> tuple[float, float | None]:
    """Median microseconds per step, and per step of the reference ``ref`` when given (its
    samples alternate with the step's: :func:`~dlcore.bench.timing.time_pair`)."""
    reps = _reps(step, quick)
    inner = 1 if reps < 30 else 5
    if ref is None:
        return time_host(step, reps, warmup=1, inner=inner), None
    reps = min(reps, _reps(ref, quick))
    inner = 1 if reps < 30 else 5
    return time_pair(step, ref, reps, warmup=1, inner=inner)


def _torch_device(device: str) -> str | None:
    """PyTorch's device for the reference column: the CPU beside cpu, the GPU beside cuda
    (where torch sees one), none beside emu or without PyTorch."""
    if importlib.util.find_spec("torch") is None:
        return None
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        import torch  # optional: a comparison, never a dependency

        return device if torch.cuda.is_available() else None
    return None


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    dlcore.manual_seed(0)
    cases = _dlcore_cases(device, quick)
    torch_device = _torch_device(device)
    torch_cases = _torch_cases(8 if quick else 32, torch_device) if torch_device else {}
    rows = []
    for name, (batch, build) in cases.items():
        us, ref = _time(build(), quick, torch_cases[name]() if name in torch_cases else None)
        row: dict[str, Any] = {"suite": "models", "case": f"{name} N={batch} train step",
                               "device": device, "median_us": us, "samples_s": batch / us * 1e6}
        if ref is not None:
            row.update(reference=f"torch-{torch_device}", reference_us=ref, ratio=us / ref)
        rows.append(row)
    return rows
