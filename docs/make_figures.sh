#!/usr/bin/env bash
# Regenerate every figure of docs/inside.md (docs/img/*.png) from one trained model, with aiayn commands.
#
#   docs/make_figures.sh MODEL_DIR ["source sentence"]
#
# MODEL_DIR is a run folder (config.yaml, metrics.csv, checkpoints/); the sentence defaults to Genesis 1:1
# in the Reina-Valera 1909, for the Bible model of `make demo`. Run from anywhere; writes into docs/img.
set -euo pipefail

MODEL=${1:?usage: docs/make_figures.sh MODEL_DIR [SENTENCE]}
SENTENCE=${2:-En el principio creó Dios los cielos y la tierra.}
MODEL=$(cd "$MODEL" && pwd)
cd "$(dirname "$0")/.."
AIAYN=${AIAYN:-.venv/bin/aiayn}
IMG=docs/img
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$IMG"

# §3.5 and Eq. 3 as the paper has them (base: d_model 512, warmup 4000), then the model's own schedule.
"$AIAYN" plot positions --d-model 512 --max-len 100 --out "$IMG/positions.png"
"$AIAYN" plot schedule --preset base --out "$IMG/schedule.png"
STEPS=$(tail -n 1 "$MODEL/metrics.csv" | cut -d, -f1)  # the steps this run actually trained
"$AIAYN" plot schedule --config "$MODEL/config.yaml" --steps "$STEPS" --out "$IMG/schedule_run.png"
"$AIAYN" plot run "$MODEL" --out "$IMG/curves.png"

# Attention of one sentence: three grids, and the Figure 3-5 view of the last encoder layer and of the
# last encoder-decoder layer. File names carry the layer number; the docs want fixed names.
for kind in encoder cross; do
    "$AIAYN" attention --model "$MODEL" "$SENTENCE" --kind "$kind" --out "$TMP/$kind"
    cp "$TMP/$kind"/attention_lines_"$kind"_layer*.png "$IMG/attention_lines_$kind.png"
done
cp "$TMP/encoder/attention_encoder.png" "$TMP/encoder/attention_decoder.png" "$TMP/encoder/attention_cross.png" "$IMG/"

# The explorer page, as the browser test drives it (headless Chromium; needs `apt-get install chromium`).
AIAYN_SAVE_SCREENSHOTS=1 AIAYN_EXPLORER_MODEL="$MODEL" AIAYN_EXPLORER_SENTENCE="$SENTENCE" \
    .venv/bin/pytest -q tests/serve/test_browser.py

for png in "$IMG"/*.png; do
    size=$(stat -c %s "$png")
    if [ "$size" -gt 300000 ]; then
        echo "warning: $png is $((size / 1000)) KB; a shorter sentence keeps it under 300 KB" >&2
    fi
done
ls -l "$IMG"
