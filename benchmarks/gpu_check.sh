#!/usr/bin/env bash
# The checks that need a GPU, as one script (a GPU machine is lent only now and then):
#   1. CNN inference speed on CUDA (issue 4: >= 1,000,000 spectra/s), with and without cuDNN
#      autotuning;
#   2. the CUDA tests (tests/test_cuda.py, skipped on CPU machines) and the CNN tests;
#   3. `nirwatch train` on the shootout with --device cuda, timed (issue 3's GPU training time);
#   4. the throughput benchmark's --quick run with the worker's CNN on CUDA.
# Each step writes into OUT as it goes, so a run cut short still leaves the earlier results.
#
#   benchmarks/gpu_check.sh [OUT] [SHOOTOUT_CSV]
# Environment: PYTHON (default python3), BUNDLE (networks for step 1 and the worker in step 4;
# default var/bench-bundle-r4 when present).
set -u
out=${1:-var/gpu-check}
data=${2:-../shared/data/shootout2002/instrument1.csv}
py=${PYTHON:-python3}
bundle=${BUNDLE:-var/bench-bundle-r4}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
step() { echo "== $(date +%T) $*"; }
bundle_args=()
[ -d "$bundle" ] && bundle_args=(--bundle "$bundle")

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc
$py -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

step "CNN inference on CUDA"
$py benchmarks/cnn_inference.py --device cuda "${bundle_args[@]}" --repeats 3 \
    --out "$out/cnn_inference.json"
$py benchmarks/cnn_inference.py --device cuda "${bundle_args[@]}" --cudnn-benchmark --members 1,5 \
    --chunks 65536,262144 --repeats 3 --out "$out/cnn_inference_cudnn.json"

step "CUDA and CNN tests"
$py -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_cnn.py 2>&1 | tail -n 15

step "nirwatch train --device cuda on the shootout"
if [ -f "$data" ]; then
    rm -rf "$out/train-bundle"
    t0=$(date +%s%N)
    NIRWATCH_TRAIN_CNN_START_NM=1100 $py -m nirwatch.apps.cli train --data "$data" --target assay \
        --unit mg --split-column SampleType --train-values Train,Validate --model both \
        --device cuda --out "$out/train-bundle" 2>&1 | tail -n 25
    t1=$(date +%s%N)
    echo "train wall time: $(( (t1 - t0) / 1000000 )) ms"
    cp "$out/train-bundle/report/report.json" "$out/train_report.json" 2>/dev/null
    rm -rf "$out/train-bundle"
else
    echo "no shootout data at $data: skipped"
fi

step "throughput --quick, worker CNN on CUDA"
timeout 240 $py benchmarks/throughput.py --quick --device cuda "${bundle_args[@]}" \
    --cnn-members 1 2>&1 | tail -n 40 | tee "$out/throughput.log"
step done
