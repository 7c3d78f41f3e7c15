/**
 * Conversation contexts held by a model session: each one a KV cache on the backend plus the token
 * ids it holds and the adapter it was computed with (HailoRT GenAI's LLM context; llama.cpp's slots).
 * Named contexts are the user's conversations (switched per call, cleared, saved, loaded); anonymous
 * slots serve requests that name none and are picked by longest common prefix, so a chat client that
 * re-sends its whole history evaluates only the new tokens.
 *
 * Memory is bounded by `maxContexts` (each up to the KV-cache bytes at full capacity): past it the
 * least-recently-used idle named context is saved to `spillDir` and dropped from memory (loaded
 * back when next used), or, without a spill directory, the new context is refused.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ExecutionBackend, KvContext } from './backend.js';
import { EdgeLLMError } from '../core/errors.js';
import { VERSION } from '../core/version.js';
import { checkContextFits, readContextFile, writeContextFile } from '../../formats/context-file.js';

/** A context that cannot be found (HTTP 404). */
export class ContextNotFoundError extends EdgeLLMError {}
/** A context already generating (HTTP 409). */
export class ContextBusyError extends EdgeLLMError {}
/** No room for another context in memory (HTTP 503). */
export class ContextLimitError extends EdgeLLMError {}

export interface HeldContext {
  readonly id: string;
  /** the backend's cache (its adapter is fixed; switching adapters replaces it) */
  kv: KvContext;
  /** token ids in the cache, oldest first (kv.length of them) */
  tokens: number[];
  /** true while a generation uses it */
  busy: boolean;
  /** use counter value at the last use (larger = more recent) */
  lastUsed: number;
  /** the caller's metadata, saved with the context (e.g. the chat messages its tokens render) */
  meta?: Record<string, unknown>;
  /**
   * the text the context's conversation renders so far and its token ids (the cache's tokens plus
   * the last generated one): a prompt whose text extends `text` reuses these ids; unknown after a
   * stop string cut the text, or for token-id prompts
   */
  transcript?: { text: string; ids: number[] };
}

/** Context ids are file-name safe: letters, digits, '.', '_', '-', 1-64 characters, not starting with '.'. */
export const CONTEXT_ID = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$/;

export interface ContextStoreOptions {
  /** named contexts held in memory at once (≥ 1) */
  maxContexts: number;
  /** where least-recently-used contexts are spilled (absent: refuse past `maxContexts`) */
  spillDir?: string;
  /** sha256 (hex) of the model, recorded in and checked against context files */
  modelDigest: () => string;
}

export class ContextStore {
  private readonly held = new Map<string, HeldContext>();
  private readonly spilled = new Set<string>();
  private clock = 0;

  constructor(
    private readonly backend: ExecutionBackend,
    private readonly opts: ContextStoreOptions,
  ) {}

  /** Ids of the named contexts, in memory or spilled. */
  ids(): string[] {
    return [...new Set([...this.held.keys(), ...this.spilled])].sort();
  }

  has(id: string): boolean {
    return this.held.has(id) || this.spilled.has(id);
  }

  /**
   * What a context holds, without loading a spilled one or counting as a use.
   * @returns null when there is no such context; `tokens`/`adapter` are null for a spilled context
   */
  info(id: string): { id: string; inMemory: boolean; tokens: number | null; adapter: string | null; busy: boolean } | null {
    const c = this.held.get(id);
    if (c) return { id, inMemory: true, tokens: c.tokens.length, adapter: c.kv.adapter, busy: c.busy };
    return this.spilled.has(id) ? { id, inMemory: false, tokens: null, adapter: null, busy: false } : null;
  }

  /**
   * The context `id`, created empty (with `adapter`) when it does not exist and `create` is set.
   * @throws ContextNotFoundError; ContextLimitError when it must be brought into memory and nothing
   *   can make room; EdgeLLMError for an id that is not {@link CONTEXT_ID}
   */
  get(id: string, opts: { create?: boolean; adapter?: string | null } = {}): HeldContext {
    checkId(id);
    let c = this.held.get(id);
    if (!c && this.spilled.has(id)) {
      this.makeRoom();
      c = this.fromFile(id, this.spillPath(id));
      this.spilled.delete(id);
      fs.rmSync(this.spillPath(id), { force: true });
    }
    if (!c) {
      if (!opts.create) throw new ContextNotFoundError(`no context '${id}'`);
      this.makeRoom();
      c = { id, kv: this.backend.newContext({ adapter: opts.adapter }), tokens: [], busy: false, lastUsed: 0 };
      this.held.set(id, c);
    }
    c.lastUsed = ++this.clock;
    return c;
  }

