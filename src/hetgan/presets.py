"""Named presets: plain functions returning a TrainConfig, deriving from one another."""

from __future__ import annotations

from collections.abc import Callable

from hetgan.config import TrainConfig
from hetgan.registry import Registry

PRESETS: Registry[Callable[[], TrainConfig]] = Registry("preset")
DEFAULT_PRESET = "dcgan_mnist"
SELFCOND_CLUSTERS = 100  # dcgan_mnist_selfcond's cluster count: the best FID of the sweep


def get_preset(name: str) -> TrainConfig:
    cfg = PRESETS.get(name)()
    cfg.preset = name
    return cfg.validate()


@PRESETS.register("dcgan_mnist")
def dcgan_mnist() -> TrainConfig:
    """The default: DCGAN on the bundled 5000 digits, tuned to learn fast on a small CPU.

    A narrower net than the textbook (width 32 instead of 64) sees several times the images per
    second; batch 128, the hinge loss, a high learning rate (Adam 1.5e-3, betas (0.5, 0.99)) and
    G_ema do the rest. benchmarks/RESULTS.md, "Training quality", has the sweep and the comparison
    with the textbook loop.
    """
    cfg = TrainConfig(preset="dcgan_mnist")
    cfg.model.width = 32
    cfg.data.resolution, cfg.data.channels = 32, 1
    cfg.loss.name = "hinge"
    cfg.train.batch_size = 128
    cfg.optim.g_lr = cfg.optim.d_lr = 1.5e-3
    cfg.optim.beta2 = 0.99
    cfg.train.kimg = 200
    cfg.train.ema_kimg = 5
    cfg.train.snapshot_kimg = 50
    cfg.train.grid_kimg = 25
    cfg.accel.channels_last = True
    return cfg


@PRESETS.register("cdcgan_mnist")
def cdcgan_mnist() -> TrainConfig:
    """The default made class-conditional: G(z, y) with class-conditional BatchNorm and a
    projection D (Miyato & Koyama 2018), on the bundled digits and their labels; dcgan_mnist's
    recipe and budget, with D learning twice as fast (Adam 3e-3): at the default's rate too many
    2s came out as 3s (benchmarks/RESULTS.md, "Conditional GANs"). `hetgan sample --per-class 8`
    draws every digit on demand."""
    cfg = dcgan_mnist()
    cfg.preset = "cdcgan_mnist"
    cfg.model.conditional = True
    cfg.optim.d_lr = 3e-3
    return cfg


@PRESETS.register("dcgan_mnist_selfcond")
def dcgan_mnist_selfcond() -> TrainConfig:
    """The default made self-conditioned (Liu et al. 2020): the digits' labels are not read; G and
    D are conditioned on 100 k-means clusters of the pixels instead (`data.clusters`), with
    cdcgan_mnist's faster D (Adam 3e-3), and G draws over the clusters in proportion to their
    sizes. benchmarks/RESULTS.md, "Training quality", has the sweep that chose them."""
    cfg = cdcgan_mnist()  # its recipe, with clusters in place of the labels
    cfg.preset = "dcgan_mnist_selfcond"
    cfg.model.conditional, cfg.data.clusters = False, SELFCOND_CLUSTERS  # conditional once clustered
    return cfg


@PRESETS.register("dcgan_stacked_mnist")
def dcgan_stacked_mnist() -> TrainConfig:
    """The default recipe on Stacked MNIST (three bundled digits in R, G and B: 1000 modes), the
    mode-collapse benchmark of PacGAN (Lin et al. 2018) and VEEGAN (Srivastava et al. 2017):
    `hetgan eval` counts the modes covered in 26,000 samples and their KL to uniform. PacGAN
    packing is `--set loss.pack=2`; a self-conditioned GAN `--set data.clusters=K`.
    benchmarks/RESULTS.md, "Stacked MNIST", compares them."""
    cfg = dcgan_mnist()
    cfg.preset = "dcgan_stacked_mnist"
    cfg.data.spec, cfg.data.channels = "stacked_mnist", 3
    cfg.train.kimg = 500
    cfg.train.snapshot_kimg, cfg.train.grid_kimg = 100, 50
    return cfg


@PRESETS.register("dcgan_textbook")
def dcgan_textbook() -> TrainConfig:
    """DCGAN as Radford et al. (2016) and the PyTorch example train it: width 64, BCE, Adam 2e-4
    with beta1 0.5, batch 64, fp32; at 32 px on the bundled digits. The model behind the speed
    targets (benchmarks/train_throughput.py) and the GPU suite; it learns slower here than
    dcgan_mnist."""
    return TrainConfig(preset="dcgan_textbook")


