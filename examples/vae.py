"""A variational autoencoder on the 8x8 handwritten digits.

Shows: an encoder and a decoder of Linear layers, the reparameterisation trick with
randn_like, a loss of binary cross-entropy plus the KL divergence to the unit Gaussian,
Adam, and sampling new digits from the prior under no_grad.
"""

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits

import dlcore as torch
import dlcore.nn as nn
import dlcore.nn.functional as F
import dlcore.optim as optim
from dlcore.utils.data import DataLoader, TensorDataset


def digit_datasets(test_fraction, seed):
    """The digits flattened to 64 pixels in [0, 1], split at random into train/test."""
    pixels = (load_digits().data / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(pixels))
    n_test = int(len(pixels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return (TensorDataset(torch.from_numpy(pixels[train])),
            TensorDataset(torch.from_numpy(pixels[test])))


class VAE(nn.Module):
    def __init__(self, n_pixels=64, hidden=128, latent=8):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n_pixels, hidden), nn.ReLU())
        self.to_mean = nn.Linear(hidden, latent)
        self.to_logvar = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, n_pixels)
        )

    def encode(self, x):
        h = self.encoder(x)
        return self.to_mean(h), self.to_logvar(h)

    def decode(self, z):
        return self.decoder(z)  # logits of the pixel intensities

    def forward(self, x):
        mean, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        z = mean + std * torch.randn_like(std)  # differentiable in mean and std
        return self.decode(z), mean, logvar


def vae_loss(logits, mean, logvar, x):
    """Negative evidence lower bound, summed over the batch."""
    reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp())
    return reconstruction + kl


def show(images):
    """Print 8x8 images side by side as text, darker characters for brighter pixels."""
    shades = " .:-=+*#%@"
    for row in range(8):
        print("   ".join("".join(shades[min(int(v * 10), 9)] * 2 for v in image[row])
                         for image in images))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--latent", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train_set, test_set = digit_datasets(test_fraction=0.2, seed=args.seed)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=256)
    device = torch.device(args.device)
    model = VAE(latent=args.latent).to(device)
    optimizer = optim.Adam(model.parameters(), lr=args.lr)

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        train_loss = 0.0
        for (x,) in train_loader:
            x = x.to(device)
            optimizer.zero_grad()
            loss = vae_loss(*model(x), x) / x.size(0)
            loss.backward()
            optimizer.step()
            train_loss += loss.item() * x.size(0)

        model.eval()
        test_loss = 0.0
        with torch.no_grad():
            for (x,) in test_loader:
                x = x.to(device)
                test_loss += vae_loss(*model(x), x).item()
        print(f"epoch {epoch:2d}  train loss {train_loss / len(train_set):.3f}  "
              f"test loss {test_loss / len(test_set):.3f}  (nats per image)")
    print(f"final test loss {test_loss / len(test_set):.3f} ({time.perf_counter() - start:.1f} s)")

    with torch.no_grad():
        samples = torch.sigmoid(model.decode(torch.randn(6, args.latent, device=device)))
    print("digits sampled from the prior:")
    show(samples.view(-1, 8, 8).cpu().numpy())


if __name__ == "__main__":
    main()
