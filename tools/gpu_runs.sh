#!/usr/bin/env bash
# The GPU runs behind the README's results table: 3 seeds each of the ResNet-9 with the dawn recipe and with the
# course recipe, the ResNet-18 recipe, and airbench94 as the reference, all on the offline JPEG copy of CIFAR-10.
#
# 1. Here, on a machine with the package registry and ../shared (nothing of it is committed: .devdata/ and .whl/ are
#    git-ignored; together about 60 MB, under the device tool's 64 MiB):
#        bash tools/gpu_runs.sh prepare
# 2. On the GPU machine, through the device tool, with carry [".devdata", ".whl"]; each call one or more groups,
#    each call under 10 minutes (SEEDS="0" or "1 2" splits a group over calls):
#        bash tools/gpu_runs.sh setup dawn airbench bench
#        bash tools/gpu_runs.sh setup course
#        SEEDS="0 1" bash tools/gpu_runs.sh setup resnet18
#        bash tools/gpu_runs.sh setup fast 10        # the dawn recipe shortened to 10 epochs, compiled
#    results/*.json come back as $OUT/results.tgz, refreshed after every run (a timed-out call keeps what ended).
# 3. Here: tar xzf FILES_AT/results.tgz && python tools/results_table.py && git add results README.md
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-0 1 2}"
SHARED="${SHARED:-../shared}"
PY="${PY:-python3}"
# Python packages the GPU image lacks (KINDS.md lists what it has); versions as in requirements*.txt here.
WHEELS="albumentations==2.0.8 albucore==0.0.24 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0
typing-inspection==0.4.2 stringzilla==5.3.2 simsimd==6.5.16 torch-lr-finder==0.2.2 ttach==0.0.3"
SOURCE_ONLY="grad-cam==1.5.7 airbench==0.1.8"  # published as source only, pure Python: built into wheels here

prepare() {
    mkdir -p .devdata .whl
    cp "$SHARED/data/cifar10_jpeg.npz" "$SHARED/data/cifar10_jpeg.py" .devdata/
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $WHEELS
    # shellcheck disable=SC2086
    "$PY" -m pip wheel -q --no-deps -w .whl $SOURCE_ONLY
    rm -f .whl/*.tar.gz
    du -sh .devdata .whl
}

setup() {
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
    [ -f data/cifar-10-batches-py/test_batch ] || "$PY" .devdata/cifar10_jpeg.py data
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
}

send_back() {  # the device tool returns at most 8 files: one archive of every record so far
    if [ -n "${OUT:-}" ]; then tar czf "$OUT/results.tgz" results; fi
}

train_seeds() {  # NAME TRAIN.PY-FLAGS...: one run per seed, each writing its record into results/
    local name=$1; shift
    for seed in $SEEDS; do
        "$PY" train.py --data-dir data --seed "$seed" --out "runs/$name-seed$seed" --overwrite --results-dir results \
            --enable-progress-bar false "$@"
        send_back
    done
}

mkdir -p results
[ $# -gt 0 ] || { sed -n '2,20p' "$0"; exit 2; }
while [ $# -gt 0 ]; do
    group=$1; shift
    case "$group" in
        prepare) prepare ;;
        setup) setup ;;
        dawn|course|resnet18) train_seeds "$group" --recipe "$group" ;;
        fast) epochs=$1; shift; train_seeds "dawn-${epochs}ep" --recipe dawn --epochs "$epochs" --compile ;;
        airbench) "$PY" tools/airbench_reference.py --data-dir data --seeds $SEEDS --results-dir results; send_back ;;
        bench)
            "$PY" tools/bench.py --device cuda --batch-size 512 --steps 50 --out results/bench_cuda.json
            "$PY" tools/bench.py --device cuda --batch-size 512 --steps 50 --compile --out results/bench_cuda_compiled.json
            send_back ;;
        *) echo "unknown group $group: prepare, setup, dawn, course, resnet18, fast EPOCHS, airbench, bench" >&2
           exit 2 ;;
    esac
done
