#!/usr/bin/env bash
# Speed and size at a realistic scale: a random-weight checkpoint with the exact Qwen2-1.5B config
# (bf16, sharded safetensors, from fixtures/make-fixture.ts), quantized W4 RTN + static A8 + KV8,
# compiled to a HEF and benchmarked with `edgellm bench` (TTFT for 96 prompt tokens, decode tokens/s
# over 128 tokens, peak RSS, file size). Random weights: the speed and memory figures are those of
# the real model; the accuracy is meaningless.
#
#   bash scripts/bench-qwen2-1.5b.sh [work-dir]      (default /tmp/edgellm-qwen2-1.5b; ~3.1 GB bf16 + HAR + HEF)
#
# Steps already done (checkpoint, HAR, HEF present) are skipped; delete the work dir to redo them.
# Each step's wall time and peak RSS come from GNU time (-f) when it is installed.
# Env: RUNS (bench repetitions, default 5), CALIB_SAMPLES (default 4), CALIB_SEQLEN (default 128),
# QUANT_FLAGS (flags for `edgellm quantize`; default `--method rtn --no-emulation-weights`: RTN gives
# the same executable shape and speed as GPTQ in a fraction of the time, and the fp32 emulation
# copies would add ~6 GB to the HAR), THREADS (bench --threads; default all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/edgellm-qwen2-1.5b}
SHARED=${EDGELLM_SHARED_DIR:-../shared}
EDGELLM="node dist/src/cli/main.js"
RUNS=${RUNS:-5}
QUANT_FLAGS=${QUANT_FLAGS:---method rtn --no-emulation-weights}
mkdir -p "$WORK"
TIME=()
if [ -x /usr/bin/time ]; then TIME=(/usr/bin/time -f '  [%e s wall, peak RSS %M KiB]'); fi

cat > "$WORK/config.json" <<'JSON'
{
  "architectures": ["Qwen2ForCausalLM"],
  "model_type": "qwen2",
  "hidden_size": 1536,
  "intermediate_size": 8960,
  "num_hidden_layers": 28,
  "num_attention_heads": 12,
  "num_key_value_heads": 2,
  "vocab_size": 151936,
  "max_position_embeddings": 32768,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "hidden_act": "silu",
  "tie_word_embeddings": true,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "use_sliding_window": false,
  "torch_dtype": "bfloat16"
}
JSON

if [ ! -f "$WORK/ckpt/model.safetensors.index.json" ]; then
  echo "== generate: random-weight Qwen2-1.5B checkpoint (bf16, shards <= 2 GB)"
  "${TIME[@]}" node dist/fixtures/make-fixture.js "$WORK/config.json" "$WORK/ckpt" --dtype BF16 --max-shard-bytes 2000000000
fi
if [ ! -f "$WORK/model.har" ]; then
  echo "== quantize $QUANT_FLAGS (calibration: ${CALIB_SAMPLES:-4} windows x ${CALIB_SEQLEN:-128} tokens of TinyStories text)"
  "${TIME[@]}" $EDGELLM quantize "$WORK/ckpt" -o "$WORK/model.har" \
    --calib "$SHARED/data/tinystories/TinyStories-valid.txt" --calib-samples "${CALIB_SAMPLES:-4}" --seqlen "${CALIB_SEQLEN:-128}" $QUANT_FLAGS
fi
if [ ! -f "$WORK/model.hef" ]; then
  echo "== compile (prefill chunks of 128 tokens, KV cache of 2048 tokens)"
  "${TIME[@]}" $EDGELLM compile "$WORK/model.har" -o "$WORK/model.hef" --prefill-len 128 --max-context 2048
fi
echo "== bench: TTFT for 96 prompt tokens, decode over 128 tokens, medians over $RUNS runs"
"${TIME[@]}" $EDGELLM bench "$WORK/model.hef" --runs "$RUNS" ${THREADS:+--threads "$THREADS"} --json "$WORK/bench.json"
ls -l "$WORK"
