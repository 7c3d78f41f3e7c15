/**
 * The runner's backend interface. The simulator backend (onnxruntime-node on CPU, simulator.ts)
 * implements it; a device backend (HailoRT on a Hailo-10H) would implement the same contract:
 * load an executable's prefill and decode graphs once, then run tokens against KV-cache contexts.
 */

import type { KvLayout, KvSnapshot } from '../ir/executable.js';

/** An opaque KV-cache context: one conversation's state on the backend. */
export interface KvContext {
  /** tokens held in the cache */
  readonly length: number;
  /** the LoRA adapter every forward on this context runs with (null: the base model) */
  readonly adapter: string | null;
}

export interface ExecutionBackend {
  /** short name for logs, e.g. "simulator (onnxruntime-node, cpu)" */
  readonly name: string;
  /** static tokens per prefill call */
  readonly prefillLen: number;
  /** maximum context in tokens (KV-cache capacity) */
  readonly maxContext: number;
  readonly vocabSize: number;
  /** the executable's KV-cache layout (what a {@link KvSnapshot} of this backend holds) */
  readonly kvLayout: KvLayout;
  /** names of the LoRA adapters the executable holds, selectable per context without reloading */
  readonly adapters: readonly string[];
  /**
   * Sets the adapter that later {@link newContext} calls use by default (null: the base model).
   * @throws EdgeLLMError naming the known adapters when `name` is not one of them
   */
  selectAdapter(name: string | null): void;
  /**
   * A fresh, empty KV-cache context, running with `opts.adapter` (default: the selected adapter).
   * @throws EdgeLLMError for an unknown adapter name
   */
  newContext(opts?: { adapter?: string | null }): KvContext;
  /**
   * Appends `tokens` to the context and returns their logits, float32 [tokens.length, vocab] (or only
   * the last row, [1, vocab], with `lastOnly`). One token runs the decode graph; more run the prefill
   * graph in chunks of `prefillLen` (the last chunk padded).
   * @throws EdgeLLMError when the context would exceed `maxContext`
   */
  forward(ctx: KvContext, tokens: number[], opts?: { lastOnly?: boolean }): Promise<Float32Array>;
  /**
   * A new context holding the same tokens as `ctx` (copy-on-write: forwarding either leaves the
   * other unchanged). Used to score several continuations of one shared prefix (HellaSwag endings).
   */
  fork(ctx: KvContext): KvContext;
  /**
   * Keeps the first `length` tokens of the context and forgets the rest (prefix reuse: a prompt
   * that shares only part of what the cache holds re-evaluates from where they differ).
   * @throws EdgeLLMError when `length` is negative, fractional or above `ctx.length`
   */
  truncate(ctx: KvContext, length: number): void;
  /** A copy of the context's cache bytes (for a context file). */
  snapshot(ctx: KvContext): KvSnapshot;
  /**
   * A new context holding `snap`'s tokens.
   * @throws EdgeLLMError when the snapshot's adapter is unknown, its length exceeds `maxContext`,
   *   or a layer's byte size disagrees with the layout
   */
  restore(snap: KvSnapshot): KvContext;
  /** Releases sessions and memory. */
  dispose(): Promise<void>;
}
