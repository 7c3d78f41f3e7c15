#!/usr/bin/env bash
# The CI accuracy gate (`npm run gate`, run by .ci/run): quantize stories260K with the default recipe
# of `edgellm quantize`, compile it, and check perplexity, KL-divergence from the fp32 model and
# HellaSwag against the committed baseline ci/baselines/stories260K.json. Exits 1, one line per
# violated threshold, when a change costs accuracy.
#
#   npm run gate                       check (bash scripts/accuracy-gate.sh)
#   npm run baseline                   regenerate the baseline after an intended change of the
#                                      default recipe (bash scripts/accuracy-gate.sh --write), then
#                                      commit ci/baselines/stories260K.json
#
# Size (about 10-20 s on 2 cores): TinyStories-valid (60 windows of 256) for ppl and kld, the first
# 400 HellaSwag tasks. Thresholds: ppl +1%, mean KLD +0.01 nats, HellaSwag acc_norm -2 points (400
# tasks give a standard error of ~2.2 points, so a 1-point gate would be decided by a few tasks).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${EDGELLM_SHARED_DIR:-../shared}
MODEL="$SHARED/models/stories260K"
BASELINE=ci/baselines/stories260K.json
EDGELLM="node dist/src/cli/main.js"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

$EDGELLM -q quantize "$MODEL" -o "$OUT/stories260K.har"
$EDGELLM -q compile "$OUT/stories260K.har" -o "$OUT/stories260K.hef"
EVAL=(eval "$OUT/stories260K.hef" --task ppl,kld,hellaswag
  --text "$SHARED/data/tinystories/TinyStories-valid.txt" --seqlen 256 --reference "$MODEL"
  --hellaswag "$SHARED/data/hellaswag/hellaswag_val_full.txt" --limit 400 --threads 1)
if [ "${1:-}" = "--write" ]; then
  $EDGELLM -q "${EVAL[@]}" --write-baseline "$BASELINE"
  echo "wrote $BASELINE: commit it"
else
  $EDGELLM -q "${EVAL[@]}" --baseline "$BASELINE" --max-ppl-increase 1% --max-kld 0.01 --max-hellaswag-drop 2
fi
