/**
 * HellaSwag (Zellers et al. 2019, "HellaSwag: Can a Machine Really Finish Your Sentence?"), scored
 * as lm-evaluation-harness scores it: for each of the 4 endings, the log-probability of the ending's
 * tokens given the context, summed; acc picks the ending with the highest sum, acc_norm the highest
 * sum divided by the ending's length in UTF-8 bytes (lm-eval's `acc_norm` divides by the length of
 * the choice string, which is the same for ASCII text).
 *
 * Data: llama.cpp's 6-line text format (`hellaswag_val_full.txt`, as its `llama-perplexity
 * --hellaswag` reads): per task the context line ("activity_label: context", already preprocessed),
 * the gold ending's index 0-3, then the 4 endings.
 *
 * Tokenization (as llama.cpp's hellaswag_score): tokenize the context and, per ending, the full text
 * context + " " + ending (both with the tokenizer's special tokens, i.e. BOS). The scored tokens of
 * an ending are those of the full sequence after its common prefix with the context's tokens, so a
 * tokenizer that merges across the boundary never drops part of the ending. Each scored token t_j is
 * predicted by the logits at position j − 1.
 *
 * Batching: the endings share the context prefix. It is prefilled once, the KV context forked
 * (ExecutionBackend.fork) and each ending forwarded on its fork; when the whole of context + ending
 * fits in fewer prefill calls than prefix + remainder (short tasks on a small model), each ending is
 * instead run whole from an empty cache. Both give the same log-probabilities up to float rounding.
 */
import type { ExecutionBackend } from '../runtime/backend.js';
import type { Progress } from '../core/context.js';
import { EdgeLLMError, FormatError, UsageError } from '../core/errors.js';
import { logProb, TokenRate } from './ppl.js';
import { readTextFile } from '../core/text.js';

export interface HellaSwagTask {
  /** "activity_label: context" */
  context: string;
  /** index of the correct ending, 0-3 */
  gold: number;
  /** the 4 candidate endings */
  endings: string[];
}

/** One task as token ids. */
export interface TokenizedTask {
  gold: number;
  /** full sequences context + " " + ending, token ids (BOS included) */
  sequences: number[][];
  /** per ending, index of the first scored token in `sequences[s]` (≥ 1) */
  scoreFrom: number[];
  /** per ending, UTF-8 byte length of the ending text (acc_norm's divisor) */
  bytes: number[];
}

export interface HellaSwagResult {
  tasks: number;
  /** fraction of tasks where the highest summed log-probability is the gold ending */
  acc: number;
  /** same with the sum divided by the ending's byte length */
  accNorm: number;
  /** binomial standard errors sqrt(p(1 − p)/n) of acc and accNorm */
  accStderr: number;
  accNormStderr: number;
  /** ending tokens scored */
  scoredTokens: number;
  /** tokens sent through the model */
  forwardedTokens: number;
}

export interface TaskScore {
  /** per ending: summed log-probability of its tokens (nats) */
  logProbs: number[];
  /** per ending: tokens scored */
  tokens: number[];
  /** tokens forwarded through the model for this task */
  forwarded: number;
}

/**
 * Parses llama.cpp's 6-line HellaSwag format.
 * @param label the file name, for errors
 * @param limit keep the first `limit` tasks
 * @throws FormatError naming the line when the line count is not a multiple of 6 or a gold index is
 *   not 0-3
 */
export function parseHellaSwag(text: string, label: string, limit?: number): HellaSwagTask[] {
  const lines = text.split('\n');
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  if (lines.length % 6 !== 0)
    throw new FormatError(label, `${lines.length} lines is not a multiple of 6 (context, gold index, 4 endings per task)`);
  const n = Math.min(lines.length / 6, limit ?? Infinity);
  const tasks: HellaSwagTask[] = [];
  for (let k = 0; k < n; k++) {
    const i = 6 * k;
    const gold = Number(lines[i + 1]);
    if (!/^[0-3]$/.test(lines[i + 1].trim()))
      throw new FormatError(label, `line ${i + 2}: gold ending index '${lines[i + 1]}' is not 0-3 (task ${k})`);
    tasks.push({ context: lines[i], gold, endings: lines.slice(i + 2, i + 6) });
  }
  return tasks;
}

/**
 * Reads a HellaSwag file ({@link parseHellaSwag}).
 * @throws UsageError when it does not exist or `limit` is not a positive integer; FormatError
 */
export function loadHellaSwag(file: string, limit?: number): HellaSwagTask[] {
  if (limit !== undefined && !(Number.isInteger(limit) && limit > 0)) throw new UsageError(`--limit ${limit}: expected a positive integer`);
  return parseHellaSwag(readTextFile(file), file, limit);
}

const commonPrefix = (a: number[], b: number[]): number => {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
};

