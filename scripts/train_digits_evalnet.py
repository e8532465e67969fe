"""Train the bundled digits feature network on a fixed split of mnist5k and write it into the
package (src/hetgan/eval/digits_evalnet.safetensors), with its held-out accuracy in its config.

    python scripts/train_digits_evalnet.py [--epochs 20]
"""

import argparse
import logging
from pathlib import Path

from hetgan.config import DataConfig
from hetgan.data import load_data
from hetgan.eval.evalnet import DIGITS_EVALNET, fit_evalnet, save_evalnet

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = load_data(DataConfig(spec="mnist5k", resolution=32, channels=1))
    net = fit_evalnet(data, epochs=args.epochs, held_out_per_class=50, seed=0)
    out = save_evalnet(net, Path(__file__).resolve().parents[1] / "src" / "hetgan" / "eval" / DIGITS_EVALNET)
    print(f"held-out accuracy {net.cfg.held_out_accuracy:.4f} on {net.cfg.held_out_count} digits -> {out}")
