#!/usr/bin/env bash
# The GPU runs behind the README's results table: 3 seeds each of the ResNet-9 with the dawn recipe and with the
# course recipe, the ResNet-18 recipe, and airbench94 as the reference, all on the offline JPEG copy of CIFAR-10;
# the search for the fastest ResNet-9 setting, and notebooks 04 and 05 run on the GPU.
# Every training run is timed as Page and airbench time theirs: validation and last.ckpt only after the last epoch.
#
# 1. Here, on a machine with the package registry and ../shared (nothing of it is committed: .devdata/ and .whl/ are
#    git-ignored; together under the device tool's 64 MiB, which prepare checks):
#        bash tools/gpu_runs.sh prepare
# 2. On the GPU machine, through the device tool, with carry [".devdata", ".whl"]; each call one or more groups,
#    each call under 10 minutes (SEEDS="0" or "1 2" splits a group over calls):
#        bash tools/gpu_runs.sh setup dawn airbench bench
#        bash tools/gpu_runs.sh setup course
#        SEEDS="0 1" bash tools/gpu_runs.sh setup resnet18
#        SEEDS=0 bash tools/gpu_runs.sh setup search     # dawn, compiled, at each of $EPOCHS_LIST epochs
#        bash tools/gpu_runs.sh setup fast 12            # then 3 seeds of the fewest epochs that reached airbench94
#        bash tools/gpu_runs.sh setup notebook 04        # notebooks/04_*.ipynb executed in place on the GPU
#        bash tools/gpu_runs.sh setup notebook 05
#    results/ (records, and runs' summaries) comes back as $OUT/results.tgz, refreshed after every run (a timed-out
#    call keeps what ended); an executed notebook comes back with images/ as $OUT/notebooks.tgz.
# 3. Here: tar xzf FILES_AT/results.tgz && python tools/results_table.py && git add results README.md
#    (notebooks: tar xzf FILES_AT/notebooks.tgz, which holds notebooks/NN_*.ipynb and images/).
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-0 1 2}"
SHARED="${SHARED:-../shared}"
PY="${PY:-python3}"
# Python packages the GPU image lacks (KINDS.md lists what it has); versions as in requirements*.txt here.
WHEELS="albumentations==2.0.8 albucore==0.0.24 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0
typing-inspection==0.4.2 stringzilla==5.3.2 simsimd==6.5.16 torch-lr-finder==0.2.2 ttach==0.0.3"
SOURCE_ONLY="grad-cam==1.5.7 airbench==0.1.8"  # published as source only, pure Python: built into wheels here
# What executing a notebook needs (nbclient and an IPython kernel) beyond the image's packages; wcwidth 0.2.13 is the
# last pure-Python one (0.9 ships a 0.8 MB binary), debugpy and jedi are left out (ipykernel and IPython run
# without them: no debugger, no completion).
NOTEBOOK_WHEELS="nbclient==0.11.0 nbformat==5.11.1 jupyter-client==8.10.0 jupyter-core==5.9.1 traitlets==5.16.1
ipykernel==7.4.0 ipython==9.18.1 ipython-pygments-lexers==1.1.1 comm==0.2.3 matplotlib-inline==0.2.2
nest-asyncio==1.6.0 pyzmq==27.3.0 tornado==6.6.1 platformdirs==4.14.7 fastjsonschema==2.22.3 jsonschema==4.26.0
jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 prompt-toolkit==3.0.53 wcwidth==0.2.13
decorator==5.3.1 pexpect==4.9.0 ptyprocess==0.7.0 stack-data==0.6.3 executing==2.3.0 asttokens==3.0.2
pure-eval==0.2.4"
TIMED="--no-val-every-epoch --no-ckpt-every-epoch"  # validate and write last.ckpt only after the last epoch
EPOCHS_LIST="${EPOCHS_LIST:-10 12 14 16 18}"
CARRY_LIMIT_MIB=64

