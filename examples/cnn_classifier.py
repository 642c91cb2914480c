"""A small convolutional network that classifies the 8x8 handwritten digits.

Shows: an nn.Module subclass built from Conv2d, ReLU, MaxPool2d and Linear layers, a
DataLoader over a TensorDataset, CrossEntropyLoss with Adam, a training loop and an
evaluation loop under no_grad, with loss and accuracy printed per epoch.
"""

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits

import dlcore as torch
import dlcore.nn as nn
import dlcore.optim as optim
from dlcore.utils.data import DataLoader, TensorDataset


def digit_datasets(test_fraction, seed):
    """The 1,797 digits as (N, 1, 8, 8) images in [0, 1], split at random into train/test."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(len(labels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return (TensorDataset(torch.from_numpy(images[train]), torch.from_numpy(labels[train])),
            TensorDataset(torch.from_numpy(images[test]), torch.from_numpy(labels[test])))


class DigitCNN(nn.Module):
    def __init__(self, channels=16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * channels * 2 * 2, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def train_epoch(model, loader, loss_fn, optimizer, device):
    model.train()
    total_loss, count = 0.0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * labels.size(0)
        count += labels.size(0)
    return total_loss / count


def evaluate(model, loader, loss_fn, device):
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            total_loss += loss_fn(logits, labels).item() * labels.size(0)
            correct += (logits.argmax(dim=1) == labels).sum().item()
            count += labels.size(0)
    return total_loss / count, correct / count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--save", help="write the trained weights to this file, then reload them")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train_set, test_set = digit_datasets(test_fraction=0.2, seed=args.seed)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=256)

    device = torch.device(args.device)
    model = DigitCNN(args.channels).to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=args.lr)
    print(f"{sum(p.numel() for p in model.parameters())} parameters, "
          f"{len(train_set)} training and {len(test_set)} test images")

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        train_loss = train_epoch(model, train_loader, loss_fn, optimizer, device)
        test_loss, test_acc = evaluate(model, test_loader, loss_fn, device)
        print(f"epoch {epoch:2d}  train loss {train_loss:.4f}  test loss {test_loss:.4f}  "
              f"test accuracy {test_acc:.4f}")
    print(f"final test accuracy {test_acc:.4f} ({time.perf_counter() - start:.1f} s)")

    if args.save:
        torch.save(model.state_dict(), args.save)
        restored = DigitCNN(args.channels).to(device)
        restored.load_state_dict(torch.load(args.save, map_location=device))
        _, restored_acc = evaluate(restored, test_loader, loss_fn, device)
        print(f"saved to {args.save}; reloaded test accuracy {restored_acc:.4f}")


if __name__ == "__main__":
    main()
