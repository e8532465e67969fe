"""The plain textbook GAN loop that hetgan is measured against.

Written the way the PyTorch DCGAN example writes it: a DataLoader over float tensors, BCE on
sigmoid outputs, Adam(2e-4, betas=(0.5, 0.999)), one G forward per step whose output D judges
detached in the D step and again, after D's update, in the G step; no EMA. It takes hetgan's own
G and D, so both loops train the same model with the same algorithm.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TextbookLoop:
    def __init__(
        self,
        G: nn.Module,
        D: nn.Module,
        images: torch.Tensor,
        z_dim: int,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        lr: float = 2e-4,
    ) -> None:
        """images: float [N, C, H, W] in [-1, 1] (or [N, 2] points), on the CPU like a dataset."""
        self.device = torch.device(device)
        self.G, self.D = G.to(self.device), D.to(self.device)
        self.z_dim = z_dim
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=lr, betas=(0.5, 0.999))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=lr, betas=(0.5, 0.999))
        self.loader = DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=True, drop_last=True)
        self.criterion = nn.BCELoss()
        self.nimg = 0

    def step(self, real: torch.Tensor) -> None:
        real = real.to(self.device)
        b = len(real)
        ones, zeros = torch.ones(b, device=self.device), torch.zeros(b, device=self.device)
        self.D.zero_grad()
        loss_real = self.criterion(torch.sigmoid(self.D(real)).view(-1), ones)
        fake = self.G(torch.randn(b, self.z_dim, device=self.device))
        loss_fake = self.criterion(torch.sigmoid(self.D(fake.detach())).view(-1), zeros)
        (loss_real + loss_fake).backward()
        self.opt_D.step()
        self.G.zero_grad()
        self.criterion(torch.sigmoid(self.D(fake)).view(-1), ones).backward()
        self.opt_G.step()
        self.nimg += b

    def run_for(self, seconds: float, on_tick: Callable[[float], None] | None = None) -> float:
        """Train for `seconds` of wall time; returns img/s. `on_tick(elapsed)` after each step."""
        start, nimg0 = time.perf_counter(), self.nimg
        while True:
            for (real,) in self.loader:
                self.step(real)
                if self.device.type != "cpu":  # as the example does: it reads D(x), D(G(z)) and the
                    torch.accelerator.synchronize(self.device)  # losses with .item() on every iteration
                elapsed = time.perf_counter() - start
                if on_tick:
                    on_tick(elapsed)
                if elapsed >= seconds:
                    return (self.nimg - nimg0) / elapsed

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, batch_size: int = 500) -> torch.Tensor:
        """Samples as the PyTorch DCGAN example shows them: G in train mode (batch statistics),
        on a copy so the trained G's running statistics stay untouched."""
        G = copy.deepcopy(self.G).train()
        z = torch.randn(n, self.z_dim, generator=torch.Generator().manual_seed(seed)).to(self.device)
        return torch.cat([G(z[i : i + batch_size]).cpu() for i in range(0, n, batch_size)])
