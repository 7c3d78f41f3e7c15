/**
 * The model session: the one library API that `run`, `chat`, `serve` and the web page use, over any
 * ExecutionBackend. It turns a prompt, chat messages or token ids into a stream of text pieces with
 * the generation parameters of HailoRT GenAI / llama.cpp (src/runtime/params.ts), on a named
 * conversation context or an anonymous slot, reusing whatever prefix of the prompt the cache already
 * holds (only new tokens are evaluated).
 *
 * Generation ends with a status: `max_tokens` (HailoRT MAX_TOKENS_REACHED), `end` (a stop token or
 * stop string: LOGICAL_END_OF_GENERATION), `aborted` (the AbortSignal fired: ABORTED) or
 * `context_full` (the KV cache reached its capacity).
 */
import type { ExecutionBackend } from './backend.js';
import { applyPenalties, sampleToken } from './sampling.js';
import { resolveParams, type GenerationParams } from './params.js';
import { StopMatcher } from './stop-strings.js';
import { IncrementalDetokenizer } from './detokenizer.js';
import { ContextBusyError, ContextStore, type ContextStoreOptions, type HeldContext } from './contexts.js';
import { mulberry32 } from '../core/rng.js';
import { UsageError } from '../core/errors.js';
import type { TextTokenizer } from '../../formats/tokenizer.js';
import { ChatTemplate, type ChatMessage } from '../../formats/chat-template.js';

/** The prompt is longer than the context can hold (HTTP 400 with the numbers). */
export class ContextOverflowError extends UsageError {
  constructor(
    readonly promptTokens: number,
    readonly capacity: number,
  ) {
    super(`the prompt has ${promptTokens} tokens, the context holds at most ${capacity} (and one more is needed to generate)`);
  }
}

export type GenerationStatus = 'max_tokens' | 'end' | 'aborted' | 'context_full';

/** What to generate from: exactly one of `prompt`, `messages`, `tokens`. */
export type GenerationInput =
  /** text; `raw` (default false) encodes it without the tokenizer's special tokens (no BOS) */
  | { prompt: string; raw?: boolean }
  /** chat messages rendered with the chat template; `continueFinalMessage` resumes an assistant answer */
  | { messages: ChatMessage[]; continueFinalMessage?: boolean; variables?: Record<string, unknown> }
  /** token ids as they are */
  | { tokens: number[] };

export interface GenerateRequest {
  input: GenerationInput;
  /** a named context (created when absent); none: an anonymous slot, picked by longest shared prefix */
  context?: string;
  /** LoRA adapter (null: base model; undefined: the context's, or the session default) */
  adapter?: string | null;
  params?: Partial<GenerationParams>;
  signal?: AbortSignal;
  /** called with each piece of text as soon as it is final (stop strings held back) and its token ids */
  onText?: (text: string, tokenIds: readonly number[]) => void | Promise<void>;
}

export interface GenerateResult {
  text: string;
  /** generated ids (stop token excluded) */
  tokens: number[];
  status: GenerationStatus;
  /** the stop string or token id that ended generation, when status is `end` */
  stoppedBy?: { string: string } | { tokenId: number };
  /** prompt tokens in all, and how many of them came from the cache (not evaluated) */
  promptTokens: number;
  cachedTokens: number;
  /** ms: evaluating the prompt's new tokens; request start → first token chosen; first → last token */
  promptMs: number;
  ttftMs: number;
  decodeMs: number;
  /** tokens/s over the prompt's evaluated tokens; over the tokens after the first (NaN below 2) */
  promptTokensPerSecond: number;
  decodeTokensPerSecond: number;
  /** tokens the context's cache holds afterwards, and its capacity */
  contextTokens: number;
  contextCapacity: number;
  /** the prompt and generated ids: what to send back to continue this answer (Ollama's `context`) */
  contextIds: number[];
  adapter: string | null;
  /** the context's cache was computed with another adapter and was emptied first (the whole prompt was evaluated) */
  contextReset: boolean;
}

export interface SessionOptions {
  /** anonymous slots for requests that name no context (≥ 1; a server's --parallel) */
  slots?: number;
  /** named contexts held in memory and where to spill more (see ContextStore) */
  contexts?: Partial<Omit<ContextStoreOptions, 'modelDigest'>>;
  /** sha256 (hex) of the executable, for context files */
  modelDigest: () => string;
  /** a chat template overriding the model's (e.g. from --chat-template) */
  chatTemplate?: ChatTemplate;
  /** end-of-sequence ids (the model's: config.json / generation_config.json) */
  eosTokenIds: readonly number[];
  /** defaults for fields a request leaves out */
  defaults?: Partial<GenerationParams>;
}

export class ModelSession {
  readonly contexts: ContextStore;
  private readonly slots: HeldContext[];
  private readonly template: ChatTemplate | null;
  private readonly defaults: GenerationParams;
  private slotClock = 0;

