"""hetgan: train, evaluate, compress and deploy GANs on heterogeneous hardware.

The Python API offers what the `hetgan` command offers, one function per job:

    import hetgan
    result = hetgan.train(hetgan.get_preset("dcgan_mnist"))      # hetgan train
    G = hetgan.load_generator(result.run_dir)                    # any file, any backend
    hetgan.sample(G, "grid.png", n=64)                           # hetgan sample
    hetgan.evaluate(G)["fid"]                                    # hetgan eval
    hetgan.export(result.run_dir, "onnx", "g.onnx")              # hetgan export
    hetgan.quantize(result.run_dir, "g-int8.xml")                # hetgan quantize
    hetgan.compress(result.run_dir, "runs/small", prune=0.5)     # hetgan compress
    hetgan.serve("g.onnx", port=8000)                            # hetgan serve

`import hetgan` is light: each name loads its module on first use.
"""

from __future__ import annotations

import importlib

from hetgan.version import __version__

# public name -> the module that defines it (loaded on first use)
_API = {
    # config and presets
    "TrainConfig": "hetgan.config",
    "PRESETS": "hetgan.presets",
    "get_preset": "hetgan.presets",
    # training
    "train": "hetgan.training.loop",
    "TrainResult": "hetgan.training.loop",
    "Trainer": "hetgan.training.trainer",
    # generators, whatever runs them
    "load_generator": "hetgan.deploy.load",
    "SeededGenerator": "hetgan.generator",
    "TorchGenerator": "hetgan.artifact",
    "sample": "hetgan.sampling",
    "interpolate": "hetgan.sampling",
    "list_pretrained": "hetgan.pretrained",
    "pretrained_card": "hetgan.pretrained",
    # evaluation
    "evaluate": "hetgan.eval.score",
    "train_evalnet": "hetgan.eval.evalnet",
    "build_report": "hetgan.report.html",
    "check_data": "hetgan.data.sources",
    # deployment and compression
    "export": "hetgan.deploy.export",
    "quantize": "hetgan.deploy.quantize",
    "compress": "hetgan.compression.compress",
    "serve": "hetgan.serving.server",
    "create_app": "hetgan.serving.app",
    "ServeLimits": "hetgan.serving.limits",
    # speed
    "bench": "hetgan.benchmarking.training",
    "bench_deploy": "hetgan.benchmarking.inference",
    "tune": "hetgan.benchmarking.tune",
    "layers": "hetgan.benchmarking.layers",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'hetgan' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # the next lookup finds it without this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
