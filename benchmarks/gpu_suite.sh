#!/usr/bin/env bash
# Every GPU measurement issue 4 asks for, in one go (about 11 minutes on one H100), with each
# output kept under OUTDIR. Run from the repository root in an environment where `import torch`
# sees a CUDA GPU and hetgan's dependencies are installed (pip install -e . without --deps works
# when torch is already there; on a machine with no network, PYTHONPATH=src with a `python3` whose
# torch sees the GPU, as the device tool's H100 ran it):
#     bash benchmarks/gpu_suite.sh OUTDIR
# Then copy the numbers, the GPU's name and the date into benchmarks/RESULTS.md.
#
# Settings (environment), for a dry run of the whole script on a CPU (the test suite does one):
#     DEVICE=cuda  SECONDS_PER_WINDOW=4  ROUNDS=5  TUNE_SECONDS=5  BATCHES="64 256 1024 4096"  WIDTH=64
#     STEPS="tests throughput bench knobs placement" (the steps to run; where one command may run
#     for 10 minutes at most, as on the device tool's machines, run two: STEPS="tests throughput",
#     then STEPS="bench knobs placement")    TESTS=1 (0 leaves out the GPU-only tests too)
#     GPU_EXTRA=1 (on cuda: installs the `gpu` extra, ONNX Runtime's GPU build and TensorRT, first)
#     STEPS=knobs_large (not in the default): the knob survey again at the largest batch, where
#     the bf16 share of peak is decided (a few minutes: each compiled knob set compiles anew)
#     STEPS=profile (not in the default): where the device time goes at the largest batch, in
#     matrix products and in everything else (benchmarks/profile_step.py; under a minute)
#     STEPS=placement_resnet (not in the default): the placement layouts again for the SNGAN ResNet
#     (resnet_cifar10 at WIDTH on the bundled digits): its D split puts the residual blocks on the GPU
#     STEPS=overlap (not in the default): whether the prefetch loader hides the data path, against
#     resident data and an inline loader (benchmarks/loader_overlap.py: DCGAN-64, RGB, batch 1024)
#     STEPS=sn_compile (not in the default): the resnet trainer compiled with spectral norm in one
#     graph, against its power iteration outside the graph and eager (benchmarks/spectral_norm_compile.py)
#     STEPS=scaling (not in the default): data-parallel training under torchrun over NCCL on every GPU
#     of the machine: step, gradient bytes, all-reduce time and the efficiency model (scaling_model.py)
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_suite.sh OUTDIR}
device=${DEVICE:-cuda}
secs=${SECONDS_PER_WINDOW:-4}
rounds=${ROUNDS:-5}
tune_secs=${TUNE_SECONDS:-5}
batches=${BATCHES:-64 256 1024 4096 8192}
steps=" ${STEPS:-tests throughput bench knobs placement} "
[ "${TESTS:-1}" = 1 ] || steps=${steps/ tests / }
want() { [[ $steps == *" $1 "* ]]; }
width=${WIDTH:-64}
py=${PYTHON:-python3}  # the interpreter whose torch runs the suite (the tests pass their own)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
run() {  # run one step, keep its output, remember a failure and go on with the next step
    local name=$1
    shift
    "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "gpu_suite: step '$name' failed with exit status $rc" | tee -a "$out/failed.txt"
        status=1
    fi
}
if [[ $device == cuda* ]]; then
    "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')" || exit 2
    nvidia-smi >"$out/nvidia-smi.txt" 2>&1
    graphs=(--set accel.cuda_graphs=true --set accel.compile=true)  # tune's choice at batch 64 on an H100
else
    graphs=()  # CUDA graphs exist only on CUDA devices (and compiling on a CPU dry run takes long)
