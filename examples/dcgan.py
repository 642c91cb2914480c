"""A DCGAN that learns to draw 8x8 handwritten digits.

Shows: a generator of ConvTranspose2d layers and a discriminator of Conv2d layers with
BatchNorm2d and LeakyReLU, DCGAN's N(0, 0.02) weight initialisation through Module.apply,
BCEWithLogitsLoss, two Adam optimizers, and the fakes detached for the discriminator's step.
"""

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits

import dlcore as torch
import dlcore.nn as nn
import dlcore.optim as optim
from dlcore.utils.data import DataLoader, TensorDataset


class Generator(nn.Module):
    def __init__(self, noise=16, width=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(noise, width, kernel_size=4, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),  # 1x1 -> 4x4
            nn.ConvTranspose2d(width, 1, kernel_size=4, stride=2, padding=1),
            nn.Tanh(),  # 4x4 -> 8x8, pixels in [-1, 1]
        )

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),  # 8x8 -> 4x4
            nn.Conv2d(width, 2 * width, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),  # 4x4 -> 2x2
            nn.Conv2d(2 * width, 1, kernel_size=2),  # 2x2 -> 1x1: one logit per image
        )

    def forward(self, x):
        return self.net(x).view(-1)


def init_weights(module):
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def show(images):
    """Print 8x8 images in [-1, 1] side by side as text."""
    shades = " .:-=+*#%@"
    for row in range(8):
        print("   ".join("".join(shades[min(int((v + 1) * 5), 9)] * 2 for v in image[0, row])
                         for image in images))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--noise", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    images = (load_digits().images / 8.0 - 1.0).astype(np.float32)[:, None]  # [-1, 1]
    loader = DataLoader(TensorDataset(torch.from_numpy(images)), batch_size=args.batch_size,
                        shuffle=True, drop_last=True)

    device = torch.device(args.device)
    generator = Generator(args.noise).to(device)
    discriminator = Discriminator().to(device)
    generator.apply(init_weights)
    discriminator.apply(init_weights)
    loss_fn = nn.BCEWithLogitsLoss()
    opt_g = optim.Adam(generator.parameters(), lr=args.lr, betas=(0.5, 0.999))
    opt_d = optim.Adam(discriminator.parameters(), lr=args.lr, betas=(0.5, 0.999))
    fixed_noise = torch.randn(6, args.noise, 1, 1, device=device)

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        sums = {"d_loss": 0.0, "g_loss": 0.0, "d_real": 0.0, "d_fake": 0.0}
        for (real,) in loader:
            real = real.to(device)
            n = real.size(0)
            ones = torch.ones(n, device=device)
            zeros = torch.zeros(n, device=device)
            fake = generator(torch.randn(n, args.noise, 1, 1, device=device))

            # discriminator: real images towards 1, fakes towards 0; the fakes are detached
            # so this step does not reach the generator
            opt_d.zero_grad()
            real_logits = discriminator(real)
            fake_logits = discriminator(fake.detach())
            d_loss = loss_fn(real_logits, ones) + loss_fn(fake_logits, zeros)
            d_loss.backward()
            opt_d.step()

            # generator: make the discriminator call its fakes real
            opt_g.zero_grad()
            g_loss = loss_fn(discriminator(fake), ones)
            g_loss.backward()
            opt_g.step()

            sums["d_loss"] += d_loss.item() / len(loader)
            sums["g_loss"] += g_loss.item() / len(loader)
            sums["d_real"] += torch.sigmoid(real_logits).mean().item() / len(loader)
            sums["d_fake"] += torch.sigmoid(fake_logits).mean().item() / len(loader)
        print(f"epoch {epoch:2d}  D loss {sums['d_loss']:.4f}  G loss {sums['g_loss']:.4f}  "
              f"D(real) {sums['d_real']:.3f}  D(fake) {sums['d_fake']:.3f}")
    print(f"done ({time.perf_counter() - start:.1f} s)")

    generator.eval()
    with torch.no_grad():
        samples = generator(fixed_noise)
    print("generated digits:")
    show(samples.cpu().numpy())


if __name__ == "__main__":
    main()
