/**
 * Next-token sampling: greedy (temperature 0), or temperature + top-k + top-p (nucleus, Holtzman
 * et al. 2019) over a seeded PRNG, in the order llama.cpp and HF apply them: top-k, then
 * softmax at temperature, then top-p.
 */
export interface SamplingOptions {
  /** 0 = greedy */
  temperature: number;
  /** keep the k most likely tokens (0 = all) */
  topK: number;
  /** keep the smallest set whose probability mass ≥ p (1 = all) */
  topP: number;
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
 * probabilities whose running mass is ≥ `topP`, renormalised; `topP ≥ 1` keeps all), then one
 * inverse-CDF draw.
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
  let idx = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
  if (opts.topK > 0) idx = idx.slice(0, opts.topK);
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
  let r = rand();
  for (let i = 0; i < probs.length; i++) {
    r -= probs[i];
    if (r <= 0) return idx[i];
  }
  return idx[idx.length - 1];
}
