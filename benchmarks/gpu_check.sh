#!/usr/bin/env bash
# One prepared check for a machine with CUDA (issue 13): every `gpu`-marked test, the GPU benchmarks
# and, with two or more GPUs, a 2-process DDP smoke run; then one table. Budget: under 10 minutes on
# one GPU (each step has its own time limit; they add up to 8.75 minutes, 12.75 with the DDP steps).
#
#   bash benchmarks/gpu_check.sh            # from the repository root or anywhere
#   GPU_CHECK_LOG=DIR bash benchmarks/gpu_check.sh   # keep the per-step logs in DIR
#
# Steps: pytest -m gpu; pretrain step plain vs FT (ResNet-50, 224 px, bf16 + channels_last);
# kNN with the faiss GPU index vs torch; extraction images/s (whole data path vs bare forward, and
# bf16 + channels_last vs fp32; ResNet-50 and ViT-B/16); DDP smoke (pretrain and kNN under torchrun on 2 GPUs).
# Issue 17's two suspicions: split-bn (does SplitBatchNorm2d copy channels_last inputs, and its cost
# against BatchNorm2d) and, on 2 GPUs, gather-layout (does the key gather into empty_like buffers
# return exact images under NCCL, channels_last included).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG=${GPU_CHECK_LOG:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$LOG"
TABLE="$LOG/table.txt"
: > "$TABLE"

if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device is visible (torch.cuda.is_available() is False)" >&2
    exit 2
fi
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
NAME=$(python -c "import torch; print(torch.cuda.get_device_name(0))")

# step NAME LIMIT_S SUMMARY_REGEX COMMAND...: run COMMAND under a time limit, log it, add a table row
# with its status, wall time and the log lines matching SUMMARY_REGEX.
step() {
    local name=$1 limit=$2 pattern=$3
    shift 3
    local start status seconds summary
    start=$(date +%s)
    echo "gpu_check: $name (limit ${limit}s)" >&2
    if timeout "$limit" "$@" > "$LOG/$name.log" 2>&1; then status=ok; else status="FAIL($?)"; fi
    seconds=$(( $(date +%s) - start ))
    summary=$(grep -E "$pattern" "$LOG/$name.log" | tr -s ' ' | paste -sd '|' -)
    [ -n "$summary" ] || summary=$(tail -n 1 "$LOG/$name.log" | tr -s ' ')
    printf '%-16s %-9s %5ss  %s\n' "$name" "$status" "$seconds" "$summary" >> "$TABLE"
}

step gpu-tests 150 '(passed|failed|error)' \
    python -m pytest -q -m gpu -p no:cacheprovider tests
step pretrain-step 90 '^(full step|logits part)' \
    python benchmarks/pretrain_step.py --arch resnet50 --size 224 --batch 128 --steps 5
step knn-faiss-gpu 90 'ours / torch|^  ours' \
    python benchmarks/knn.py --gpu --methods ours torch
step extraction 90 '^(extraction|forward)' \
    python benchmarks/extraction.py
step extraction-vit 45 '^(extraction|forward)' \
    python benchmarks/extraction.py --arch vit_base_patch16
step split-bn 60 'median over shapes' \
    python benchmarks/split_bn_layout.py
if [ "$GPUS" -ge 2 ]; then
    step gather-layout 60 'gather_layout:' \
        python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/gather_layout.py
    step ddp-pretrain 60 'wrote|error' \
        python -m torch.distributed.run --standalone --nproc_per_node 2 -m sslbench pretrain \
        --config mocov2_ft_tiny --out "$LOG/ddp" epochs=1 data.max_images=512 data.workers=2
    step ddp-knn 60 'k=20 T=0.07|wrote|error' \
        python -m torch.distributed.run --standalone --nproc_per_node 2 -m sslbench knn \
        "$LOG/ddp/checkpoint_last.pth" --dataset digits --image-size 32 --out "$LOG/ddp-knn" --no-cache
else
    printf '%-16s %-9s %5ss  %s\n' ddp-smoke skipped 0 "needs 2 GPUs; $GPUS visible" >> "$TABLE"
fi

echo
echo "gpu_check on $GPUS x $NAME (logs: $LOG)"
printf '%-16s %-9s %6s  %s\n' step status time summary
cat "$TABLE"
! grep -q 'FAIL' "$TABLE"
