"""Which upsampling layers OpenVINO should get as sub-pixel convolutions, by width, fp32 and int8:

    python benchmarks/subpixel_widths.py --run RUN [--widths 57,28,14 32,16,8] [--thresholds 4 16 32 64]
                                         [--rounds 5] [--seconds 0.7]

For the run's generator (the teacher) and a generator of each `--widths` (random weights: speed
does not depend on them), exported for OpenVINO with every upsampling layer of at most T output
channels as a sub-pixel convolution (hetgan.deploy.rewrite), for each T in `--thresholds`: img/s
at batch 64 in fp32 and in int8 (NNCF, as `hetgan quantize` makes it), the median of interleaved
rounds. hetgan's choice (hetgan.deploy.export.SUBPIXEL_FOR) is read off this table.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from contextlib import contextmanager
from pathlib import Path

from hetgan.artifact import TorchGenerator, load_torch_generator
from hetgan.benchmarking.inference import img_per_s
from hetgan.deploy import export
from hetgan.deploy.load import load_generator
from hetgan.deploy.quantize import quantize
from hetgan.deploy.runtimes import OpenVINOGenerator
from hetgan.fileio import write_json
from hetgan.models import build_models


@contextmanager
def subpixel_up_to(channels: int):
    """Export for OpenVINO (fp32 and int8) with sub-pixel layers of at most `channels` channels."""
    saved = dict(export.SUBPIXEL_FOR)
    export.SUBPIXEL_FOR.update({"openvino": channels, "openvino-int8": channels})
    try:
        yield
    finally:
        export.SUBPIXEL_FOR.update(saved)


def generators(run: Path, widths: list[str]) -> dict[str, TorchGenerator]:
    teacher = load_torch_generator(run)
    out = {f"teacher {teacher.config.model.g_widths or 'width ' + str(teacher.config.model.width)}": teacher}
    for w in widths:
        cfg = copy.deepcopy(teacher.config)
        cfg.model.g_widths = [int(x) for x in w.split(",")]
        G, _ = build_models(cfg.validate())
        out[f"[{w}]"] = TorchGenerator(G.eval(), cfg)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a dcgan run (the teacher)")
    parser.add_argument("--widths", nargs="+", default=["57,28,14", "32,16,8"], help="students' model.g_widths")
    parser.add_argument("--thresholds", type=int, nargs="+", default=[4, 16, 32, 64])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.7)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args()
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, G in generators(args.run, args.widths).items():
            for t in args.thresholds:
                with subpixel_up_to(t):
                    models[(name, "fp32", t)] = OpenVINOGenerator(export.onnx_with_check(G, "openvino")[0], name)
                    xml = Path(tmp) / f"{len(models)}.xml"
                    quantize(G, xml, quality_n=0)
                    models[(name, "int8", t)] = load_generator(xml)
        seen = {key: [] for key in models}
        for r in range(args.rounds):
            for key, G in models.items():
                seen[key].append(img_per_s(G, 64, args.seconds, warm=r > 0))
    print(f"img/s at batch 64, median of {args.rounds} interleaved rounds; columns: sub-pixel up to T channels")
    cols = [f"{p}, <= {t}" for p in ("fp32", "int8") for t in args.thresholds]
    print("| G | " + " | ".join(cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    record: dict[str, dict] = {}
    for name in dict.fromkeys(key[0] for key in models):
        cells = [f"{statistics.median(seen[(name, p, t)]):,.0f}" for p in ("fp32", "int8") for t in args.thresholds]
        print(f"| {name} | " + " | ".join(cells) + " |")
        record[name] = {p: {t: statistics.median(seen[name, p, t]) for t in args.thresholds} for p in ("fp32", "int8")}
    write_json(args.json, {"batch": 64, "rounds": args.rounds, "img_per_s": record})


if __name__ == "__main__":
    main()
