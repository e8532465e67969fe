"""The plain textbook DCGAN loop that hetgan is measured against.

Written the way the PyTorch DCGAN example and most tutorials write it: a DataLoader over float
tensors, D ending in a Sigmoid with nn.BCELoss, Adam(2e-4, betas=(0.5, 0.999)), and a separate
G forward for the D step and the G step. No EMA. Kept independent of hetgan on purpose.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def generator(nz: int = 100, ngf: int = 64, nc: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False),
        nn.BatchNorm2d(ngf * 4),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ngf * 2),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ngf),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
        nn.Tanh(),
    )


def discriminator(ndf: int = 64, nc: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ndf * 2),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ndf * 4),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, 1, 4, 1, 0, bias=False),
        nn.Sigmoid(),
    )


def weights_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def mnist32(npz_path: str) -> torch.Tensor:
    """The bundled digits resized to 32x32, float in [-1, 1], [N, 1, 32, 32]."""
    images = np.load(npz_path)["images"]
    resized = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.Resampling.LANCZOS)) for im in images])
    return torch.from_numpy(resized).float().div(127.5).sub(1).unsqueeze(1)


class TextbookDCGAN:
    def __init__(self, data: torch.Tensor, batch_size: int = 64, width: int = 64, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.nz = 100
        self.G, self.D = generator(self.nz, width), discriminator(width)
        self.G.apply(weights_init)
        self.D.apply(weights_init)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.loader = DataLoader(TensorDataset(data), batch_size=batch_size, shuffle=True, drop_last=True)
        self.criterion = nn.BCELoss()
        self.nimg = 0

    def step(self, real: torch.Tensor) -> None:
        b = len(real)
        ones, zeros = torch.ones(b), torch.zeros(b)
        self.D.zero_grad()
        loss_real = self.criterion(self.D(real).view(-1), ones)
        fake = self.G(torch.randn(b, self.nz, 1, 1))
        loss_fake = self.criterion(self.D(fake.detach()).view(-1), zeros)
        (loss_real + loss_fake).backward()
        self.opt_D.step()
        self.G.zero_grad()
        fake = self.G(torch.randn(b, self.nz, 1, 1))  # the second G forward of the textbook loop
        self.criterion(self.D(fake).view(-1), ones).backward()
        self.opt_G.step()
        self.nimg += b

    def run_for(self, seconds: float, on_tick: Callable[[float], None] | None = None) -> float:
        """Train for `seconds` of wall time; returns img/s. `on_tick(elapsed)` after each step."""
        start = time.perf_counter()
        while True:
            for (real,) in self.loader:
                self.step(real)
                elapsed = time.perf_counter() - start
                if on_tick:
                    on_tick(elapsed)
                if elapsed >= seconds:
                    return self.nimg / elapsed

    @torch.no_grad()
    def sample(self, n: int, seed: int) -> torch.Tensor:
        """Samples as the PyTorch DCGAN example shows them: G in train mode (batch statistics),
        on a copy so the running statistics of the trained G stay untouched."""
        z = torch.randn(n, self.nz, 1, 1, generator=torch.Generator().manual_seed(seed))
        return copy.deepcopy(self.G).train()(z)
