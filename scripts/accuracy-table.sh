#!/usr/bin/env bash
# The accuracy table of docs/quantization.md: stories260K quantized with the recipes of issue 3's
# reference table (min/max rows without K-centering, as the reference runs them) and the default recipe, each compiled to a HEF and evaluated for perplexity on
# TinyStories-valid (all 60 windows of 256), WikiText-2 (first 40 windows of 256 of
# wiki.test.joined.txt) and C4 (documents 0-199 of c4-validation-2k.jsonl joined with "\n\n", first
# 40 windows of 256). Calibration: the 128 pre-tokenized windows of
# ../shared/data/calibration/c4-calib-128x256-seed0.tokens.json (the quantize default).
#
#   npm run build && bash scripts/accuracy-table.sh [work-dir]     (about 5-10 min on 2 cores)
#
# Prints a markdown table on stdout; HARs, HEFs and JSON reports stay in work-dir (default: a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${EDGELLM_SHARED_DIR:-../shared}
MODEL="$SHARED/models/stories260K"
EDGELLM="node dist/src/cli/main.js"
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"

W_ONLY="--no-act-quant --no-kv-quant"
RECIPES=(
  "fp32|"
  "RTN W4 g64|--method rtn --group-size 64 $W_ONLY"
  "RTN W4 g64 + min/max A8 + KV8 (issue 2 recipe)|--method rtn --group-size 64 --act-observer minmax --no-k-centering"
  "GPTQ W4 g64|--group-size 64 $W_ONLY"
  "GPTQ W4 g64 + min/max A8 + KV8|--group-size 64 --act-observer minmax --no-k-centering"
  "GPTQ W4 g32|--group-size 32 $W_ONLY"
  "GPTQ W4 g32 + min/max A8 + KV8|--group-size 32 --act-observer minmax --no-k-centering"
  "QuaRot (R1+R2, seed 0) + GPTQ W4 g64|--rotate --rotation-seed 0 --group-size 64 $W_ONLY"
  "QuaRot (8 seeds on calibration loss) + GPTQ W4 g32 + MSE A8 + K-centered KV8|--rotation-seeds 8 --group-size 32"
  "GPTQ W4 g32 + MSE A8 + KV8, no K-centering|--no-k-centering"
  "**default**: GPTQ W4 g32 + MSE A8 + K-centered KV8|"
)

ppl() { # model, text args..., prints the ppl
  local m=$1; shift
  $EDGELLM -q eval "$m" --task ppl --seqlen 256 --threads 1 --json "$@" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).ppl.toFixed(4)))'
}

echo "| recipe | TinyStories | WikiText-2 | C4 |"
echo "| --- | --- | --- | --- |"
i=0
for r in "${RECIPES[@]}"; do
  name=${r%%|*}
  flags=${r#*|}
  if [ "$name" = "fp32" ]; then
    m="$MODEL"
  else
    # shellcheck disable=SC2086
    $EDGELLM -q quantize "$MODEL" -o "$OUT/r$i.har" $flags
    $EDGELLM -q compile "$OUT/r$i.har" -o "$OUT/r$i.hef"
    m="$OUT/r$i.hef"
  fi
  ts=$(ppl "$m" --text "$SHARED/data/tinystories/TinyStories-valid.txt")
  wk=$(ppl "$m" --text "$SHARED/data/wikitext-2-raw/wiki.test.joined.txt" --max-windows 40)
  c4=$(ppl "$m" --text "$SHARED/data/c4/c4-validation-2k.jsonl" --max-docs 200 --max-windows 40)
  echo "| $name | $ts | $wk | $c4 |"
  i=$((i + 1))
done
