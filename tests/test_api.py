"""The Python API offers what the CLI offers: every command calls one public function of `hetgan`,
and `import hetgan` loads nothing heavy until a name is used."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import hetgan
from hetgan.cli import build_parser, main, subparsers
from hetgan.errors import HetganError

# command line (with {tmp} for a scratch folder) -> the public function it must call
COMMANDS = {
    "train": (["train", "--out", "{tmp}/run"], "train"),
    "sample": (["sample", "--run", "{tmp}", "--out", "{tmp}/g.png"], "sample"),
    "sample --interpolate": (
        ["sample", "--run", "{tmp}", "--interpolate", "0", "1", "--out", "{tmp}/w.gif"],
        "interpolate",
    ),
    "eval": (["eval", "--run", "{tmp}"], "evaluate"),
    "evalnet": (["evalnet", "train", "--data", "mnist5k", "--out", "{tmp}/e.safetensors"], "train_evalnet"),
    "report": (["report", "{tmp}"], "build_report"),
    "export": (["export", "--run", "{tmp}", "--format", "onnx", "--out", "{tmp}/g.onnx"], "export"),
    "quantize": (["quantize", "--run", "{tmp}", "--out", "{tmp}/g.xml"], "quantize"),
    "compress": (["compress", "--run", "{tmp}", "--out", "{tmp}/c", "--prune", "0.5"], "compress"),
    "serve": (["serve", "--run", "{tmp}"], "serve"),
    "bench": (["bench", "--seconds", "1"], "bench"),
    "bench --deploy": (["bench", "--deploy", "--run", "{tmp}"], "bench_deploy"),
    "tune": (["tune"], "tune"),
    "layers": (["layers"], "layers"),
    "data": (["data", "check", "mnist5k"], "check_data"),
    "pretrained": (["pretrained"], "list_pretrained"),
    "pretrained NAME": (["pretrained", "mnist"], "pretrained_card"),
}


def test_every_command_is_covered_here():
    """A new subcommand must be added to COMMANDS, with the public function it calls."""
    covered = {key.split()[0] for key in COMMANDS}
    assert set(subparsers(build_parser())) == covered


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_calls_its_public_function(command, tmp_path, monkeypatch, capsys):
    argv, name = COMMANDS[command]
    calls = []

    def called(*args, **kwargs):
        calls.append((args, kwargs))
        raise HetganError(f"reached hetgan.{name}")  # stops the command right there

    for other in hetgan.__all__:  # every other entry point fails loudly if the command calls it
        if other != name and callable(getattr(hetgan, other)) and other.islower():
            monkeypatch.setattr(hetgan, other, lambda *a, _n=other, **k: pytest.fail(f"{command} called {_n}"))
    monkeypatch.setattr(hetgan, name, called)
    assert main([arg.replace("{tmp}", str(tmp_path)) for arg in argv]) == 2
    assert f"reached hetgan.{name}" in capsys.readouterr().err and len(calls) == 1


@pytest.mark.parametrize("name", sorted(set(COMMANDS[c][1] for c in COMMANDS) | {"load_generator", "create_app"}))
def test_each_entry_point_documents_arguments_and_an_example(name):
    doc = inspect.getdoc(getattr(hetgan, name)) or ""
    assert "Example" in doc and ">>> " in doc, f"hetgan.{name} has no example in its docstring"
    params = [p for p in inspect.signature(getattr(hetgan, name)).parameters if p not in ("self",)]
    assert not params or any(p in doc for p in params), f"hetgan.{name}'s docstring names none of its arguments"


def test_import_hetgan_is_light():
    """`import hetgan` loads neither torch nor any submodule; a name loads its module on first use."""
    code = (
        "import sys, hetgan\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
        "assert [m for m in sys.modules if m.startswith('hetgan.')] == ['hetgan.version'], sys.modules\n"
        "hetgan.TrainConfig\n"
        "assert 'hetgan.config' in sys.modules\n"
        "try:\n    hetgan.no_such_name\nexcept AttributeError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "has no attribute 'no_such_name'" in done.stdout


def test_functions_that_take_a_generator_take_a_path_too(tmp_path):
    """`hetgan.export("/path/run", ...)` once raised AttributeError ('str' has no attribute 'G'):
    an exported file given where PyTorch weights are needed says what to pass instead."""
    onnx = tmp_path / "g.onnx"
    onnx.write_bytes(b"not really")
    calls = (
        lambda: hetgan.export(onnx, "onnx", tmp_path / "x.onnx"),
        lambda: hetgan.quantize(onnx, tmp_path / "q.xml"),
    )
    for call in calls:
        with pytest.raises(HetganError, match="already an exported model"):
            call()
