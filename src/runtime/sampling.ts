/**
 * Next-token sampling: greedy (temperature 0), or temperature + top-k + top-p (nucleus, Holtzman
 * et al. 2019) + min-p (Nguyen et al. 2024, "Turning Up the Heat: Min-p Sampling") over a seeded
 * PRNG: top-k, then softmax at temperature, then top-p, then min-p (HF transformers' warper order).
 * Repetition penalties (llama.cpp's penalties sampler) apply to the logits before any of them, in
 * greedy decoding too.
 */
export interface SamplingOptions {
  /** 0 = greedy */
  temperature: number;
  /** keep the k most likely tokens (0 = all) */
  topK: number;
  /** keep the smallest set whose probability mass ≥ p (1 = all) */
  topP: number;
  /** drop tokens whose probability is below minP × the most likely token's (0 = off) */
  minP?: number;
}

/** Penalties on tokens already in the context (llama.cpp `llama_sampler_penalties`, OpenAI's definition). */
export interface PenaltyOptions {
  /** CTRL's repetition penalty (Keskar et al. 2019 §4.1): a seen token's logit l becomes l/r if l > 0, else l·r (1 = off) */
  repeatPenalty: number;
  /** how many of the latest context tokens the penalties look at (-1: all of them, 0: none) */
  repeatLastN: number;
  /** subtracted from a seen token's logit once per occurrence in the window (0 = off) */
  frequencyPenalty: number;
  /** subtracted once from the logit of every token present in the window (0 = off) */
  presencePenalty: number;
}

/** True when {@link applyPenalties} would change nothing. */
export function penaltiesOff(p: PenaltyOptions): boolean {
  return p.repeatLastN === 0 || (p.repeatPenalty === 1 && p.frequencyPenalty === 0 && p.presencePenalty === 0);
}

/**
 * Applies the repetition, frequency and presence penalties of the tokens in the last
 * `repeatLastN` entries of `history` to a copy of `logits`:
 * l ← (l > 0 ? l / repeatPenalty : l · repeatPenalty) − count·frequencyPenalty − presencePenalty
 * for each token with count > 0 in the window (llama.cpp's order: repeat, then frequency and presence).
 * @param logits float32 [vocab]; not modified
 * @param history token ids of the context so far (prompt and generated), oldest first
 * @returns `logits` itself when the penalties are off or the window is empty, else a new array
 */
export function applyPenalties(logits: Float32Array, history: readonly number[], p: PenaltyOptions): Float32Array {
  if (penaltiesOff(p) || history.length === 0) return logits;
  const from = p.repeatLastN < 0 ? 0 : Math.max(0, history.length - p.repeatLastN);
  const counts = new Map<number, number>();
  for (let i = from; i < history.length; i++) counts.set(history[i], (counts.get(history[i]) ?? 0) + 1);
  const out = Float32Array.from(logits);
  for (const [id, c] of counts) {
    if (id < 0 || id >= out.length) continue;
    let l = out[id];
    l = l > 0 ? l / p.repeatPenalty : l * p.repeatPenalty;
    out[id] = l - c * p.frequencyPenalty - p.presencePenalty;
  }
  return out;
}

/** Index of the largest logit (the first one on ties). logits: float32 [vocab]. */
export function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/**
 * Picks the next token from one row of logits: greedy ({@link argmax}) when `opts.temperature ≤ 0`,
 * otherwise top-k (the `topK` largest logits, ties kept in index order; `topK ≤ 0` keeps all), then
 * softmax at `temperature` in float64, then top-p (the smallest prefix of the descending-sorted
 * probabilities whose running mass is ≥ `topP`, renormalised; `topP ≥ 1` keeps all), then min-p
 * (tokens with probability < `minP` × the largest are dropped, renormalised), then one inverse-CDF draw.
 * @param logits float32 [vocab]: unnormalised scores of one position (e.g. the last row of
 *   `ExecutionBackend.forward`); must be non-empty and free of NaN
 * @param opts temperature (dimensionless, > 0 to sample), topK (tokens), topP (probability mass in (0, 1])
 * @param rand uniform draws in [0, 1), e.g. `mulberry32(seed)`; called exactly once per sampled token,
 *   never for greedy decoding, so a seed fixes the whole sequence
 * @returns a token id, an integer in [0, vocab)
 * @throws nothing: the inputs are not validated, so an empty `logits` (sampling returns undefined)
 *   or NaN entries (an arbitrary token) are the caller's to avoid
 */
export function sampleToken(logits: Float32Array, opts: SamplingOptions, rand: () => number): number {
  if (opts.temperature <= 0) return argmax(logits);
  let idx = opts.topK > 0 && opts.topK < logits.length ? topKIndices(logits, opts.topK) : Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
  const maxL = logits[idx[0]];
  let probs = idx.map((i) => Math.exp((logits[i] - maxL) / opts.temperature));
  let sum = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / sum);
  if (opts.topP < 1) {
    let acc = 0;
    let cut = probs.length;
    for (let i = 0; i < probs.length; i++) {
      acc += probs[i];
      if (acc >= opts.topP) {
        cut = i + 1;
        break;
      }
    }
    idx = idx.slice(0, cut);
    probs = probs.slice(0, cut);
    sum = probs.reduce((a, b) => a + b, 0);
    probs = probs.map((p) => p / sum);
  }
  const minP = opts.minP ?? 0;
  if (minP > 0) {
    const floor = minP * probs[0];
    const cut = probs.findIndex((q) => q < floor);
    if (cut > 0) {
      idx = idx.slice(0, cut);
      probs = probs.slice(0, cut);
      sum = probs.reduce((a, b) => a + b, 0);
      probs = probs.map((q) => q / sum);
    }
  }
  let r = rand();
  for (let i = 0; i < probs.length; i++) {
    r -= probs[i];
    if (r <= 0) return idx[i];
  }
  return idx[idx.length - 1];
}

/**
 * The `k` largest logits' indices in descending order, ties in ascending index order (what a stable
 * descending sort keeps), in O(vocab·k) worst case but O(vocab) for typical logits: a sorted buffer
 * of the best k seen so far, entered only by a logit above its smallest.
 */
function topKIndices(logits: Float32Array, k: number): number[] {
  const best: number[] = [];
  for (let i = 0; i < logits.length; i++) {
    const l = logits[i];
    if (best.length === k && !(l > logits[best[k - 1]])) continue;
    let j = best.length === k ? k - 1 : best.length;
    while (j > 0 && logits[best[j - 1]] < l) j--;
    best.splice(j, 0, i);
    if (best.length > k) best.pop();
  }
  return best;
}
