"""The torch generator artifact: G_ema weights + resolved config + hetgan version, in one
safetensors file (config and version in its metadata), and the eager `TorchGenerator` built from
it. `hetgan.load_generator` (hetgan.deploy.load) opens this and every exported format.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from hetgan.accel import without_tf32
from hetgan.config import TrainConfig, from_dict, to_dict
from hetgan.errors import CheckpointError, HetganError
from hetgan.fileio import atomic_write_bytes, read_safetensors
from hetgan.generator import SeededGenerator, classes_in_turn
from hetgan.models import build_models, sample_shape
from hetgan.placement import resolve_device
from hetgan.pretrained import resolve_source
from hetgan.training.checkpoint import load_latest_checkpoint
from hetgan.version import __version__

ARTIFACT_NAME = "generator.safetensors"
FORMAT = "hetgan.generator/1"


class TorchGenerator(SeededGenerator, nn.Module):
    """A trained generator in eager PyTorch: `forward(z)` and seeded `sample(n)`, built from its own
    config. `net` is the network itself (a `models/*.Generator`), in eval mode."""

    def __init__(self, net: nn.Module, config: TrainConfig) -> None:
        super().__init__()
        self.net = net.eval()
        self.config = config
        self.z_dim = config.model.z_dim
        self.shape = sample_shape(config)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z) if y is None else self.net(z, y)

    @torch.no_grad()
    def _generate(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        # Full fp32 whatever torch's default or a run's `tf32` knob left set (cuDNN convolutions
        # are TF32 by default): samples and the scores made of them must not depend on them.
        # The flags are restored on return, so the caller's code runs under its own.
        with without_tf32():
            return self(z.to(self.device), None if y is None else y.to(self.device)).float().cpu()


@torch.no_grad()
def recalibrated_copy(
    G_ema: nn.Module,
    z_dim: int,
    n_batches: int = 8,
    batch_size: int = 256,
    n_classes: int = 0,
    class_weights: list[float] | tuple[float, ...] = (),
) -> nn.Module:
    """An eval-mode copy of G_ema whose BatchNorm statistics are recomputed for its own weights.

    G_ema averages weights but copies G's running statistics, which belong to G's weights; the
    mismatch blurs samples. Re-estimating the statistics on fixed z fixes it without touching
    the training state. A conditional G sees the classes as it draws them unlabelled (in turn, or
    over a self-conditioned G's cluster shares: `classes_in_turn`).
    """
    G = copy.deepcopy(G_ema)
    bns = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the batches below
        G.train()
        device = next(G.parameters()).device
        gen = torch.Generator().manual_seed(12345)
        for _ in range(n_batches):
            z = torch.randn(batch_size, z_dim, generator=gen).to(device)
            G(z, classes_in_turn(batch_size, n_classes, class_weights).to(device)) if n_classes else G(z)
    return G.eval()


def recalibrated_for(G_ema: nn.Module, config: TrainConfig) -> nn.Module:
    """`recalibrated_copy` of G_ema with its config's z size and classes."""
    return recalibrated_copy(
        G_ema, config.model.z_dim, n_classes=config.model.n_classes, class_weights=config.data.class_weights
    )


def save_generator(
    G_ema: nn.Module, config: TrainConfig, path: Path, run_id: str | None = None, *, recalibrated: bool = False
) -> Path:
    """Write the artifact atomically: recalibrated G_ema weights + config + version (+ the id of
    the run that trained it, which exported models carry on). `recalibrated=True`: G_ema's
    BatchNorm statistics are already re-estimated (`Trainer.recalibrated_G_ema`), written as they are."""
    G = G_ema if recalibrated else recalibrated_for(G_ema, config)
    tensors = {k: v.detach().cpu().contiguous() for k, v in G.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "hetgan_version": __version__,
        "config": json.dumps(to_dict(config)),
    }
    if run_id:
        metadata["run_id"] = run_id
    atomic_write_bytes(path, save_safetensors(tensors, metadata=metadata))
    return path


def torch_generator_from(source: str | Path | SeededGenerator) -> TorchGenerator:
    """The eager torch generator of `source` (a run directory, a generator.safetensors, or a
    `TorchGenerator`), for what needs its weights (export, quantize); an exported file or a runtime
    generator is refused with what to pass instead."""
    if isinstance(source, TorchGenerator):
        return source
    if isinstance(source, SeededGenerator):
        raise HetganError(
            f"this needs the generator's PyTorch weights, but it runs on {source.backend}; pass its run "
            "directory or generator.safetensors"
        )
    path = resolve_source(source)
    if path.suffix.lower() in (".onnx", ".xml", ".bin"):
        raise HetganError(
            f"{path}: this takes a run directory or a generator.safetensors, whose PyTorch weights it "
            f"reads; {path.name} is already an exported model (hetgan export/quantize made it). Pass the "
            "run it came from"
        )
    return load_torch_generator(path)


def load_torch_generator(path: str | Path, device: str | torch.device = "cpu") -> TorchGenerator:
    """The eager PyTorch generator of a run directory, a `generator.safetensors` artifact or the
    name of a packaged one (`hetgan.pretrained`)."""
    path = resolve_source(path)
    device = resolve_device(str(device))  # a clear error for a device this machine lacks
    run_id = None
    if path.is_dir():
        run_id = path.resolve().name
        if not (path / ARTIFACT_NAME).exists() and (path / "checkpoints").is_dir():
            G = _from_checkpoint(path / "checkpoints", device)
            G.run_id = run_id
            return G
        path = path / ARTIFACT_NAME
    fix = "pass the generator.safetensors written by `hetgan train` (or its run directory)"
    tensors, metadata = read_safetensors(path, "generator artifact", fix)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a hetgan generator artifact (format {metadata.get('format')!r}, expected {FORMAT!r}); {fix}"
        )
    config = from_dict(json.loads(metadata["config"]), where=f"{path} metadata")
    G, _ = build_models(config)
    G.load_state_dict(tensors)
    generator = TorchGenerator(G, config).to(device)
    generator.run_id = metadata.get("run_id") or run_id
    return generator


def _from_checkpoint(root: Path, device: torch.device) -> TorchGenerator:
    path, tensors, meta = load_latest_checkpoint(root)
    config = from_dict(meta["config"], where=f"{path} config")
    G, _ = build_models(config)
    G.load_state_dict({k[len("G_ema.") :]: v for k, v in tensors.items() if k.startswith("G_ema.")})
    return TorchGenerator(recalibrated_for(G, config), config).to(device)
