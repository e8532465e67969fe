import json

import pytest

from hetgan.models import build_models
from hetgan.models.layers import SpectralNorm
from hetgan.presets import get_preset
from tests.benchmarks.records import assert_timed_against
from tests.conftest import run_benchmark


@pytest.mark.slow
def test_spectral_norm_compile_benchmark_times_three_setups(tmp_path):
    """benchmarks/spectral_norm_compile.py, tiny: eager, compiled with the power iteration outside
    the graph (a break per layer) and compiled in one graph, each timed against eager."""
    args = ["--rounds", "2", "--seconds", "0.2", "--width", "8", "--batch", "8", "--json", str(tmp_path / "r.json")]
    run_benchmark("spectral_norm_compile", *args, process=True)  # counts its own graph breaks
    record = json.loads((tmp_path / "r.json").read_text())
    setups = record["setups"]
    assert list(setups) == ["eager", "compiled, iteration outside", "compiled, one graph"]
    layers = sum(isinstance(m, SpectralNorm) for m in build_models(get_preset("resnet_cifar10"))[1].modules())
    assert record["spectral_norm_layers"] == layers > 0
    breaks = {name: s["graph_breaks"] for name, s in setups.items()}
    assert breaks["eager"] == breaks["compiled, one graph"] == 0
    assert breaks["compiled, iteration outside"] >= layers  # each layer's iteration breaks the graph
    # The resnet trains compiled: its D is spectrally normalised and judges the real and the fake
    # batch before one backward, which torch's own spectral norm does not survive under compile
    # (tests/models/test_models.py); no step of any setup went non-finite.
    assert [s["compiled"] for s in setups.values()] == [False, True, True]
    assert all(s["nonfinite_steps"] == 0 for s in setups.values())
    assert_timed_against(setups, "eager", rounds=2)
