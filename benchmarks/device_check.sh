#!/bin/bash
# GPU checks in one prepared script, for a host with an NVIDIA GPU (written for an H100) whose
# Python has jax[cuda], flax, optax, orbax, scipy, matplotlib, tqdm and torch, but neither tyro
# (our CLI) nor librosa: the front end's and the landscape engine's figures, the compatibility
# test suites on that host's jax/flax, and the main job's gpu preset, timed.
#
# Missing pieces travel as wheels. The main job's gpu preset computes its features with the JAX front
# end, so only tyro and its two pure-Python needs travel, as wheels. Once, here, in the repo root:
#
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp -d .whl tyro docstring-parser typeguard
#
# Then two calls, back to back (on a lent machine each carries [".whl"]); every step has its own
# time limit, so a slow step cannot eat a short budget:
#
#     bash benchmarks/device_check.sh quick   # at most 5 min: front end, landscape, versions, tests
#     bash benchmarks/device_check.sh main    # at most 9 min: make run PRESET=gpu, timed
#
# and, when a session has the minutes (or instead of `quick` once its figures are on record):
#
#     bash benchmarks/device_check.sh train   # at most 2 min: the training step on the GPU, our
#                                             # operations against Flax's own, and PyTorch eager
#
# Both together need about 15 minutes with machine starts; with less, run `main` first (its
# 10-minute target is the one most at risk), `quick` later. `quick` also runs the curvature and
# eigenvalue-map tests, whose device loops (`loop="device"`) are the default off the CPU.
#
# Everything is written under $OUT (or /tmp/device_check) and printed.
set -uo pipefail
part=${1:-quick}
out=${OUT:-/tmp/device_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt" | grep -v "it/s\]\|pt/s\]\|step/s"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}

case $part in
    quick)
        python3 -c "import sys, jax, flax, optax, orbax.checkpoint as o, torch; \
print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', \
optax.__version__, 'torch', torch.__version__, jax.devices())" | tee "$out/versions.txt"
        # The targets first, so that a cut-off loses only the compatibility tests.
        step frontend 45 python3 -m benchmarks.frontend --gen-clips 0
        # JAX would take 75% of the GPU's memory up front and leave PyTorch's loop the rest.
        XLA_PYTHON_CLIENT_PREALLOCATE=false step landscape 150 python3 -m benchmarks.landscape \
            --bf16 --repeats 2 --json "$out/landscape.json"
        # jax 0.11 / flax 0.12.10 compatibility: the suites that need neither librosa nor tyro,
        # on the host's 16 cores (tiny models compile faster than they run on a GPU).
        xdist=""
        python3 -c "import xdist" 2> /dev/null && xdist="-n 8"
        JAX_PLATFORMS=cpu step tests 90 python3 -m pytest -q -x $xdist -p no:cacheprovider \
            tests/test_models.py tests/test_train_steps.py tests/test_train_loop.py \
            tests/test_landscape_evaluate.py tests/test_landscape_directions.py \
            tests/test_landscape_hessian.py
        ;;
    main)
        rm -rf /tmp/runs
        step main_gpu 540 python3 -m experiments.main --preset gpu --workdir /tmp/runs
        cp /tmp/runs/main/report.md /tmp/runs/main/results.json "$out/" 2> /dev/null
        ;;
    train)
        # Issue 11: research.models.ops must not make the GPU step slower than Flax's and lax's
        # own operations (jax-library). JAX and PyTorch share the GPU, one process each.
        XLA_PYTHON_CLIENT_PREALLOCATE=false step train 120 python3 -m benchmarks.train \
            --threads 8 --batch 32 128 --rounds 3 --sides jax-step jax-library torch-eager \
            --json "$out/train.json"
        ;;
    *)
        echo "usage: $0 quick|main|train" >&2
        exit 2
        ;;
esac
