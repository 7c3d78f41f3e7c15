/**
 * What both APIs do to generate: check the prompt fits the context, wait for a place in the queue,
 * run the session's generate with an AbortSignal that fires the moment the client disconnects,
 * record the metrics and the numbers for the request's log line. And a streamed answer that opens
 * only with its first piece, so that everything that fails before (queue full, busy context, bad
 * prompt) still gets its HTTP status and JSON error body.
 */
import { PassThrough } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ContextOverflowError, type GenerateResult } from '../runtime/session.js';
import type { GenerationParams } from '../runtime/params.js';
import type { ApiLabel } from './metrics.js';
import type { ServedModel } from './model.js';
import type { ServeState } from './state.js';
import { QueueFullError } from './errors.js';

export interface Job {
  api: ApiLabel;
  served: ServedModel;
  /** the model field as the client sent it (for the log) */
  modelName: string;
  adapter: string | null;
  /** the prompt's token ids (see {@link checkPromptFits}) */
  tokens: number[];
  params: Partial<GenerationParams>;
  /** a named context to generate on (absent: an anonymous slot) */
  context?: string;
  /** each piece of text as soon as it is final */
  onText?: (text: string) => void | Promise<void>;
}

export interface JobResult {
  result: GenerateResult;
  /** ms spent waiting for a place */
  queueMs: number;
}

/**
 * @throws ContextOverflowError (400 with both numbers) when `tokens` leave no room to generate
 */
export function checkPromptFits(served: ServedModel, tokens: readonly number[]): void {
  const cap = served.session.capacity;
  if (tokens.length >= cap) throw new ContextOverflowError(tokens.length, cap);
}

/**
 * Runs one generation for `req`. The client closing its connection (before or during the
 * generation) aborts it: a waiting request leaves the queue, a running one stops before its next
 * token and frees its place.
 * @throws QueueFullError (429); ClientGoneError when the client left while waiting; the errors of
 *   ModelSession.generate (ContextBusyError, ParamError, ...)
 */
export async function runJob(state: ServeState, req: FastifyRequest, reply: FastifyReply, job: Job): Promise<JobResult> {
  const ac = new AbortController();
  const res = reply.raw;
  const onClose = () => {
    if (!res.writableFinished) ac.abort();
  };
  res.once('close', onClose);
  if (res.destroyed || req.raw.socket?.destroyed) ac.abort();
  state.active.add(ac);
  let finished!: () => void;
  state.generating.set(req, new Promise<void>((r) => (finished = r)));
  const tq = performance.now();
  try {
    let release;
    try {
      release = await state.queue.acquire(ac.signal);
    } catch (e) {
      if (e instanceof QueueFullError) state.metrics.rejected.inc();
      throw e;
    }
    const queueMs = performance.now() - tq;
    try {
      const result = await job.served.session.generate({
        input: { tokens: job.tokens },
        context: job.context,
        adapter: job.adapter,
        params: job.params,
        signal: ac.signal,
        onText: job.onText,
      });
      state.metrics.observeGeneration(job.api, result, queueMs);
      state.stats.set(req, {
        model: job.modelName,
        promptTokens: result.promptTokens,
        cachedTokens: result.cachedTokens,
        generatedTokens: result.tokens.length,
        ttftMs: result.ttftMs,
        decodeTokensPerSecond: result.decodeTokensPerSecond,
        queueMs,
        status: result.status,
      });
      return { result, queueMs };
    } finally {
      release();
    }
  } finally {
    state.active.delete(ac);
    res.off('close', onClose);
    finished();
  }
}

/**
 * A streamed response body (SSE or NDJSON) that is sent only when the first piece is written:
 * until then the route can still answer with an error status.
 */
export class LazyStream {
  private out: PassThrough | null = null;

  constructor(
    private readonly reply: FastifyReply,
    private readonly contentType: string,
  ) {}

  /** Whether the response (status 200 and headers) has been sent. */
  get started(): boolean {
    return this.out !== null;
  }

  /** Writes `chunk`; resolves when the client has taken it (or is gone). */
  write(chunk: string): void | Promise<void> {
    const out = this.open();
    if (out.destroyed || out.writableEnded) return;
    if (out.write(chunk)) return;
    return new Promise<void>((resolve) => {
      const done = () => {
        out.off('drain', done);
        out.off('close', done);
        resolve();
      };
      out.once('drain', done);
      out.once('close', done);
    });
  }

  /** Writes `chunk` (if any) and ends the body; opens it first if nothing was written. */
  end(chunk?: string): void {
    const out = this.open();
    if (out.destroyed || out.writableEnded) return;
    out.end(chunk);
  }

  private open(): PassThrough {
    if (this.out) return this.out;
    const out = new PassThrough();
    // a write racing the client's disconnect must never become an unhandled 'error'
    out.on('error', () => {});
    this.out = out;
    this.reply.code(200).header('content-type', this.contentType).header('cache-control', 'no-cache').header('x-accel-buffering', 'no');
    this.reply.send(out);
    return out;
  }
}

/** ms -> integer ns (Ollama's durations). */
export function ns(ms: number): number {
  return Math.max(0, Math.round(ms * 1e6));
}
