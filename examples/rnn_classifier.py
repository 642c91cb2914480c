"""A GRU that classifies the 8x8 handwritten digits by reading them one row at a time.

Shows: nn.GRU with batch_first=True over (N, T, features) sequences, classification from
the last layer's final hidden state, CrossEntropyLoss with Adam and a learning-rate
schedule, and train/eval loops with loss and accuracy per epoch.
"""

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits

import dlcore as torch
import dlcore.nn as nn
import dlcore.optim as optim
from dlcore.utils.data import DataLoader, TensorDataset


def digit_row_datasets(test_fraction, seed):
    """Each digit as a sequence of 8 rows of 8 pixels: (N, T=8, 8), split into train/test."""
    digits = load_digits()
    rows = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(len(labels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return (TensorDataset(torch.from_numpy(rows[train]), torch.from_numpy(labels[train])),
            TensorDataset(torch.from_numpy(rows[test]), torch.from_numpy(labels[test])))


class RowReader(nn.Module):
    def __init__(self, row_size=8, hidden=64, layers=1, classes=10):
        super().__init__()
        self.gru = nn.GRU(row_size, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, rows):
        _, h_n = self.gru(rows)  # h_n: (layers, N, hidden)
        return self.head(h_n[-1])


def run_epoch(model, loader, loss_fn, device, optimizer=None):
    """Mean loss and accuracy over ``loader``; a training pass when given an optimizer."""
    model.train(optimizer is not None)
    total_loss, correct, count = 0.0, 0, 0
    for rows, labels in loader:
        rows, labels = rows.to(device), labels.to(device)
        logits = model(rows)
        loss = loss_fn(logits, labels)
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        total_loss += loss.item() * labels.size(0)
        correct += (logits.argmax(dim=1) == labels).sum().item()
        count += labels.size(0)
    return total_loss / count, correct / count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train_set, test_set = digit_row_datasets(test_fraction=0.2, seed=args.seed)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=256)
    device = torch.device(args.device)
    model = RowReader(hidden=args.hidden).to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=args.lr)
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        train_loss, train_acc = run_epoch(model, train_loader, loss_fn, device, optimizer)
        scheduler.step()
        with torch.no_grad():
            test_loss, test_acc = run_epoch(model, test_loader, loss_fn, device)
        print(f"epoch {epoch:2d}  train loss {train_loss:.4f}  train accuracy {train_acc:.4f}  "
              f"test loss {test_loss:.4f}  test accuracy {test_acc:.4f}")
    print(f"final test accuracy {test_acc:.4f} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
