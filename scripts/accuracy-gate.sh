#!/usr/bin/env bash
# The CI accuracy gate (`npm run gate`, run by .ci/run): quantize stories260K with the default recipe
# of `edgellm quantize`, compile it, and check perplexity, KL-divergence from the fp32 model and
# HellaSwag against the committed baseline ci/baselines/stories260K.json; then the same for the
# recipe `quantize --auto-precision --budget +10%` chooses (sensitivity analysis + choice + the
# quantization of the chosen recipe) against ci/baselines/stories260K-auto10.json. Exits 1, one line
# per violated threshold, when a change costs accuracy.
#
#   npm run gate                       check (bash scripts/accuracy-gate.sh)
#   npm run baseline                   regenerate both baselines after an intended change of the
#                                      recipes (bash scripts/accuracy-gate.sh --write [NAME]: NAME
#                                      stories260K or stories260K-auto10 writes only that one and
#                                      checks the other), then commit ci/baselines/stories260K*.json
#
# Size (about 1.5 min on 2 cores, most of it the auto-precision analysis): TinyStories-valid (60
# windows of 256) for ppl and kld, the first 400 HellaSwag tasks. Thresholds: ppl +1%, mean KLD +0.01
# nats, HellaSwag acc_norm -2 points (400 tasks give a standard error of ~2.2 points, so a 1-point
# gate would be decided by a few tasks).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${EDGELLM_SHARED_DIR:-../shared}
MODEL="$SHARED/models/stories260K"
BASELINE=ci/baselines/stories260K.json
AUTO_BASELINE=ci/baselines/stories260K-auto10.json
EDGELLM="node dist/src/cli/main.js"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

gate() { # name, baseline, quantize flags...
  local name=$1 baseline=$2
  shift 2
  $EDGELLM -q quantize "$MODEL" -o "$OUT/$name.har" "$@"
  $EDGELLM -q compile "$OUT/$name.har" -o "$OUT/$name.hef"
  local eval=(eval "$OUT/$name.hef" --task ppl,kld,hellaswag
    --text "$SHARED/data/tinystories/TinyStories-valid.txt" --seqlen 256 --reference "$MODEL"
    --hellaswag "$SHARED/data/hellaswag/hellaswag_val_full.txt" --limit 400 --threads 1)
  if [ "$WRITE" = 1 ] && { [ -z "$ONLY" ] || [ "$ONLY" = "$name" ]; }; then
    $EDGELLM -q "${eval[@]}" --write-baseline "$baseline"
    echo "wrote $baseline: commit it"
  else
    echo "gate: $name against $baseline"
    $EDGELLM -q "${eval[@]}" --baseline "$baseline" --max-ppl-increase 1% --max-kld 0.01 --max-hellaswag-drop 2
  fi
}

WRITE=0
ONLY=${2:-}
[ "${1:-}" = "--write" ] && WRITE=1
gate stories260K "$BASELINE"
gate stories260K-auto10 "$AUTO_BASELINE" --auto-precision --budget +10%
