"""Polynomial regression with a single nn.Linear layer trained by SGD.

Shows: features built from x (x, x^2, x^3), nn.Linear as the model, MSELoss, SGD with
momentum over a shuffled DataLoader, and the learned coefficients printed next to the
true ones that generated the data.
"""

import argparse
import time

import numpy as np

import dlcore as torch
import dlcore.nn as nn
import dlcore.optim as optim
from dlcore.utils.data import DataLoader, TensorDataset

TRUE_WEIGHTS = [1.5, -2.0, 0.7]  # of x, x^2, x^3
TRUE_BIAS = 0.5


def make_data(n, degree, noise, rng):
    """Points (features, y) of the true cubic on x in [-1.5, 1.5], with Gaussian noise."""
    x = rng.uniform(-1.5, 1.5, (n, 1))
    features = np.concatenate([x ** (i + 1) for i in range(degree)], axis=1)
    y = features @ np.array(TRUE_WEIGHTS)[:, None] + TRUE_BIAS + rng.normal(0, noise, (n, 1))
    return torch.from_numpy(features.astype(np.float32)), torch.from_numpy(y.astype(np.float32))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    degree = len(TRUE_WEIGHTS)
    train_x, train_y = make_data(args.samples, degree, args.noise, rng)
    device = torch.device(args.device)
    test_x, test_y = make_data(200, degree, args.noise, rng)
    test_x, test_y = test_x.to(device), test_y.to(device)
    loader = DataLoader(TensorDataset(train_x, train_y), batch_size=args.batch_size,
                        shuffle=True)

    model = nn.Linear(degree, 1).to(device)
    loss_fn = nn.MSELoss()
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        train_loss = 0.0
        for features, y in loader:
            features, y = features.to(device), y.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(features), y)
            loss.backward()
            optimizer.step()
            train_loss += loss.item() * y.size(0)
        model.eval()
        with torch.no_grad():
            test_loss = loss_fn(model(test_x), test_y).item()
        if epoch == 1 or epoch % 5 == 0:
            print(f"epoch {epoch:3d}  train loss {train_loss / len(train_x):.5f}  "
                  f"test loss {test_loss:.5f}")
    print(f"final test loss {test_loss:.5f} (noise variance {args.noise ** 2:.5f}; "
          f"{time.perf_counter() - start:.1f} s)")

    learned = model.weight.detach().view(-1).tolist()
    for i, (true, got) in enumerate(zip(TRUE_WEIGHTS, learned), start=1):
        print(f"coefficient of x^{i}: true {true:+.3f}  learned {got:+.3f}")
    print(f"bias:               true {TRUE_BIAS:+.3f}  learned {model.bias.item():+.3f}")


if __name__ == "__main__":
    main()
