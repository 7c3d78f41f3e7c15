/**
 * Runtime benchmark of an executable on a backend, with the Hailo-10H whitepaper's measures: time
 * to first token (TTFT) for a 96-token prompt, and decode throughput over 128 generated tokens.
 * Greedy decoding (argmax, included in the timings as a runner would do it) from a fixed
 * pseudo-random prompt: BOS, then ids drawn with mulberry32(seed), so the figures do not depend on
 * a text or a tokenizer. Each run starts from an empty KV cache; medians over `runs` after `warmup`
 * runs that are not counted (the first ORT calls allocate and prepack).
 */
import type { ExecutionBackend } from '../runtime/backend.js';
import type { Progress } from '../core/context.js';
import { generate } from '../runtime/generate.js';
import { mulberry32 } from '../core/rng.js';
import { UsageError } from '../core/errors.js';

export interface BenchOptions {
  /** prompt length in tokens (default 96, the whitepaper's TTFT prompt) */
  promptTokens: number;
  /** tokens decoded after the first (default 128) */
  decodeTokens: number;
  /** measured runs (default 5) */
  runs: number;
  /** unmeasured runs first (default 1) */
  warmup: number;
  seed: number;
  /**
   * first prompt token (BOS), e.g. config.json's bos_token_id; null: none. `edgellm bench` takes it from
   * the model's config and never loads the tokenizer (llama-bench's prompts are token ids too), so its
   * peak RSS is the model's and the runtime's alone
   */
  bosTokenId?: number | null;
  /**
   * tokens of context already in the cache before the prompt (llama-bench `-d`): TTFT and decode
   * are measured after them (default 0); filled with pseudo-random ids, untimed
   */
  contextDepth?: number;
}

export const DEFAULT_BENCH: BenchOptions = { promptTokens: 96, decodeTokens: 128, runs: 5, warmup: 1, seed: 0 };

export interface BenchRun {
  /** prompt submitted → first token chosen, ms */
  ttftMs: number;
  /** decode steps after the first token, tokens/s */
  decodeTokensPerSecond: number;
}

export interface BenchResult {
  promptTokens: number;
  contextDepth: number;
  decodeTokens: number;
  /** medians over runs */
  ttftMs: number;
  decodeTokensPerSecond: number;
  /** ms per decoded token (1000 / decodeTokensPerSecond) */
  decodeMsPerToken: number;
  /** min and max over runs */
  ttftMsRange: [number, number];
  decodeTokensPerSecondRange: [number, number];
  runs: BenchRun[];
}

/** Median of a non-empty list (mean of the middle two for an even count). */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** The benchmark prompt: [BOS,] then pseudo-random ids in [0, vocab). */
export function benchPrompt(vocab: number, n: number, seed: number, bos?: number | null): number[] {
  const rand = mulberry32(seed);
  const ids = Array.from({ length: n }, () => Math.floor(rand() * vocab));
  if (bos != null && n > 0) ids[0] = bos;
  return ids;
}

/**
 * Runs the benchmark.
 * @param progress ticks once per run (warm-up included)
 * @throws UsageError when a count is not a positive integer or prompt + decode exceed the context
 */
export async function benchmark(backend: ExecutionBackend, opts: BenchOptions = DEFAULT_BENCH, progress?: Progress): Promise<BenchResult> {
  for (const [k, v] of [['prompt tokens', opts.promptTokens], ['decode tokens', opts.decodeTokens], ['runs', opts.runs]] as const)
    if (!Number.isInteger(v) || v < 1) throw new UsageError(`bench: ${k} must be a positive integer, got ${v}`);
  if (!Number.isInteger(opts.warmup) || opts.warmup < 0) throw new UsageError(`bench: warm-up runs must be a non-negative integer, got ${opts.warmup}`);
  const depth = opts.contextDepth ?? 0;
  if (!Number.isInteger(depth) || depth < 0) throw new UsageError(`bench: context depth must be a non-negative integer, got ${depth}`);
  if (depth + opts.promptTokens + opts.decodeTokens > backend.maxContext)
    throw new UsageError(`bench: ${depth} context + ${opts.promptTokens} prompt + ${opts.decodeTokens} decode tokens exceed the context of ${backend.maxContext}`);
  // BOS starts the sequence: the context's first token when there is one, else the prompt's
  const prompt = benchPrompt(backend.vocabSize, opts.promptTokens, opts.seed, depth > 0 ? null : opts.bosTokenId);
  const filler = depth > 0 ? benchPrompt(backend.vocabSize, depth, opts.seed + 1, opts.bosTokenId) : [];
  const runs: BenchRun[] = [];
  // one context, emptied before each run (a server's slot, in effect): a new one per run would leave
  // the previous cache buffer (29 MB for Qwen2-1.5B at 2,048 tokens) to the garbage collector and
  // add up to a few of them to the peak RSS
  const ctx = backend.newContext();
  for (let i = 0; i < opts.warmup + opts.runs; i++) {
    // maxTokens = first token + decodeTokens more, each one decode step; no stop tokens
    backend.truncate(ctx, 0);
    if (depth > 0) await backend.forward(ctx, filler, { lastOnly: true }); // the context, untimed
    const r = await generate(backend, prompt, { maxTokens: opts.decodeTokens + 1, seed: opts.seed, temperature: 0, topP: 1, topK: 0 }, undefined, ctx);
    if (i >= opts.warmup) runs.push({ ttftMs: r.ttftMs, decodeTokensPerSecond: r.decodeTokensPerSecond });
    progress?.tick();
  }
  progress?.done();
  const ttft = runs.map((r) => r.ttftMs);
  const tps = runs.map((r) => r.decodeTokensPerSecond);
  const decodeTokensPerSecond = median(tps);
  return {
    promptTokens: opts.promptTokens,
    contextDepth: depth,
    decodeTokens: opts.decodeTokens,
    ttftMs: median(ttft),
    decodeTokensPerSecond,
    decodeMsPerToken: 1000 / decodeTokensPerSecond,
    ttftMsRange: [Math.min(...ttft), Math.max(...ttft)],
    decodeTokensPerSecondRange: [Math.min(...tps), Math.max(...tps)],
    runs,
  };
}