/**
 * Tokenizes a task (see the file header).
 * @param encode text → ids with the tokenizer's special tokens (BOS)
 */
export async function tokenizeTask(task: HellaSwagTask, encode: (text: string) => Promise<number[]>): Promise<TokenizedTask> {
  const ctx = await encode(task.context);
  const sequences = await Promise.all(task.endings.map((e) => encode(`${task.context} ${e}`)));
  return {
    gold: task.gold,
    sequences,
    // position 0 has no prediction: with no BOS the first token cannot be scored
    scoreFrom: sequences.map((s) => Math.max(1, commonPrefix(ctx, s))),
    bytes: task.endings.map((e) => Buffer.byteLength(e, 'utf8')),
  };
}

/** Prefill calls a forward of `n` tokens costs (one token runs the cheaper decode graph). */
const calls = (n: number, prefillLen: number): number => (n <= 1 ? n * 0.25 : Math.ceil(n / prefillLen));

/**
 * Scores the 4 endings of one task.
 * @throws EdgeLLMError when a sequence exceeds the backend's context
 */
export async function scoreTask(backend: ExecutionBackend, t: TokenizedTask): Promise<TaskScore> {
  const V = backend.vocabSize;
  for (const s of t.sequences)
    if (s.length > backend.maxContext)
      throw new EdgeLLMError(`hellaswag: a task of ${s.length} tokens exceeds the model's context of ${backend.maxContext} tokens`);
  // shared prefix: positions [0, m) are identical in every sequence and no scored token lies in it
  // (scored tokens start at ≥ m; the first is predicted from the prefix's last row, m − 1)
  const m = Math.min(...t.scoreFrom, ...t.sequences.slice(1).map((s) => commonPrefix(t.sequences[0], s)));
  const P = backend.prefillLen;
  const forkCost = calls(m, P) + t.sequences.reduce((c, s) => c + calls(s.length - m, P), 0);
  const wholeCost = t.sequences.reduce((c, s) => c + calls(s.length, P), 0);
  const logProbs: number[] = [];
  const tokens: number[] = [];
  let forwarded = 0;
  const score = (seq: number[], from: number, row: (pos: number) => [Float32Array, number]) => {
    let lp = 0;
    for (let j = from; j < seq.length; j++) {
      const [logits, r] = row(j - 1);
      lp += logProb(logits, V, r, seq[j]);
    }
    logProbs.push(lp);
    tokens.push(seq.length - from);
  };
  if (m > 0 && forkCost < wholeCost) {
    const base = backend.newContext();
    const last = await backend.forward(base, t.sequences[0].slice(0, m), { lastOnly: true }); // row m − 1
    forwarded += m;
    for (let s = 0; s < 4; s++) {
      const seq = t.sequences[s];
      const rest = seq.slice(m);
      const logits = rest.length > 0 ? await backend.forward(backend.fork(base), rest) : new Float32Array(0); // rows m..len−1
      forwarded += rest.length;
      score(seq, t.scoreFrom[s], (pos) => (pos === m - 1 ? [last, 0] : [logits, pos - m]));
    }
  } else {
    for (let s = 0; s < 4; s++) {
      const seq = t.sequences[s];
      const logits = await backend.forward(backend.newContext(), seq);
      forwarded += seq.length;
      score(seq, t.scoreFrom[s], (pos) => [logits, pos]);
    }
  }
  return { logProbs, tokens, forwarded };
}

/** Index of the largest value (the first on ties, as numpy's argmax that lm-eval uses). */
const argmax = (xs: number[]): number => xs.reduce((best, x, i) => (x > xs[best] ? i : best), 0);

/**
 * acc and acc_norm over tasks.
 * @param progress ticks once per task; status shows tokens/s
 */
export async function hellaswag(backend: ExecutionBackend, tasks: TokenizedTask[], progress?: Progress): Promise<HellaSwagResult> {
  let acc = 0;
  let accNorm = 0;
  let scoredTokens = 0;
  const rate = new TokenRate(progress);
  for (const t of tasks) {
    const r = await scoreTask(backend, t);
    if (argmax(r.logProbs) === t.gold) acc++;
    if (argmax(r.logProbs.map((lp, s) => lp / Math.max(1, t.bytes[s]))) === t.gold) accNorm++;
    scoredTokens += r.tokens.reduce((a, b) => a + b, 0);
    rate.add(r.forwarded);
    progress?.tick();
  }
  progress?.done();
  const n = tasks.length;
  const se = (p: number) => Math.sqrt((p * (1 - p)) / n);
  return {
    tasks: n,
    acc: acc / n,
    accNorm: accNorm / n,
    accStderr: se(acc / n),
    accNormStderr: se(accNorm / n),
    scoredTokens,
    forwardedTokens: rate.tokens,
  };
}
