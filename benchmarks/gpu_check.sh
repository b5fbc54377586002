#!/usr/bin/env bash
# What a machine with a CUDA GPU runs to check ipd's GPU path, in under 10 minutes:
#   1. steps/s of each trainable stage (value, world model, policy) at the `paper` profile's
#      sizes, fp32 and bf16 autocast, with the fraction of the GPU's matmul peak and the loss
#      curves of both precisions on the same batches (benchmarks/speed/precision.py);
#   2. a short end-to-end run on the GPU (`ipd run --profile quick --device cuda`), timed.
# Everything is written to one results file (default benchmarks/results/gpu_check.md).
#
#   pip install -e . && bash benchmarks/gpu_check.sh [RESULTS_FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu_check.md}"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else \
'torch sees no CUDA GPU (torch ' + torch.__version__ + '): run this on a GPU machine')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python benchmarks/speed/precision.py --device cuda --profile paper --speed-steps 100 \
    --rounds 2 --curve-steps 300 --out "$work/precision.md"

start=$(date +%s)
ipd run --profile quick --device cuda --out "$work/runs" > "$work/run.json" 2> "$work/run.log"
seconds=$(( $(date +%s) - start ))

{
    echo "# GPU check ($(date -u +%Y-%m-%d), \`bash benchmarks/gpu_check.sh\`)"
    echo
    cat "$work/precision.md"
    echo "## End to end"
    echo
    echo "\`ipd run --profile quick --device cuda\`: ${seconds} s. Its results.json:"
    echo
    echo '```json'
    cat "$(find "$work/runs" -name results.json | head -1)"
    echo '```'
} > "$out"
echo "wrote $out"