prepare() {  # wheels for Python 3.12 on manylinux x86_64, unpacked and packed again as one .whl/site.tar.xz
    local wheels
    wheels=$(mktemp -d)
    rm -rf .devdata .whl
    mkdir -p .devdata .whl
    cp "$SHARED/data/cifar10_jpeg.npz" "$SHARED/data/cifar10_jpeg.py" .devdata/
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
        -d "$wheels" $WHEELS $NOTEBOOK_WHEELS
    # shellcheck disable=SC2086
    "$PY" -m pip wheel -q --no-deps -w "$wheels" $SOURCE_ONLY
    # Installing these wheels is unpacking them (no scripts or headers needed); xz packs the unpacked files into
    # about 60% of the wheels' size, which is what fits the data and the notebook packages under the carry limit.
    mkdir "$wheels/site"
    for wheel in "$wheels"/*.whl; do "$PY" -m zipfile -e "$wheel" "$wheels/site"; done
    tar -C "$wheels/site" -cf - . | xz -9 -T0 > .whl/site.tar.xz
    rm -rf "$wheels"
    du -sh .devdata .whl
    local total
    total=$(du -sm --apparent-size .devdata .whl | awk '{s += $1} END {print s}')
    if [ "$total" -ge "$CARRY_LIMIT_MIB" ]; then
        echo "error: .devdata and .whl hold $total MiB, over the device tool's $CARRY_LIMIT_MIB MiB carry" >&2
        exit 1
    fi
}

setup() {
    mkdir -p /tmp/site
    tar -C /tmp/site -xJf .whl/site.tar.xz
    export PYTHONPATH=/tmp/site
    [ -f data/cifar-10-batches-py/test_batch ] || "$PY" .devdata/cifar10_jpeg.py data
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
}

send_back() {  # the device tool returns at most 8 files: one archive of every record (and run summary) so far
    if [ -n "${OUT:-}" ]; then tar czf "$OUT/results.tgz" results; fi
}

train_seeds() {  # NAME RESULTS-DIR TRAIN.PY-FLAGS...: one timed run per seed, its record into RESULTS-DIR
    local name=$1 results=$2; shift 2
    mkdir -p "$results"
    for seed in $SEEDS; do
        # shellcheck disable=SC2086
        "$PY" train.py --data-dir data --seed "$seed" --out "runs/$name-seed$seed" --overwrite \
            --results-dir "$results" --enable-progress-bar false $TIMED "$@"
        mkdir -p "$results/summaries"  # beside the records, out of the tables (results_table reads *.json only)
        cp "runs/$name-seed$seed/summary.json" "$results/summaries/$name-seed$seed.json"
        send_back
    done
}

notebook() {  # NN: execute notebooks/NN_*.ipynb in place on this machine (its course settings on CUDA)
    local path
    path=$(ls notebooks/"$1"_*.ipynb)
    DATA_DIR="$PWD/data" "$PY" - "$path" <<'PYTHON'
import sys
import nbformat
from nbclient import NotebookClient
path = sys.argv[1]
notebook = nbformat.read(path, as_version=4)
try:
    NotebookClient(notebook, timeout=None, kernel_name="python3", resources={"metadata": {"path": "notebooks"}}).execute()
finally:  # a failing cell still writes what ran, to see why
    nbformat.write(notebook, path)
PYTHON
    if [ -n "${OUT:-}" ]; then tar czf "$OUT/notebooks.tgz" notebooks/*.ipynb images; fi
}

mkdir -p results
[ $# -gt 0 ] || { sed -n '2,22p' "$0"; exit 2; }
while [ $# -gt 0 ]; do
    group=$1; shift
    case "$group" in
        prepare) prepare ;;
        setup) setup ;;
        dawn|course|resnet18) train_seeds "$group" results --recipe "$group" ;;
        fast) epochs=$1; shift; train_seeds "dawn-${epochs}ep" results --recipe dawn --epochs "$epochs" --compile ;;
        search) for epochs in $EPOCHS_LIST; do
                    train_seeds "dawn-${epochs}ep" results --recipe dawn --epochs "$epochs" --compile
                done ;;
        notebook) notebook "$1"; shift ;;
        airbench) "$PY" tools/airbench_reference.py --data-dir data --seeds $SEEDS --results-dir results; send_back ;;
        bench)
            "$PY" tools/bench.py --device cuda --batch-size 512 --steps 50 --out results/bench_cuda.json
            "$PY" tools/bench.py --device cuda --batch-size 512 --steps 50 --compile --out results/bench_cuda_compiled.json
            send_back ;;
        *) echo "unknown group $group: prepare, setup, dawn, course, resnet18, fast EPOCHS, search," \
                "notebook NN, airbench, bench" >&2
           exit 2 ;;
    esac
done
