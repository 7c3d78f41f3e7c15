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
 *
 * Also here: what every evaluation shares — reading an evaluation text (JSONL documents capped)
 * and a tokens/s status for progress bars (the report's sha256s: src/core/digest.ts).
 */
import type { ExecutionBackend } from '../runtime/backend.js';
import type { Progress } from '../core/context.js';
import { UsageError } from '../core/errors.js';
import { isJsonlFile, readTextCorpus } from '../core/text.js';

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
  const rate = new TokenRate(progress);
  for (const w of windows) {
    const ctx = backend.newContext();
    const logits = await backend.forward(ctx, w);
    for (let t = 0; t + 1 < w.length; t++) nll -= logProb(logits, backend.vocabSize, t, w[t + 1]);
    count += w.length - 1;
    rate.add(w.length);
    progress?.tick();
  }
  progress?.done();
  const meanNll = nll / count;
  return { ppl: Math.exp(meanNll), meanNll, predictions: count, windows: windows.length };
}

/**
 * Shows "N tokens/s" as a progress bar's status text (the bar itself shows the ETA), updated at
 * most every 250 ms.
 */
export class TokenRate {
  private readonly t0 = performance.now();
  private last = 0;
  tokens = 0;
  constructor(private readonly progress?: Progress) {}
  /** `n` more tokens went through the model */
  add(n: number): void {
    this.tokens += n;
    const now = performance.now();
    if (this.progress?.status && now - this.last > 250) {
      this.last = now;
      this.progress.status(`${Math.round(this.tokens / ((now - this.t0) / 1000))} tokens/s`);
    }
  }
  /** tokens/s since construction */
  get perSecond(): number {
    return this.tokens / ((performance.now() - this.t0) / 1000);
  }
}

/**
 * An evaluation text as one string: {@link readTextCorpus} (plain text as is; JSONL `text` fields
 * joined with "\n\n"), with `maxDocs` keeping only the first documents of a JSONL file (e.g. C4
 * documents 0-199: `maxDocs: 200`).
 * @throws UsageError for a missing file or `maxDocs` on a non-JSONL file; FormatError naming the
 *   line of a bad JSONL record
 */
export function loadEvalText(file: string, opts: { maxDocs?: number } = {}): string {
  if (opts.maxDocs !== undefined) {
    if (!Number.isInteger(opts.maxDocs) || opts.maxDocs < 1) throw new UsageError(`--max-docs ${opts.maxDocs}: expected a positive integer`);
    if (!isJsonlFile(file)) throw new UsageError(`--max-docs applies to .jsonl files; ${file} is not one`);
  }
  return readTextCorpus(file, { maxDocs: opts.maxDocs });
}

