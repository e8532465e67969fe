import copy

import pytest
import torch

from hetgan.errors import ConfigError
from hetgan.models import build_models
from hetgan.placement import StagedSequential, parse_stages, resolve_device, split_network
from hetgan.training import Trainer

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_parse_stages():
    assert parse_stages("0-3@cpu,4-@cpu", 10) == [(0, 4, torch.device("cpu")), (4, 10, torch.device("cpu"))]
    for bad, phrase in [
        ("0-3@cpu,5-@cpu", "without gaps"),
        ("0-3@cpu", "stop at layer 3"),
        ("0-12@cpu", "without gaps"),
        ("cpu", "FIRST-LAST@DEVICE"),
        ("0-@tpu", "unknown device"),
    ]:
        with pytest.raises(ConfigError, match=phrase):
            parse_stages(bad, 10)


def test_unavailable_device_is_a_clear_error():
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="not available on this machine"):
            resolve_device("cuda:0")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps", "xpu")


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


def test_trainer_with_split_networks_equals_unsplit(tiny):
    plain = Trainer(tiny)
    tiny.accel.g_stages, tiny.accel.d_stages = "0-2@cpu,3-@cpu", "0-3@cpu,4-@cpu"
    staged = Trainer(tiny)
    for _ in range(3):
        plain.step()
        staged.step()
    for a, b in zip(plain.G_ema.parameters(), staged.G_ema.parameters(), strict=True):
        assert torch.equal(a, b)


def test_split_needs_a_layer_list(tiny):
    tiny.model.arch = "resnet"
    tiny.data.channels = 1
    with pytest.raises(ConfigError, match="no `net` layer list"):
        split_network(build_models(tiny)[0], "0-@cpu")


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
def test_split_across_gpu_and_cpu_equals_all_gpu(tiny):
    tiny.accel.device = "cuda"
    torch.manual_seed(0)
    G, _ = build_models(tiny)
    G = G.cuda()
    G2 = split_network(copy.deepcopy(G), "0-5@cuda,6-@cpu")
    z = torch.randn(8, tiny.model.z_dim, device="cuda")
    torch.testing.assert_close(G(z).cpu(), G2(z).cpu(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_placement_benchmark_times_every_layout():
    """benchmarks/placement_layouts.py on the CPU: every layout builds, trains and is reported
    against the all-on-one-device reference (on a GPU the same script measures the real layouts)."""
    import subprocess
    import sys
    from pathlib import Path

    cmd = [sys.executable, "benchmarks/placement_layouts.py", "--device", "cpu", "--rounds", "1"]
    cmd += ["--seconds", "0.2", "--width", "8"]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.endswith(")") and "x (" in line]
    assert [row.split("  ")[0] for row in rows] == [
        "all on cpu",
        "G on cpu, D on cpu",
        "D on cpu, G on cpu",
        "D split: convs on cpu, head on cpu",
        "G split: stem on cpu, rest on cpu",
    ]
    assert rows[0].split()[-2] == "1.00x" and all(float(row.split()[-3]) > 0 for row in rows)
