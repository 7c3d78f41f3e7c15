/**
 * KL-divergence of a model's next-token distributions from a reference model's, over the same
 * perplexity windows, as llama.cpp's `llama-perplexity --kl-divergence` reports it (mean KLD,
 * top-1 agreement, perplexity of both and their ratio), except that every prediction of a window
 * counts (the windows of {@link perplexity}), not only its second half.
 *
 * Per prediction t (P = reference, Q = evaluated model, both softmax over the vocabulary):
 *   KL(P‖Q) = Σ_i P_i (log P_i − log Q_i)   [nats]
 * computed in float64 from float32 logits. Both backends run window by window, so only two
 * [seqLen, vocab] logit blocks are held at once, whatever the vocabulary.
 */
import type { ExecutionBackend } from '../runtime/backend.js';
import type { Progress } from '../core/context.js';
import { ShapeMismatchError, UsageError } from '../core/errors.js';
import { TokenRate } from './ppl.js';

export interface KldResult {
  /** mean KL(P_ref ‖ P_eval) over predictions, nats */
  meanKld: number;
  /** standard error of the mean, nats */
  kldStderr: number;
  medianKld: number;
  /** 99th percentile, nats */
  p99Kld: number;
  maxKld: number;
  /** fraction of predictions where both models' most likely token is the same */
  top1Agreement: number;
  /** perplexity of the evaluated model and of the reference on the same predictions */
  ppl: number;
  referencePpl: number;
  /** ppl / referencePpl */
  pplRatio: number;
  /**
   * ln(ppl / referencePpl) and its standard error, paired over windows: the spread of the
   * per-window differences of mean NLL (model − reference) / √windows. Windows, not tokens, are the
   * independent units (tokens of one window share their context), so this is wider — and more
   * honest — than a per-token error. llama.cpp prints the same figure as "Mean ln(PPL(Q)/PPL(base))".
   */
  lnPplRatio: number;
  lnPplRatioStderr: number;
  /** per window: mean NLL of the evaluated model and of the reference over its predictions, nats */
  windowNll: number[];
  referenceWindowNll: number[];
  predictions: number;
  windows: number;
}

/** One logit row's log-sum-exp and argmax ({@link rowStats}). */
export interface RowStats {
  /** log Σ exp(x) */
  lse: number;
  argmax: number;
}

/** Stats of the logit row x[o .. o+V). */
export function rowStats(x: Float32Array, o: number, V: number): RowStats {
  let max = -Infinity;
  let argmax = 0;
  for (let i = 0; i < V; i++)
    if (x[o + i] > max) {
      max = x[o + i];
      argmax = i;
    }
  let sum = 0;
  for (let i = 0; i < V; i++) sum += Math.exp(x[o + i] - max);
  return { lse: max + Math.log(sum), argmax };
}

/**
 * KL(P‖Q) in nats of one prediction: the reference's logit row p[o .. o+V) against the model's
 * q[o .. o+V), both turned into log-probabilities with their row stats; float64 sums.
 */
export function rowKl(p: Float32Array, sp: RowStats, q: Float32Array, sq: RowStats, o: number, V: number): number {
  // KL = Σ P_i ((p_i − lseP) − (q_i − lseQ))
  let kl = 0;
  for (let i = 0; i < V; i++) {
    const lp = p[o + i] - sp.lse;
    kl += Math.exp(lp) * (lp - (q[o + i] - sq.lse));
  }
  return kl;
}

/**
 * KL-divergence of `model` from `reference` over `windows` (each evaluated from an empty cache).
 * @param windows token-id windows, e.g. `slidingWindows(ids, seqLen)`
 * @param progress ticks once per window
 * @throws ShapeMismatchError when the two models' vocabulary sizes differ
 */
export async function klDivergence(
  model: ExecutionBackend,
  reference: ExecutionBackend,
  windows: number[][],
  progress?: Progress,
): Promise<KldResult> {
  const V = model.vocabSize;
  if (reference.vocabSize !== V)
    throw new ShapeMismatchError(`kld: the model's vocabulary (${V}) and the reference's (${reference.vocabSize}) differ; the distributions cannot be compared`);
  const total = windows.reduce((n, w) => n + Math.max(0, w.length - 1), 0);
  const klds = new Float64Array(total);
  let k = 0;
  let agree = 0;
  let nll = 0;
  let nllRef = 0;
  const windowNll: number[] = [];
  const referenceWindowNll: number[] = [];
  const rate = new TokenRate(progress);
  for (const w of windows) {
    const nll0 = nll;
    const nllRef0 = nllRef;
    const q = await model.forward(model.newContext(), w); // [T, V]
    const p = await reference.forward(reference.newContext(), w); // [T, V]
    for (let t = 0; t + 1 < w.length; t++) {
      const o = t * V;
      const sp = rowStats(p, o, V);
      const sq = rowStats(q, o, V);
      klds[k++] = rowKl(p, sp, q, sq, o, V);
      if (sp.argmax === sq.argmax) agree++;
      nll += sq.lse - q[o + w[t + 1]];
      nllRef += sp.lse - p[o + w[t + 1]];
    }
    const preds = Math.max(1, w.length - 1);
    windowNll.push((nll - nll0) / preds);
    referenceWindowNll.push((nllRef - nllRef0) / preds);
    rate.add(2 * w.length);
    progress?.tick();
  }
  progress?.done();
  const n = k;
  if (n === 0) throw new UsageError('kld: the windows hold no prediction (each needs 2 or more tokens)');
  let mean = 0;
  for (const x of klds) mean += x;
  mean /= n;
  let v = 0;
  for (const x of klds) v += (x - mean) ** 2;
  const sorted = klds.slice().sort();
  const at = (q: number) => sorted[Math.min(n - 1, Math.max(0, Math.round(q * (n - 1))))];
  const ppl = Math.exp(nll / n);
  const referencePpl = Math.exp(nllRef / n);
  const d = windowNll.map((x, i) => x - referenceWindowNll[i]);
  const dMean = d.reduce((a, b) => a + b, 0) / d.length;
  const dVar = d.length > 1 ? d.reduce((a, x) => a + (x - dMean) ** 2, 0) / (d.length - 1) : 0;
  return {
    meanKld: mean,
    kldStderr: n > 1 ? Math.sqrt(v / (n - 1) / n) : 0,
    medianKld: at(0.5),
    p99Kld: at(0.99),
    maxKld: sorted[n - 1],
    top1Agreement: agree / n,
    ppl,
    referencePpl,
    pplRatio: ppl / referencePpl,
    lnPplRatio: Math.log(ppl / referencePpl),
    lnPplRatioStderr: Math.sqrt(dVar / d.length),
    windowNll,
    referenceWindowNll,
    predictions: n,
    windows: windows.length,
  };
}
