"""Exact rewrites of a generator's layers into forms inference runtimes run faster on a CPU.

A DCGAN generator starts with a transposed convolution of a 1x1 input and ends with one of few
output channels; oneDNN (OpenVINO, PyTorch) runs both far below its speed on the layers between
(their profiles: benchmarks/RESULTS.md, "Deployment"). Both have an equivalent that it runs well:

- `ConvTranspose2d(k=K, s=1, p=0)` of a 1x1 input is a matrix product: z [B, C_in] times the
  weights [C_in, C_out*K*K], reshaped to [B, C_out, K, K] (`Linear` + `Unflatten`). The
  BatchNorm after it is folded into that product and its ReLU moved before the reshape, where
  the runtimes fuse both into the product (across the reshape OpenVINO ran BN as its own op).
- `ConvTranspose2d(k=4, s=2, p=1)` is a sub-pixel convolution (Shi et al. 2016): each of the four
  output pixel parities (a, b) sums a 2x2 input neighbourhood with its own 2x2 slice of the
  kernel, so one 3x3 convolution with 4*C_out output channels (zero where a parity has no tap),
  then `PixelShuffle(2)`, gives the same output; the BatchNorm after it folds into the
  convolution and its ReLU moves before the shuffle. It does 9/4 the multiply-adds, so it pays
  only where C_out is small and the transposed convolution's kernels run far below peak: on
  OpenVINO, up to 16 channels in fp32 and below 32 in int8, the widths where it made pruned
  students faster (`benchmarks/subpixel_widths.py`; benchmarks/RESULTS.md, "Compression"); never
  on ONNX Runtime, whose 3x3 convolution with so few channels was slower than its transposed one.

- Two sub-pixel stages in a row whose second is the output layer (few channels) become one
  (`SubPixelOutput`): the second's 3x3 convolution is taken onto the first's map before its
  shuffle, a 3x3 convolution there to 16*C_out channels (each coarse pixel's 4x4 block of output
  pixels), then one `PixelShuffle(4)`. It does 4x the output layer's multiply-adds, but with 16
  output channels instead of 4 oneDNN runs them several times faster, and one shuffle of the
  whole map goes, which is what took the int8 student past its speed target (benchmarks/RESULTS.md,
  "Compression"). The taps are a rearrangement of the same weights, so int8 gives the same numbers
  too.

The rewritten copy is what gets exported; the export check compares it with the original
generator, so a mistake here is an error, never a silent file.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

OUTPUT_CHANNELS_MAX = 4  # for_inference's default: the output layer only
# For output row parity a: {input row offset dy: kernel row ky} (the same for columns), from
# y = 2*i - 1 + k for ConvTranspose2d(k=4, s=2, p=1).
TAPS = {0: {0: 1, -1: 3}, 1: {1: 0, 0: 2}}


class SubPixelConv(nn.Module):
    """ConvTranspose2d(k=4, s=2, p=1) as Conv2d(3x3, 4*C_out) + PixelShuffle(2), exactly; given
    the BatchNorm (eval mode) after the deconvolution, it is folded into the convolution, and with
    `relu` the ReLU after that runs before the shuffle (both act per channel, and a channel's four
    parities are its pixels)."""

    def __init__(self, deconv: nn.ConvTranspose2d, bn: nn.BatchNorm2d | None = None, relu: bool = False) -> None:
        super().__init__()
        W = deconv.weight.detach()  # [C_in, C_out, 4, 4]
        c_in, c_out = W.shape[:2]
        K = torch.zeros(c_out, 2, 2, c_in, 3, 3, dtype=W.dtype)
        for a, rows in TAPS.items():
            for b, cols in TAPS.items():
                for dy, ky in rows.items():
                    for dx, kx in cols.items():
                        K[:, a, b, :, dy + 1, dx + 1] = W[:, :, ky, kx].T
        self.conv = nn.Conv2d(c_in, 4 * c_out, 3, 1, 1, bias=deconv.bias is not None, dtype=W.dtype)
        self.conv.weight.data.copy_(K.reshape(4 * c_out, c_in, 3, 3))  # channel o*4 + a*2 + b
        if deconv.bias is not None:
            self.conv.bias.data.copy_(deconv.bias.detach().repeat_interleave(4))
        self.shuffle = nn.PixelShuffle(2)  # channel o*4 + a*2 + b -> pixel (2m + a, 2n + b) of o
        if bn is not None:
            fold_batchnorm(self.conv, bn, per_channel=4)
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.relu(self.conv(x)))


class SubPixelOutput(nn.Module):
    """Sub-pixel stage `first` followed by sub-pixel stage `output`, as one, exactly: `first`'s
    convolution and ReLU without its shuffle, then `output`'s convolution taken onto that coarse
    map (3x3, 16*C_out channels: channel o*16 + u*4 + v is output pixel (4m + u, 4n + v) of o),
    `output`'s ReLU if it has one, and PixelShuffle(4)."""

    def __init__(self, first: SubPixelConv, output: SubPixelConv) -> None:
        super().__init__()
        self.conv1, self.relu1 = first.conv, first.relu
        K = output.conv.weight.detach()  # [4*C_out, C, 3, 3], channel o*4 + a*2 + b, on the fine map
        c_out, c = K.shape[0] // 4, K.shape[1]
        F = torch.zeros(c_out, 4, 4, c, 4, 3, 3, dtype=K.dtype)  # [o, u, v, c, fine parity, 3, 3]
        Kp = K.view(c_out, 2, 2, c, 3, 3)
        for u in range(4):
            for v in range(4):
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        # Output pixel (4m + u, 4n + v) is fine pixel (2m + u//2, 2n + v//2) at parity
                        # (u%2, v%2); its tap (dy, dx) on the fine map is coarse pixel (m + ey, n + ex),
                        # fine parity (pa, pb) there, the first stage's channel c*4 + pa*2 + pb.
                        ey, pa = divmod(u // 2 + dy, 2)
                        ex, pb = divmod(v // 2 + dx, 2)
                        F[:, u, v, :, pa * 2 + pb, ey + 1, ex + 1] += Kp[:, u % 2, v % 2, :, dy + 1, dx + 1]
        self.conv2 = nn.Conv2d(4 * c, 16 * c_out, 3, 1, 1, bias=output.conv.bias is not None, dtype=K.dtype)
        self.conv2.weight.data.copy_(F.reshape(16 * c_out, 4 * c, 3, 3))
        if output.conv.bias is not None:
            b = output.conv.bias.detach().view(c_out, 2, 2)
            self.conv2.bias.data.copy_(b.repeat(1, 2, 2).reshape(-1))  # pixel (u, v) takes parity (u%2, v%2)
        self.relu2 = output.relu
        self.shuffle = nn.PixelShuffle(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.relu2(self.conv2(self.relu1(self.conv1(x)))))


def fuse_subpixel_output(layers: list[nn.Module]) -> list[nn.Module]:
    """`layers` with two sub-pixel stages in a row, the second of at most OUTPUT_CHANNELS_MAX
    output channels, as one `SubPixelOutput`."""
    out: list[nn.Module] = []
    for layer in layers:
        prev = out[-1] if out else None
        few = isinstance(layer, SubPixelConv) and layer.conv.out_channels // 4 <= OUTPUT_CHANNELS_MAX
        if few and isinstance(prev, SubPixelConv):
            out[-1] = SubPixelOutput(prev, layer)
        else:
            out.append(layer)
    return out


def linear_from_deconv(deconv: nn.ConvTranspose2d) -> nn.Sequential:
    """ConvTranspose2d(k=K, s=1, p=0) of a [B, C_in, 1, 1] input as [B, C_in] -> Linear -> [B, C_out, K, K];
    the caller drops the input's two unit axes."""
    c_in, c_out, kh, kw = deconv.weight.shape
    linear = nn.Linear(c_in, c_out * kh * kw, bias=deconv.bias is not None, dtype=deconv.weight.dtype)
    linear.weight.data.copy_(deconv.weight.detach().reshape(c_in, -1).T)
    if deconv.bias is not None:
        linear.bias.data.copy_(deconv.bias.detach().repeat_interleave(kh * kw))
    return nn.Sequential(linear, nn.Unflatten(1, (c_out, kh, kw)))


def is_upsampling_deconv(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.ConvTranspose2d)
        and m.kernel_size == (4, 4)
        and m.stride == (2, 2)
        and m.padding == (1, 1)
        and m.output_padding == (0, 0)
        and m.dilation == (1, 1)
        and m.groups == 1
    )


class LatentDeconv(nn.Module):
    """A DCGAN generator's network with its first layer as a matrix product: z [B, z_dim] in."""

    def __init__(self, first: nn.Sequential, rest: nn.Sequential) -> None:
        super().__init__()
        self.first, self.rest = first, rest

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.rest(self.first(z))


def for_inference(G: nn.Module, subpixel_max_channels: int = OUTPUT_CHANNELS_MAX) -> nn.Module:
    """An eval-mode copy of G on the CPU with the rewrites above where they apply (DCGAN
    generators; upsampling layers of at most `subpixel_max_channels` output channels as sub-pixel
    convolutions, 0 for none); any other network, and a conditional one, comes back as a plain
    copy. `forward(z)` is G's, to float round-off."""
    G = copy.deepcopy(G).cpu().eval()
    if not rewritable(G):
        return G
    layers = fuse_subpixel_output(subpixel_layers(list(G.net), subpixel_max_channels))
    first = layers[0]
    if not (first.stride == (1, 1) and first.padding == (0, 0) and first.groups == 1 and first.dilation == (1, 1)):
        return _Unsqueezed(nn.Sequential(*layers)).eval()
    linear, unflatten = linear_from_deconv(first)
    head, rest = [linear], layers[1:]
    if rest and isinstance(rest[0], nn.BatchNorm2d):  # fold it: the runtimes cannot across the reshape
        fold_batchnorm(linear, rest.pop(0), per_channel=unflatten.unflattened_size[1] * unflatten.unflattened_size[2])
    if rest and isinstance(rest[0], nn.ReLU):  # elementwise, so before the reshape, where it fuses into the product
        head.append(nn.ReLU())
        rest.pop(0)
    return LatentDeconv(nn.Sequential(*head, unflatten), nn.Sequential(*rest)).eval()


def rewritable(G: nn.Module) -> bool:
    """Whether for_inference rewrites G: a DCGAN generator, but not a conditional one (its
    BatchNorm is per class)."""
    from hetgan.models import dcgan

    return isinstance(G, dcgan.Generator) and not G.n_classes


def to_subpixel(layer: nn.Module, max_channels: int) -> bool:
    return is_upsampling_deconv(layer) and layer.out_channels <= max_channels


def subpixel_choice(G: nn.Module, subpixel_max_channels: int) -> list[int] | None:
    """What for_inference makes of G at this threshold, in short: None where it leaves G as it is,
    else the indices of the layers it turns into sub-pixel convolutions. Two thresholds with the
    same answer give the same network (hetgan.deploy.export traces it once for both)."""
    if not rewritable(G):
        return None
    return [i for i, layer in enumerate(G.net) if to_subpixel(layer, subpixel_max_channels)]


def subpixel_layers(layers: list[nn.Module], max_channels: int) -> list[nn.Module]:
    """`layers` with every upsampling deconvolution of at most `max_channels` output channels as a
    sub-pixel convolution, the BatchNorm and ReLU after it fused in."""
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        if not to_subpixel(layer, max_channels):
            out.append(layer)
            i += 1
            continue
        bn = layers[i + 1] if i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d) else None
        relu = bn is not None and i + 2 < len(layers) and isinstance(layers[i + 2], nn.ReLU)
        out.append(SubPixelConv(layer, bn, relu))
        i += 1 + (bn is not None) + relu
    return out


def fold_batchnorm(layer: nn.Linear | nn.Conv2d, bn: nn.BatchNorm2d, per_channel: int) -> None:
    """Fold eval-mode BatchNorm of channels that each span `per_channel` consecutive outputs (or
    output channels) of `layer` into its weights and bias: BN(Wz + b) = s * (Wz + b) + t per
    channel."""
    gamma = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
    beta = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)  # [C]
    shift = beta - bn.running_mean * scale
    scale, shift = scale.repeat_interleave(per_channel), shift.repeat_interleave(per_channel)
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        layer.weight.mul_(scale.view(-1, *[1] * (layer.weight.ndim - 1)))
        layer.bias = nn.Parameter(bias * scale + shift)


class _Unsqueezed(nn.Module):
    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])  # [B, z_dim] -> [B, z_dim, 1, 1]