  constructor(
    readonly backend: ExecutionBackend,
    readonly tokenizer: TextTokenizer,
    private readonly opts: SessionOptions,
  ) {
    this.contexts = new ContextStore(backend, { maxContexts: opts.contexts?.maxContexts ?? 8, spillDir: opts.contexts?.spillDir, modelDigest: opts.modelDigest });
    this.slots = Array.from({ length: Math.max(1, opts.slots ?? 1) }, (_, i) => ({ id: `slot${i}`, kv: backend.newContext(), tokens: [], busy: false, lastUsed: 0 }));
    const src = tokenizer.chatTemplate;
    this.template = opts.chatTemplate ?? (src ? new ChatTemplate(src, 'tokenizer_config.json') : null);
    this.defaults = resolveParams(opts.defaults ?? {});
  }

  /** KV-cache capacity of every context, tokens. */
  get capacity(): number {
    return this.backend.maxContext;
  }

  get hasChatTemplate(): boolean {
    return this.template !== null;
  }

  /**
   * Renders chat messages to prompt text with the chat template.
   * @throws UsageError when the model has no chat template or a message is malformed; FormatError
   *   when the template fails
   */
  renderChat(messages: ChatMessage[], opts: { continueFinalMessage?: boolean; variables?: Record<string, unknown> } = {}): string {
    if (!this.template) throw new UsageError('the model has no chat_template in tokenizer_config.json: give one with --chat-template FILE, or send a raw prompt');
    return this.template.render(messages, { ...opts, bosToken: this.tokenizer.bosToken, eosToken: this.tokenizer.eosToken });
  }

  /** The prompt text an input renders to (null for token ids) and whether encoding adds special tokens. */
  private promptText(input: GenerationInput): { text: string; special: boolean } | null {
    if ('tokens' in input) return null;
    if ('messages' in input) return { text: this.renderChat(input.messages, input), special: false };
    return { text: input.prompt, special: !input.raw };
  }

  /** The ids of an input whose text (if any) {@link promptText} gave. @throws UsageError when there are none */
  private async idsOf(input: GenerationInput, t: { text: string; special: boolean } | null): Promise<number[]> {
    const ids = t === null ? [...(input as { tokens: number[] }).tokens] : await this.tokenizer.encode(t.text, t.special);
    if (ids.length === 0) throw new UsageError('the prompt encodes to no tokens (and the tokenizer adds no BOS)');
    return ids;
  }

  /**
   * The prompt's token ids.
   * @throws UsageError for an empty result or no chat template; FormatError from the template
   */
  async encode(input: GenerationInput): Promise<number[]> {
    return this.idsOf(input, this.promptText(input));
  }

  /**
   * Generates. The context (named, or the idle slot sharing the longest prefix) keeps the prompt and
   * the generated tokens, so the next request that extends them evaluates only what is new.
   * @throws ParamError for a bad parameter; ContextOverflowError when the prompt does not fit;
   *   ContextBusyError when the named context is generating; EdgeLLMError for an unknown adapter or
   *   a token id outside the vocabulary; the errors of {@link encode}
   */
  async generate(req: GenerateRequest): Promise<GenerateResult> {
    const t0 = performance.now();
    const p = resolveParams(req.params ?? {}, {}, this.defaults);
    const t = this.promptText(req.input); // the chat template renders once per request
    const text = t?.text ?? null;
    let full: number[] | undefined; // the whole prompt's ids, encoded at most once and only if needed
    const fullIds = async () => (full ??= await this.idsOf(req.input, t));
    const ctx = req.context !== undefined ? this.contexts.get(req.context, { create: true, adapter: req.adapter }) : this.pickSlot(await fullIds(), text);
    if (ctx.busy) throw new ContextBusyError(`context '${ctx.id}' is generating`);
    // text-level reuse: a prompt whose text extends the context's transcript keeps the context's own
    // tokens for that part (what the model generated), and only the rest is tokenized
    const tr = extendedTranscript(ctx, text);
    const prompt = tr ? [...tr.ids, ...(await this.tokenizer.encode(text!.slice(tr.text.length), false))] : await fullIds();
    const V = this.backend.vocabSize;
    for (const id of prompt) if (!Number.isInteger(id) || id < 0 || id >= V) throw new UsageError(`token id ${id} is outside the vocabulary [0, ${V})`);
    if (prompt.length >= this.capacity) throw new ContextOverflowError(prompt.length, this.capacity);
    ctx.busy = true;
    ctx.transcript = undefined;
    try {
      const r = await this.run(ctx, prompt, p, req, t0);
      if (text !== null && !(r.stoppedBy && 'string' in r.stoppedBy)) ctx.transcript = { text: text + r.text, ids: r.contextIds };
      return r;
    } finally {
      ctx.busy = false;
    }
  }

