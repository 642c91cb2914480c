"""An LSTMCell that learns to continue sine-like waves, one time step at a time.

Shows: nn.LSTMCell driven by an explicit loop over time, a Linear read-out, next-step
training with MSELoss and Adam, and free-running prediction of the future, where each
prediction is fed back in as the next input.
"""

import argparse
import time

import numpy as np

import dlcore as torch
import dlcore.nn as nn
import dlcore.optim as optim
from dlcore.utils.data import DataLoader, TensorDataset


def make_waves(n, length, rng):
    """(n, length) sine waves with random amplitude, frequency and phase, each with its
    second harmonic added so that the shape is not a pure sine, plus a little noise."""
    t = np.arange(length)[None, :]
    amplitude = rng.uniform(0.5, 1.0, (n, 1))
    frequency = rng.uniform(0.1, 0.2, (n, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    angle = frequency * t + phase
    waves = amplitude * (np.sin(angle) + 0.3 * np.sin(2 * angle))
    return (waves + rng.normal(0, 0.01, waves.shape)).astype(np.float32)


class WavePredictor(nn.Module):
    def __init__(self, hidden=48):
        super().__init__()
        self.hidden = hidden
        self.cell = nn.LSTMCell(1, hidden)
        self.readout = nn.Linear(hidden, 1)

    def forward(self, inputs, future=0):
        """Predict each next value of ``inputs`` (N, T), then ``future`` more steps."""
        h = torch.zeros(inputs.size(0), self.hidden, device=inputs.device)
        c = torch.zeros(inputs.size(0), self.hidden, device=inputs.device)
        outputs = []
        for x in inputs.split(1, dim=1):  # x: (N, 1), one step
            h, c = self.cell(x, (h, c))
            outputs.append(self.readout(h))
        for _ in range(future):  # feed each prediction back in
            h, c = self.cell(outputs[-1], (h, c))
            outputs.append(self.readout(h))
        return torch.cat(outputs, dim=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--sequences", type=int, default=256)
    parser.add_argument("--length", type=int, default=60)
    parser.add_argument("--future", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    device = torch.device(args.device)
    train = torch.from_numpy(make_waves(args.sequences, args.length, rng))
    test = torch.from_numpy(make_waves(64, args.length + args.future, rng)).to(device)
    loader = DataLoader(TensorDataset(train[:, :-1], train[:, 1:]),
                        batch_size=args.batch_size, shuffle=True)
    model = WavePredictor().to(device)
    loss_fn = nn.MSELoss()
    optimizer = optim.Adam(model.parameters(), lr=args.lr)

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        train_loss = 0.0
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            train_loss += loss.item() / len(loader)

        model.eval()
        with torch.no_grad():
            seen = test[:, : args.length]
            # output i predicts step i + 1: the last one of ``seen`` starts the future
            predicted = model(seen, future=args.future - 1)
            next_step = loss_fn(predicted[:, : args.length - 1], seen[:, 1:]).item()
            free_run = loss_fn(predicted[:, args.length - 1:], test[:, args.length:]).item()
        print(f"epoch {epoch:2d}  train loss {train_loss:.5f}  test next-step loss "
              f"{next_step:.5f}  test {args.future}-step future loss {free_run:.5f}")
    print(f"final future loss {free_run:.5f} (the waves' variance is "
          f"{test.var().item():.3f}; {time.perf_counter() - start:.1f} s)")

    print("one test wave's future, true vs predicted:")
    print(" ".join(f"{v:+.2f}" for v in test[0, args.length:].tolist()))
    print(" ".join(f"{v:+.2f}" for v in predicted[0, args.length - 1:].tolist()))


if __name__ == "__main__":
    main()
