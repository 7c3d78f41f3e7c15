#!/usr/bin/env bash
# The main job on the real model: quantize -> compile -> inspect -> run -> eval, for stories260K.
# Reads ../shared (models/stories260K, data/); writes out/.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${EDGELLM_SHARED_DIR:-../shared}
MODEL="$SHARED/models/stories260K"
EDGELLM="node dist/src/cli/main.js"
mkdir -p out

echo "== quantize: the default recipe, GPTQ W4 g32 + K-centered KV8 + MSE-clipped static A8/KV8 (128 C4 calibration windows of 256 tokens)"
$EDGELLM quantize "$MODEL" -o out/stories260K.har --calib "$SHARED/data/calibration/c4-calib-128x256-seed0.tokens.json"
echo "== compile"
$EDGELLM compile out/stories260K.har -o out/stories260K.hef --prefill-len 128
echo "== inspect"
$EDGELLM inspect out/stories260K.hef
echo "== run: fp32 reference (model directory), greedy"
$EDGELLM run "$MODEL" --prompt "" --max-tokens 60 --temperature 0
echo "== run: quantized HEF, greedy"
$EDGELLM run out/stories260K.hef --prompt "" --max-tokens 60 --temperature 0
echo "== run: quantized HEF, prompt, sampled"
$EDGELLM run out/stories260K.hef --prompt "Once upon a time, a little dog" --max-tokens 60 --temperature 0.8 --seed 1
echo "== eval: perplexity, TinyStories, windows of 256"
$EDGELLM eval "$MODEL" --text "$SHARED/data/tinystories/TinyStories-valid.txt" --seqlen 256
$EDGELLM eval out/stories260K.hef --text "$SHARED/data/tinystories/TinyStories-valid.txt" --seqlen 256
