/**
 * Text generation on any ExecutionBackend: prefill the prompt in chunks, then decode one token at a
 * time, streaming tokens to a callback. Reports TTFT (ms, prompt submitted → first token chosen) and
 * decode throughput (tokens/s, over the tokens after the first).
 */
import type { ExecutionBackend, KvContext } from './backend.js';
import { sampleToken, type SamplingOptions } from './sampling.js';
import { mulberry32 } from '../core/rng.js';

export interface GenerateOptions extends SamplingOptions {
  maxTokens: number;
  seed: number;
  /** stop at any of these ids (default: none) */
  stopTokens?: number[];
}

export interface GenerateResult {
  /** generated ids (prompt excluded) */
  tokens: number[];
  /** time to first token, ms */
  ttftMs: number;
  /** decode tokens/s after the first token (NaN when fewer than 2 tokens) */
  decodeTokensPerSecond: number;
  promptTokens: number;
  stopReason: 'max_tokens' | 'stop_token' | 'context_full';
}

/**
 * Generates from `prompt` ids (must be non-empty: include BOS for an empty prompt).
 * @param onToken called with each generated id as soon as it is chosen
 */
export async function generate(
  backend: ExecutionBackend,
  prompt: number[],
  opts: GenerateOptions,
  onToken?: (id: number) => void | Promise<void>,
  ctx: KvContext = backend.newContext(),
): Promise<GenerateResult> {
  const rand = mulberry32(opts.seed);
  const stop = new Set(opts.stopTokens ?? []);
  const t0 = performance.now();
  let logits = await backend.forward(ctx, prompt, { lastOnly: true });
  const tokens: number[] = [];
  let ttftMs = 0;
  let tFirst = 0;
  let stopReason: GenerateResult['stopReason'] = 'max_tokens';
  while (tokens.length < opts.maxTokens) {
    const id = sampleToken(logits, opts, rand);
    if (tokens.length === 0) {
      tFirst = performance.now();
      ttftMs = tFirst - t0;
    }
    if (stop.has(id)) {
      stopReason = 'stop_token';
      break;
    }
    tokens.push(id);
    await onToken?.(id);
    if (tokens.length >= opts.maxTokens) break;
    if (ctx.length + 1 > backend.maxContext) {
      stopReason = 'context_full';
      break;
    }
    logits = await backend.forward(ctx, [id]);
  }
  const decodeMs = performance.now() - tFirst;
  return {
    tokens,
    ttftMs,
    decodeTokensPerSecond: tokens.length > 1 ? ((tokens.length - 1) * 1000) / decodeMs : NaN,
    promptTokens: prompt.length,
    stopReason,
  };
}