fi
# ONNX Runtime's GPU build and TensorRT (the `gpu` extra in pyproject.toml) for the GPU tests of the
# onnxruntime and tensorrt backends. onnxruntime-gpu installs the same `onnxruntime` module as the
# CPU build, so the CPU build is removed first, but only once every wheel is fetched: on a machine
# with no network the CPU build stays and those tests skip, saying "needs onnxruntime-gpu".
# GPU_EXTRA=0 leaves the installed runtimes alone.
if [[ $device == cuda* && ${GPU_EXTRA:-1} = 1 ]]; then
    gpu_reqs=$("$py" -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['gpu']))")
    wheels=$(mktemp -d)
    # shellcheck disable=SC2086  # the requirements are words
    if "$py" -m pip download -q -d "$wheels" $gpu_reqs >"$out/gpu_extra.txt" 2>&1; then
        "$py" -m pip uninstall -y -q onnxruntime >>"$out/gpu_extra.txt" 2>&1
        run gpu_extra_install "$py" -m pip install -q --no-index --find-links "$wheels" $gpu_reqs
    else
        echo "gpu_suite: could not fetch $gpu_reqs (no network?); the CPU onnxruntime stays" | tee -a "$out/gpu_extra.txt"
    fi
    rm -rf "$wheels"
    "$py" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" \
        2>&1 | tee -a "$out/gpu_extra.txt"
fi
# The GPU-only tests (skipped on CPU machines), so a pass here is what counts for them.
if want tests; then
    run gpu_tests "$py" -m pytest -q -o addopts= -m gpu tests  # in one process: the GPU is one device
fi
# >= 5x the textbook loop on the same GPU at batch 64 (and what tune picks there).
if want throughput; then
    run train_throughput "$py" benchmarks/train_throughput.py --device "$device" --rounds "$rounds" \
        --seconds "$secs" --tune-seconds "$tune_secs" --width "$width" --json "$out/train_throughput.json"
fi
# >= 25 % of the measured bf16 matrix peak at the best batch, each batch in a process of its own (a
# compiled network recompiled for a second batch size turns to dynamic shapes); then the model twice
# as wide at the largest batch.
if want bench; then
    for batch in $batches; do
        run "bench_bf16_b$batch" "$py" -m hetgan bench --preset dcgan_textbook --batch "$batch" \
            --seconds "$secs" --no-textbook --device "$device" --set model.width="$width" \
            --set accel.precision=bf16 --set accel.optimizer_impl=fused "${graphs[@]}" \
            --json "$out/bench_bf16_b$batch.json"
    done
    run bench_bf16_wide "$py" -m hetgan bench --preset dcgan_textbook --batch "${batch:?}" --seconds "$secs" \
        --no-textbook --device "$device" --set model.width="$((2 * width))" --set accel.precision=bf16 \
        --set accel.optimizer_impl=fused "${graphs[@]}" --json "$out/bench_bf16_wide.json"
fi
# What each knob set is worth on its own at the first batch size (one window each).
if want knobs; then
    run step_knobs "$py" benchmarks/step_knobs.py --device "$device" --batch "${batches%% *}" \
        --width "$width" --seconds "$secs"
fi
if want knobs_large; then
    run step_knobs_large "$py" benchmarks/step_knobs.py --device "$device" --batch "${batches##* }" \
        --width "$width" --seconds "$secs"
fi
if want profile; then  # eager kernels (a replayed graph hides its launches, not its kernels' time)
    run profile "$py" benchmarks/profile_step.py --device "$device" --batch "${batches##* }" --width "$width" \
        --set accel.precision=bf16 --set accel.channels_last=true --set accel.cudnn_benchmark=true \
        --set accel.optimizer_impl=fused
fi
# G on the GPU with D on the CPU, the reverse, and split networks, against all on the GPU.
if want placement; then
    run placement "$py" benchmarks/placement_layouts.py --device "$device" --rounds "$rounds" \
        --seconds "$secs" --width "$width" --json "$out/placement.json"
fi
if want placement_resnet; then
    run placement_resnet "$py" benchmarks/placement_layouts.py --device "$device" --rounds "$rounds" \
        --seconds "$secs" --width "$width" --preset resnet_cifar10 --json "$out/placement_resnet.json"
fi
if want overlap; then
    run overlap "$py" benchmarks/loader_overlap.py --device "$device" --rounds "$rounds" --seconds "$secs" \
        --width "$width"
fi
if want sn_compile; then
    run sn_compile "$py" benchmarks/spectral_norm_compile.py --device "$device" --rounds "$rounds" \
        --seconds "$secs" --width "$width" --batch "${batches%% *}"
fi
if want scaling; then
    gpus=$("$py" -c 'import torch; print(max(torch.cuda.device_count(), 1))')
    run scaling "$py" benchmarks/scaling_model.py --device "$device" --layouts 1x1 "${gpus}x1" --batch 64
fi
exit $status
