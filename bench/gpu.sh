#!/usr/bin/env bash
# The GPU figures of docs/performance.md ("GPU") in one command of at most 10 minutes, for a machine
# with an NVIDIA GPU whose Python has PyTorch with CUDA and aiayn's other dependencies (aiayn
# itself is taken from src/, so nothing is installed). From the repository root:
#
#   bash bench/gpu.sh OUT_DIR [DATA_DIR [MODEL]]
#
# DATA_DIR: a prepared folder (default data/bible: its train split feeds the training bench, its
# test verses the decoding bench). MODEL: a trained run folder or checkpoint for decoding (default:
# random weights at forced lengths only). Writes into OUT_DIR:
#   env.txt       the GPU, driver, PyTorch and CUDA versions
#   train.jsonl   bench.train: aiayn `base` against torch.nn.Transformer, fp32 and bf16, tokens/s and
#                 MFU against the card's measured matmul peak (train.log: its summary table)
#   decode.jsonl  bench.decode: greedy and beam 4 at batch 1 and 32, aiayn float32 and bf16 against
#                 Hugging Face Marian and CTranslate2 on CUDA (decode.log); a peer that cannot run
#                 there gets a line saying why instead of its timings
# Each stage has its own time limit, so that a slow one still leaves the others' results.
# BENCH_DEVICE=cpu BENCH_FLAGS=--quick runs the same stages on a CPU, to check the script itself.
set -euo pipefail
out=${1:?usage: bash bench/gpu.sh OUT_DIR [DATA_DIR [MODEL]]}
data=${2:-data/bible}
model=${3:-}
device=${BENCH_DEVICE:-cuda}
python=${PYTHON:-python3}
read -r -a flags <<<"${BENCH_FLAGS:-}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

"$python" - "$device" >"$out/env.txt" <<'EOF'
import sys, torch
device = sys.argv[1]
if device == "cuda" and not torch.cuda.is_available():
    sys.exit("bench/gpu.sh: PyTorch sees no CUDA device here")
print("torch", torch.__version__, "cuda", torch.version.cuda)
if device == "cuda":
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", p.multi_processor_count, "SMs")
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$out/env.txt" 2>/dev/null || true

status=0
timeout 330 "$python" -m bench.train --device "$device" --data "$data" --presets base "${flags[@]}" \
    >"$out/train.jsonl" 2>"$out/train.log" || { status=$?; echo "bench.train failed ($status): see $out/train.log" >&2; }
timeout 240 "$python" -m bench.decode --device "$device" --data "$data" ${model:+--model "$model"} "${flags[@]}" \
    >"$out/decode.jsonl" 2>"$out/decode.log" || { status=$?; echo "bench.decode failed ($status): see $out/decode.log" >&2; }
cat "$out/env.txt"
tail -n 25 "$out/train.log" "$out/decode.log"
exit "$status"