  /** Empties the context (keeps its id and adapter). @throws ContextNotFoundError, ContextBusyError */
  clear(id: string): void {
    const c = this.get(id);
    if (c.busy) throw new ContextBusyError(`context '${id}' is generating`);
    c.kv = this.backend.newContext({ adapter: c.kv.adapter });
    c.tokens = [];
    c.meta = undefined;
    c.transcript = undefined;
  }

  /** Forgets the context. @throws ContextNotFoundError, ContextBusyError */
  delete(id: string): void {
    checkId(id);
    const c = this.held.get(id);
    if (c?.busy) throw new ContextBusyError(`context '${id}' is generating`);
    if (!c && !this.spilled.has(id)) throw new ContextNotFoundError(`no context '${id}'`);
    this.held.delete(id);
    if (this.spilled.delete(id)) fs.rmSync(this.spillPath(id), { force: true });
  }

  /**
   * Saves the context to `file` (atomically).
   * @returns the number of tokens saved
   * @throws ContextNotFoundError, ContextBusyError; node:fs errors when the file cannot be written
   */
  save(id: string, file: string): number {
    const c = this.get(id);
    if (c.busy) throw new ContextBusyError(`context '${id}' is generating`);
    this.write(c, file);
    return c.tokens.length;
  }

  /**
   * Loads `file` as context `id`, replacing one of that id (which must be idle).
   * @throws FormatError when the file is corrupt or belongs to another model or KV layout;
   *   ContextBusyError; ContextLimitError
   */
  load(id: string, file: string): HeldContext {
    checkId(id);
    if (this.held.get(id)?.busy) throw new ContextBusyError(`context '${id}' is generating`);
    const c = this.fromFile(id, file);
    this.held.delete(id);
    this.makeRoom();
    c.lastUsed = ++this.clock;
    this.held.set(id, c);
    return c;
  }

  private fromFile(id: string, file: string): HeldContext {
    const f = readContextFile(file);
    checkContextFits(file, f, this.opts.modelDigest(), this.backend.kvLayout);
    return { id, kv: this.backend.restore(f.snapshot), tokens: f.tokens, busy: false, lastUsed: 0, meta: f.meta, transcript: f.transcript };
  }

  private write(c: HeldContext, file: string): void {
    writeContextFile(file, {
      model: this.opts.modelDigest(),
      tokens: c.tokens,
      kv: this.backend.kvLayout,
      snapshot: this.backend.snapshot(c.kv),
      edgellm: VERSION,
      meta: c.meta,
      transcript: c.transcript,
    });
  }

  /** Spills (or refuses) until there is room for one more context in memory. */
  private makeRoom(): void {
    while (this.held.size >= this.opts.maxContexts) {
      const idle = [...this.held.values()].filter((c) => !c.busy).sort((a, b) => a.lastUsed - b.lastUsed)[0];
      if (!this.opts.spillDir || !idle)
        throw new ContextLimitError(
          `${this.held.size} contexts are held (the limit); delete one` + (this.opts.spillDir ? ' (all are generating)' : ', or give a contexts directory to spill the least recently used to disk'),
        );
      fs.mkdirSync(this.opts.spillDir, { recursive: true });
      this.write(idle, this.spillPath(idle.id));
      this.held.delete(idle.id);
      this.spilled.add(idle.id);
    }
  }

  private spillPath(id: string): string {
    return path.join(this.opts.spillDir!, `${id}.spill.ctx`);
  }
}

function checkId(id: string): void {
  if (typeof id !== 'string' || !CONTEXT_ID.test(id))
    throw new EdgeLLMError(`context id ${JSON.stringify(id)} is not 1-64 letters, digits, '.', '_' or '-' (not starting with '.')`);
}
