/**
 * Token windows from one tokenized text: seeded random windows for calibration (as GPTQ's
 * `get_c4`/`get_wikitext2` draw them) and non-overlapping windows for perplexity (as the GPTQ and
 * QuaRot papers evaluate: tail dropped).
 */
import { UsageError } from '../src/core/errors.js';
import { mulberry32 } from '../src/core/rng.js';

function checkPositiveInt(what: string, v: number): void {
  if (!Number.isInteger(v) || v <= 0) throw new UsageError(`${what} must be a positive integer, got ${v}`);
}

/**
 * `n` windows of `seqLen` consecutive tokens, each starting at an offset drawn uniformly from
 * [0, tokens.length − seqLen] with {@link mulberry32}(seed). Deterministic for a seed; windows may
 * overlap.
 * @param tokens the tokenized text (token ids)
 * @returns n windows, each a new number[] of length seqLen
 * @throws UsageError when n or seqLen is not a positive integer, or the text is shorter than one window
 */
export function sampleWindows(tokens: number[], n: number, seqLen: number, seed: number): number[][] {
  checkPositiveInt('number of windows', n);
  checkPositiveInt('window length', seqLen);
  if (tokens.length < seqLen)
    throw new UsageError(`the text has ${tokens.length} tokens, shorter than one window of ${seqLen}`);
  const rng = mulberry32(seed);
  const starts = tokens.length - seqLen + 1; // number of valid start offsets
  const windows: number[][] = [];
  for (let i = 0; i < n; i++) {
    const start = Math.floor(rng() * starts);
    windows.push(tokens.slice(start, start + seqLen));
  }
  return windows;
}

/**
 * Non-overlapping windows tokens[k·seqLen, (k+1)·seqLen) for k = 0, 1, …; the tail shorter than
 * seqLen is dropped (the GPTQ paper's perplexity windows).
 * @param maxWindows keep at most this many (the first ones)
 * @returns floor(tokens.length / seqLen) windows (or maxWindows if fewer), each of length seqLen
 * @throws UsageError when seqLen or maxWindows is not a positive integer, or the text is shorter
 *   than one window
 */
export function slidingWindows(tokens: number[], seqLen: number, maxWindows?: number): number[][] {
  checkPositiveInt('window length', seqLen);
  if (maxWindows !== undefined) checkPositiveInt('maximum number of windows', maxWindows);
  const count = Math.min(Math.floor(tokens.length / seqLen), maxWindows ?? Infinity);
  if (count === 0) throw new UsageError(`the text has ${tokens.length} tokens, shorter than one window of ${seqLen}`);
  const windows: number[][] = [];
  for (let k = 0; k < count; k++) windows.push(tokens.slice(k * seqLen, (k + 1) * seqLen));
  return windows;
}
