#!/usr/bin/env bash
# The Pareto table of docs/quantization.md ("Per-module precision"): stories260K quantized with the
# default recipe, analyzed once (edgellm analyze: KLD gain of every promotion alone), then quantized
# with the promotions chosen at device-memory budgets of +0%, +5%, +10%, +20%, +50% (analyze --reuse
# --budget: the recipe `quantize --auto-precision` would write) and with every linear at W8; each
# compiled to a HEF and evaluated for perplexity on TinyStories-valid (all 60 windows of 256),
# WikiText-2 (first 40 windows of 256) and C4 (documents 0-199, first 40 windows of 256), as
# scripts/accuracy-table.sh does. Device memory: `inspect`'s estimate of the HEF (weights section +
# KV cache at 512 tokens).
#
#   npm run build && bash scripts/precision-pareto.sh [work-dir]     (about 5 min on 2 cores)
#
# Prints a markdown table on stdout; HARs, recipes, HEFs stay in work-dir (default: a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${EDGELLM_SHARED_DIR:-../shared}
MODEL="$SHARED/models/stories260K"
EDGELLM="node dist/src/cli/main.js"
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"

json() { # field path (dots) of the JSON on stdin
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{let v=JSON.parse(s);for(const k of process.argv[1].split("."))v=v[k];console.log(v)})' "$1"
}
ppl() { # model, text args..., prints the ppl
  local m=$1; shift
  $EDGELLM -q eval "$m" --task ppl --seqlen 256 --threads 1 --json "$@" | json ppl | xargs printf '%.4f'
}

$EDGELLM -q quantize "$MODEL" -o "$OUT/default.har"
$EDGELLM -q analyze "$OUT/default.har" --json > "$OUT/sensitivity.json"
printf 'defaults: {weight_bits: 8}\n' > "$OUT/all-w8.yaml"

ROWS=("default (+0%, no promotion)|")
for b in +0% +5% +10% +20% +50%; do
  $EDGELLM -q analyze "$OUT/default.har" --reuse --budget "$b" --write-recipe "$OUT/budget$b.yaml"
  ROWS+=("auto, budget $b|$OUT/budget$b.yaml")
done
ROWS+=("all linears W8|$OUT/all-w8.yaml")

base=""
echo "| recipe | promotions | device memory | vs default | TinyStories | WikiText-2 | C4 |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
i=0
for r in "${ROWS[@]}"; do
  name=${r%%|*}
  recipe=${r#*|}
  if [ -z "$recipe" ]; then
    har="$OUT/default.har"; n=0
  else
    har="$OUT/r$i.har"
    $EDGELLM -q quantize "$MODEL" --recipe "$recipe" -o "$har"
    n=$(grep -c '^  [^ ].*: {' "$recipe" || true)
    if [ "$recipe" = "$OUT/all-w8.yaml" ]; then n="every linear"; fi
  fi
  $EDGELLM -q compile "$har" -o "$OUT/r$i.hef"
  mem=$($EDGELLM inspect "$OUT/r$i.hef" --json | json memory.totalBytes)
  [ -z "$base" ] && base=$mem
  ts=$(ppl "$OUT/r$i.hef" --text "$SHARED/data/tinystories/TinyStories-valid.txt")
  wk=$(ppl "$OUT/r$i.hef" --text "$SHARED/data/wikitext-2-raw/wiki.test.joined.txt" --max-windows 40)
  c4=$(ppl "$OUT/r$i.hef" --text "$SHARED/data/c4/c4-validation-2k.jsonl" --max-docs 200 --max-windows 40)
  rel=$(node -e "console.log(((process.argv[1]/process.argv[2]-1)*100).toFixed(1))" "$mem" "$base")
  kib=$(node -e "console.log((process.argv[1]/1024).toFixed(1))" "$mem")
  echo "| $name | $n | $kib KiB | +$rel% | $ts | $wk | $c4 |"
  i=$((i + 1))
done