@PRESETS.register("mlp_mnist")
def mlp_mnist() -> TrainConfig:
    """The seed layout: G 256-512-1024, D 512-256, on flat 28x28 digits."""
    cfg = TrainConfig(preset="mlp_mnist")
    cfg.model.arch, cfg.model.width = "mlp", 256
    cfg.data.resolution = 28
    cfg.train.kimg = 200
    cfg.train.snapshot_kimg, cfg.train.grid_kimg = 50, 25
    return cfg


@PRESETS.register("mlp_ring8")
def mlp_ring8() -> TrainConfig:
    """2-D ring of 8 Gaussians (PacGAN protocol): mlp_grid25's networks, unconditional, with a
    slower G (Adam 2e-4), a faster D (1.5e-3) and a longer schedule (3200 kimg, decay from 1600).

    With G at 3e-4, some ring seeds reach the data's own score and others stall 2 points below;
    the slower G keeps all seeds close together, and the faster D with the longer schedule lifts
    them past the target on the mean. Self-conditioned on 8 clusters at 400 kimg, four seeds of
    five scored 99.8-100 % and one 85.5 %. benchmarks/RESULTS.md, "2-D mixtures", has the sweeps.
    """
    cfg = mlp_grid25()
    cfg.preset = "mlp_ring8"
    cfg.data.spec, cfg.data.clusters = "ring8", 0
    cfg.optim.d_lr, cfg.optim.g_lr = 1.5e-3, 2e-4
    cfg.optim.decay_start_kimg, cfg.optim.decay_end_kimg = 1600, 3200
    cfg.train.kimg = 3200
    cfg.train.snapshot_kimg, cfg.train.grid_kimg = 200, 200
    return cfg


@PRESETS.register("mlp_grid25")
def mlp_grid25() -> TrainConfig:
    """2-D 5x5 grid of Gaussians (PacGAN protocol): a self-conditioned GAN (data.clusters=25, one
    k-means cluster per mode) with deep mlp networks: G six layers of 256 (model.g_depth), D
    512-256-256 (model.d_depth), z 2.

    Conditioned on its cluster, G draws one Gaussian at a time: it never has to bend one latent
    space around 25 modes, which is what drew the points between modes. Depth lets G switch
    steeply, D learns faster than G (Adam 1e-3 for D, 3e-4 for G, betas (0.5, 0.99)), many small
    steps (batch 50), R1 on real points (gamma 0.1), and the rates decay linearly to zero over the
    second half of the 400 kimg. benchmarks/RESULTS.md, "2-D mixtures", has every seed and the sweeps.
    """
    cfg = TrainConfig(preset="mlp_grid25")
    cfg.data.spec = "grid25"
    cfg.data.clusters = 25
    cfg.model.arch, cfg.model.width, cfg.model.z_dim = "mlp", 256, 2
    cfg.model.g_depth, cfg.model.d_depth = 6, 3
    cfg.loss.r1_gamma = 0.1
    cfg.optim.d_lr, cfg.optim.g_lr = 1e-3, 3e-4
    cfg.optim.beta1, cfg.optim.beta2 = 0.5, 0.99
    cfg.optim.lr_decay, cfg.optim.decay_start_kimg, cfg.optim.decay_end_kimg = "linear", 200, 400
    cfg.train.batch_size = 50
    cfg.train.kimg = 400
    cfg.train.ema_kimg = 10
    cfg.train.snapshot_kimg, cfg.train.grid_kimg = 100, 100
    cfg.train.log_interval = 200
    return cfg


@PRESETS.register("resnet_cifar10")
def resnet_cifar10() -> TrainConfig:
    """SNGAN ResNet with hinge loss and 5 D steps per G step (Miyato et al. 2018)."""
    cfg = TrainConfig(preset="resnet_cifar10")
    cfg.data.spec = "cifar10:data/cifar-10-batches-bin"
    cfg.data.resolution, cfg.data.channels = 32, 3
    cfg.model.arch, cfg.model.width, cfg.model.z_dim = "resnet", 128, 128
    cfg.loss.name, cfg.loss.n_critic = "hinge", 5
    cfg.optim.beta1, cfg.optim.beta2 = 0.0, 0.9
    cfg.train.kimg = 5000
    cfg.train.snapshot_kimg, cfg.train.grid_kimg = 100, 50
    return cfg
