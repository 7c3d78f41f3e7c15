/**
 * Perplexity as the GPTQ paper (Frantar et al. 2022, §5, following its `llama_eval`) computes it:
 * the text is tokenized once, cut into non-overlapping windows of `seqLen` tokens (tail dropped),
 * each window is evaluated on its own from an empty KV cache, and
 * ppl = exp(mean NLL of every next-token prediction inside the windows) — seqLen − 1 predictions a
 * window.
 *
 * BOS: the caller decides. edgellm's CLI tokenizes the whole text once with the tokenizer's special
 * tokens, so a Llama tokenizer puts one BOS at the start of the text only (as the reference figures
 * in the issues assume); windows after the first start mid-text without BOS.
 */
import type { ExecutionBackend } from './backend.js';
import type { Progress } from '../pipeline-context.js';

export interface PerplexityResult {
  ppl: number;
  /** mean negative log-likelihood, nats/token */
  meanNll: number;
  /** next-token predictions scored */
  predictions: number;
  windows: number;
}

/** log-softmax of row `r` of logits [rows, vocab] at index `target`. */
export function logProb(logits: Float32Array, vocab: number, r: number, target: number): number {
  let max = -Infinity;
  const o = r * vocab;
  for (let i = 0; i < vocab; i++) if (logits[o + i] > max) max = logits[o + i];
  let sum = 0;
  for (let i = 0; i < vocab; i++) sum += Math.exp(logits[o + i] - max);
  return logits[o + target] - max - Math.log(sum);
}

/** Perplexity over pre-cut windows (each evaluated from an empty cache). */
export async function perplexity(backend: ExecutionBackend, windows: number[][], progress?: Progress): Promise<PerplexityResult> {
  let nll = 0;
  let count = 0;
  for (const w of windows) {
    const ctx = backend.newContext();
    const logits = await backend.forward(ctx, w);
    for (let t = 0; t + 1 < w.length; t++) nll -= logProb(logits, backend.vocabSize, t, w[t + 1]);
    count += w.length - 1;
    progress?.tick();
  }
  progress?.done();
  const meanNll = nll / count;
  return { ppl: Math.exp(meanNll), meanNll, predictions: count, windows: windows.length };
}
