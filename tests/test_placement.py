import copy

import pytest
import torch
from torch import nn

from hetgan.benchmarking.layers import layer_table, network_tables
from hetgan.cli import main
from hetgan.errors import ConfigError
from hetgan.models import build_models
from hetgan.placement import (
    StagedSequential,
    input_device,
    output_device,
    parse_stages,
    resolve_device,
    split_network,
)
from hetgan.training.trainer import Trainer
from tests.conftest import GPU, assert_train_alike


def test_parse_stages():
    assert parse_stages("0-3@cpu,4-@cpu", 10) == [(0, 4, torch.device("cpu")), (4, 10, torch.device("cpu"))]
    for bad, phrase in [
        ("0-3@cpu,5-@cpu", r"leaving layers 4\.\.4 on no device"),
        ("0-3@cpu,2-@cpu", "layers up to 3 are already placed"),
        ("0-3@cpu,4-2@cpu", "ends at layer 2, before its first layer 4"),
        ("0-3@cpu", "stop at layer 3 but the network's last layer is 9; end the last stage open, e.g. '4-@cpu'"),
        ("0-12@cpu", r"names layer 12, but the network has only layers 0\.\.9"),
        ("0-3@cpu,10-@cpu", "names layer 10"),
        ("cpu", "FIRST-LAST@DEVICE"),
        ("0-@tpu", "unknown device"),
    ]:
        with pytest.raises(ConfigError, match=phrase):
            parse_stages(bad, 10)
        with pytest.raises(ConfigError, match=rf"^accel.d_stages(:| stage '0-@tpu':) .*{phrase}"):
            parse_stages(bad, 10, field="accel.d_stages")  # which of the two specs is wrong


def test_unavailable_device_is_a_clear_error():
    """The error names the option the device came from and the devices this machine has."""
    missing = f"cuda:{torch.cuda.device_count()}"
    have = "cpu" + "".join(f", cuda:{i}" for i in range(torch.cuda.device_count()))
    with pytest.raises(ConfigError, match=rf"^device '{missing}' is not available on this machine \(available: {have}"):
        resolve_device(missing)
    with pytest.raises(ConfigError, match=rf"^accel.g_device: device '{missing}' is not available"):
        resolve_device(missing, "accel.g_device")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps", "xpu")


def test_a_trainers_placement_errors_name_the_field(tiny):
    for field, value, phrase in [
        ("d_device", "tpu", "unknown device 'tpu'"),
        ("d_stages", "0-3@cpu", "stages '0-3@cpu' stop at layer 3"),
        ("g_stages", "0-2@cpu,2-@cpu", "layers up to 2 are already placed"),
        ("g_stages", "0-@tpu", "stage '0-@tpu': unknown device 'tpu'"),
    ]:
        cfg = copy.deepcopy(tiny)
        setattr(cfg.accel, field, value)
        with pytest.raises(ConfigError, match=rf"^accel.{field}:? .*{phrase}"):
            Trainer(cfg)


def test_split_on_cpu_stages_equals_unsplit(tiny):
    torch.manual_seed(0)
    G, D = build_models(tiny)
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    split_network(G2, "0-5@cpu,6-@cpu")
    split_network(D2, "0-1@cpu,2-4@cpu,5-@cpu")
    assert isinstance(G2.net, StagedSequential) and len(G2.net.devices) == 2
    assert list(G.state_dict()) == list(G2.state_dict())  # checkpoints move between placements
    z = torch.randn(8, tiny.model.z_dim)
    out, out2 = D(G(z)), D2(G2(z))
    assert torch.equal(out, out2)
    out.sum().backward()
    out2.sum().backward()
    for a, b in zip(G.parameters(), G2.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)


def test_input_and_output_devices_of_a_split_network(tiny):
    G, _ = build_models(tiny)
    cpu = torch.device("cpu")
    assert input_device(G, cpu) == output_device(G, cpu) == cpu  # unsplit: the network's device
    split_network(G, "0-2@cpu,3-@cpu")
    G.net.devices = [cpu, torch.device("meta")]  # a stand-in for a second device on this machine
    assert input_device(G, cpu) == cpu and output_device(G, cpu) == torch.device("meta")


def test_trainer_with_split_networks_equals_unsplit(tiny):
    plain = Trainer(tiny)
    tiny.accel.g_stages, tiny.accel.d_stages = "0-2@cpu,3-@cpu", "0-3@cpu,4-@cpu"
    assert_train_alike(plain, Trainer(tiny), steps=3)


def test_split_resnet_trains_as_unsplit(tiny):
    """The residual blocks on one device and the rest on another (each block is one layer)."""
    tiny.model.arch = "resnet"
    plain = Trainer(tiny)
    tiny.accel.g_stages, tiny.accel.d_stages = "0-3@cpu,4-@cpu", "0-1@cpu,2-4@cpu,5-@cpu"
    split = Trainer(tiny)
    assert [type(split.D.net[i]).__name__ for i in range(4)] == ["DBlock"] * 4
    assert_train_alike(plain, split, steps=2)


def test_split_needs_a_layer_list():
    class Custom(nn.Module):  # a network of the user's own, without a `net`
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(2, 2)

    with pytest.raises(ConfigError, match="Custom has no `net` layer list.*an nn.Sequential named `net`"):
        split_network(Custom(), "0-@cpu")