  private async run(ctx: HeldContext, prompt: number[], p: GenerationParams, req: GenerateRequest, t0: number): Promise<GenerateResult> {
    const adapter = req.adapter === undefined ? ctx.kv.adapter : req.adapter;
    const contextReset = adapter !== ctx.kv.adapter && ctx.tokens.length > 0;
    if (adapter !== ctx.kv.adapter) {
      ctx.kv = this.backend.newContext({ adapter });
      ctx.tokens = [];
    }
    // reuse the shared prefix, but evaluate at least the last prompt token (its logits are not kept)
    const reuse = Math.min(commonPrefix(ctx.tokens, prompt), prompt.length - 1);
    this.backend.truncate(ctx.kv, reuse);
    ctx.tokens.length = reuse;
    const stopIds = new Set(p.stopTokenIds ?? this.opts.eosTokenIds);
    const rand = mulberry32(p.seed);
    const detok = new IncrementalDetokenizer(this.tokenizer, prompt);
    const stops = new StopMatcher(p.stop);
    const generated: number[] = [];
    let text = '';
    let pendingIds: number[] = [];
    let status: GenerationStatus = 'max_tokens';
    let stoppedBy: GenerateResult['stoppedBy'];
    const emit = async (piece: string) => {
      if (piece === '') return;
      text += piece;
      const ids = pendingIds;
      pendingIds = [];
      await req.onText?.(piece, ids);
    };

    let logits = await this.backend.forward(ctx.kv, prompt.slice(reuse), { lastOnly: true });
    ctx.tokens.push(...prompt.slice(reuse));
    const tPrompt = performance.now();
    let tFirst = tPrompt;
    for (;;) {
      if (req.signal?.aborted) {
        status = 'aborted';
        break;
      }
      const id = sampleToken(applyPenalties(logits, ctx.tokens, p), p, rand);
      if (generated.length === 0) tFirst = performance.now();
      if (stopIds.has(id)) {
        status = 'end';
        stoppedBy = { tokenId: id };
        break;
      }
      generated.push(id);
      pendingIds.push(id);
      const r = stops.push(await detok.push(id));
      if (r.stopped !== undefined) {
        await emit(r.text);
        status = 'end';
        stoppedBy = { string: r.stopped };
        // the token that completed the stop string is not evaluated: the context ends before it
        break;
      }
      if (r.text) await emit(r.text);
      if (generated.length >= p.maxTokens) break;
      if (ctx.kv.length + 1 > this.capacity) {
        status = 'context_full';
        break;
      }
      logits = await this.backend.forward(ctx.kv, [id]);
      ctx.tokens.push(id);
    }
    if (!(stoppedBy && 'string' in stoppedBy)) {
      const r = stops.push(await detok.flush());
      if (r.stopped !== undefined) {
        status = 'end';
        stoppedBy = { string: r.stopped };
        await emit(r.text);
      } else await emit(r.text + stops.flush());
    }
    const tEnd = performance.now();
    const evaluated = prompt.length - reuse;
    return {
      text,
      tokens: generated,
      status,
      stoppedBy,
      promptTokens: prompt.length,
      cachedTokens: reuse,
      promptMs: tPrompt - t0,
      ttftMs: tFirst - t0,
      decodeMs: tEnd - tFirst,
      promptTokensPerSecond: (evaluated * 1000) / Math.max(tPrompt - t0, 1e-9),
      decodeTokensPerSecond: generated.length > 1 ? ((generated.length - 1) * 1000) / (tEnd - tFirst) : NaN,
      contextTokens: ctx.kv.length,
      contextCapacity: this.capacity,
      contextIds: [...prompt, ...generated],
      adapter: ctx.kv.adapter,
      contextReset,
    };
  }

  /**
   * The idle slot sharing the longest prefix with the prompt: its transcript's tokens when the
   * prompt text extends its transcript, else the common prefix of token ids (ties: least recently used).
   */
  private pickSlot(prompt: number[], text: string | null): HeldContext {
    let best: HeldContext | null = null;
    let bestLen = -1;
    for (const s of this.slots) {
      if (s.busy) continue;
      const n = extendedTranscript(s, text)?.ids.length ?? commonPrefix(s.tokens, prompt);
      if (n > bestLen || (n === bestLen && best && s.lastUsed < best.lastUsed)) {
        best = s;
        bestLen = n;
      }
    }
    if (!best) throw new ContextBusyError(`all ${this.slots.length} slots are generating`);
    best.lastUsed = ++this.slotClock;
    return best;
  }

  /** Releases the backend. */
  async dispose(): Promise<void> {
    await this.backend.dispose();
  }
}

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/** The context's transcript when the prompt text extends it (and it is not empty), else null. */
function extendedTranscript(ctx: HeldContext, text: string | null): HeldContext['transcript'] | null {
  const tr = ctx.transcript;
  return text !== null && tr && tr.text.length > 0 && text.startsWith(tr.text) ? tr : null;
}
