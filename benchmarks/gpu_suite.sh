#!/usr/bin/env bash
# Every GPU measurement issue 4 asks for, in one go (about 8 minutes on one H100/H200), with each
# output kept under OUTDIR. Run from the repository root in an environment where `import torch`
# sees a CUDA GPU and hetgan's dependencies are installed (pip install -e . without --deps works
# when torch is already there):
#     bash benchmarks/gpu_suite.sh OUTDIR
# Then copy the numbers, the GPU's name and the date into benchmarks/RESULTS.md.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_suite.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')" || exit 2
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
# The GPU-only tests (skipped on CPU machines), so a pass here is what counts for them.
python -m pytest -q -m "slow or not slow" tests/test_accel.py tests/test_placement.py 2>&1 | tee "$out/gpu_tests.txt"
# >= 5x the textbook loop on the same GPU at batch 64 (and what tune picks there).
python benchmarks/train_throughput.py --device cuda --rounds 5 --seconds 4 2>&1 | tee "$out/train_throughput.txt"
# >= 25 % of the measured bf16 matrix peak at the best batch.
python -m hetgan bench --preset dcgan_textbook --batch 64 256 1024 4096 --seconds 5 --no-textbook \
    --set accel.device=cuda --set accel.precision=bf16 --set accel.channels_last=true \
    --set accel.optimizer_impl=fused --set accel.cuda_graphs=true \
    --json "$out/bench_bf16.json" 2>&1 | tee "$out/bench_bf16.txt"
# G on the GPU with D on the CPU, the reverse, and split networks, against all on the GPU.
python benchmarks/placement_layouts.py --device cuda --rounds 5 --seconds 4 2>&1 | tee "$out/placement.txt"