def test_layer_table_counts_each_layer_by_hand(tiny):
    """`hetgan layers`: one row per stage-spec index, with shapes, parameters, FLOPs and cut
    sizes checked against a hand count for the tiny DCGAN D (width 4, 1 channel, 32 px)."""
    G, D = build_models(tiny)
    rows = network_tables(tiny)["D"][1]
    assert [r.index for r in rows] == list(range(len(D.net)))
    shapes = [(4, 16, 16), (4, 16, 16), (8, 8, 8), (8, 8, 8), (8, 8, 8), (16, 4, 4), (16, 4, 4), (16, 4, 4), (1, 1, 1)]
    assert [r.out_shape for r in rows] == shapes
    assert [r.cut_bytes for r in rows] == [4 * c * h * w for c, h, w in shapes]
    # 2 * C_in * C_out * k^2 * H_out * W_out for each convolution; the other layers count none.
    conv_flops = {0: 2 * 1 * 4 * 16 * 16 * 16, 2: 2 * 4 * 8 * 16 * 8 * 8, 5: 2 * 8 * 16 * 16 * 4 * 4, 8: 2 * 16 * 16}
    assert {r.index: r.flops for r in rows if r.flops} == conv_flops
    assert [r.params for r in rows] == [sum(p.numel() for p in layer.parameters()) for layer in D.net]
    assert rows[0].layer == "Conv2d(1, 4, kernel_size=4, stride=2, padding=1, bias=False)"
    # Every index it lists is one a stage spec accepts.
    split_network(D, f"0-{rows[-2].index}@cpu,{rows[-1].index}-@cpu")


def test_layers_plans_a_split_for_devices_this_machine_lacks(tiny):
    """With a stage spec the table shows each layer's device and what crosses each boundary per
    batch, checked for form only, so a GPU split can be planned on a laptop."""
    from hetgan.benchmarking.layers import format_layers

    rows = network_tables(tiny)["D"][1]
    text = format_layers("D", "Discriminator", rows, spec="0-4@cuda:1,5-@cpu", batch=8)
    assert [line.split()[-1] for line in text.splitlines()[2:11]] == ["cuda:1"] * 5 + ["cpu"] * 4
    # After layer 4 the activation is 8x8x8 fp32 = 2 KB per sample, 16 KB per batch of 8.
    assert "accel.d_stages '0-4@cuda:1,5-@cpu': after layer 4, cuda:1 -> cpu: 2.0 KB per sample, 0.02 MiB" in text
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        format_layers("D", "Discriminator", rows, spec="0-4@tpu,5-@cpu")


def test_layer_table_says_when_a_network_cannot_be_split(capsys):
    from hetgan.benchmarking.layers import format_layers

    assert layer_table(nn.Linear(2, 2), torch.zeros(1, 2)) is None
    assert format_layers("G", "my.Net", None) == "G (my.Net): no `net` layer list, so it cannot be split into stages"
    assert main(["layers", "--preset", "mlp_ring8", "--set", "loss.pack=2"]) == 0
    out = capsys.readouterr().out
    assert "13 layers, stage spec indices 0..12" in out and "Linear(in_features=4, out_features=512" in out


def test_layers_lists_resnet_blocks(capsys):
    assert main(["layers", "--preset", "resnet_cifar10", "--set", "accel.d_stages=0-3@cuda,4-@cpu"]) == 0
    out = capsys.readouterr().out
    assert "G (hetgan.models.resnet.Generator): 9 layers" in out and "D (hetgan.models.resnet.Discriminator): 7" in out
    assert "  2  GBlock(256, up=2)  " in out and "  0  DBlock(3, 128, down=True, first=True)  " in out
    # After the last block D's activation is 128x8x8 fp32, 32 KB per sample.
    assert "accel.d_stages '0-3@cuda,4-@cpu': after layer 3, cuda -> cpu: 32.0 KB per sample" in out


@GPU
def test_g_on_gpu_d_on_cpu(tiny, tmp_path):
    from hetgan.training.loop import save_grid

    tiny.accel.device, tiny.accel.g_device, tiny.accel.d_device = "cpu", "cuda", "cpu"
    t = Trainer(tiny)
    for _ in range(3):
        assert not t.step().skipped
    assert save_grid(t, tmp_path).shape == (tiny.train.grid_size, 1, 32, 32)  # z goes to G's device
    assert all(p.device.type == "cuda" for p in t.G.parameters())
    assert all(p.device.type == "cpu" for p in t.D.parameters())
    assert all(s["exp_avg"].device.type == "cuda" for s in t.opt_G.state.values())
    assert all(s["exp_avg"].device.type == "cpu" for s in t.opt_D.state.values())


@GPU
@pytest.mark.parametrize("g_device,d_device", [("cuda", "cpu"), ("cpu", "cuda")])
@pytest.mark.parametrize("loss", [{"name": "wgan-gp"}, {"r1_gamma": 1.0, "augment": "translation,cutout"}])
def test_gpu_penalties_and_augmentation_with_g_and_d_apart(tiny, g_device, d_device, loss):
    """The loss draws its random numbers (penalty mixing, augmentation) on G's input device and
    uses them on D's."""
    tiny.accel.g_device, tiny.accel.d_device = g_device, d_device
    for name, value in loss.items():
        setattr(tiny.loss, name, value)
    t = Trainer(tiny)
    for _ in range(3):
        assert not t.step().skipped
    assert all(torch.isfinite(p).all() for p in t.G_ema.parameters())


@GPU
def test_split_across_gpu_and_cpu_equals_all_gpu(tiny):
    tiny.accel.device = "cuda"
    torch.manual_seed(0)
    G, _ = build_models(tiny)
    G = G.cuda()
    G2 = split_network(copy.deepcopy(G), "0-5@cuda,6-@cpu")
    z = torch.randn(8, tiny.model.z_dim, device="cuda")
    torch.testing.assert_close(G(z).cpu(), G2(z).cpu(), rtol=1e-5, atol=1e-6)
