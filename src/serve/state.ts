/**
 * What every route of one server shares: the model (absent while it loads), the queue, the
 * metrics, the generations in flight (so a shutdown can abort them) and the server's options.
 */
import type { FastifyRequest } from 'fastify';
import type { ServedModel } from './model.js';
import { RequestQueue } from './queue.js';
import { ServeMetrics } from './metrics.js';
import { HttpError, LoadingError } from './errors.js';

export interface ServeConfig {
  /** generations at once (the session's slot count) */
  parallel: number;
  /** requests waiting beyond those; more get 429 */
  maxQueue: number;
  /** when set, every route but /health needs `Authorization: Bearer <apiKey>` */
  apiKey?: string;
  /** where /slots save and restore context files (absent: those actions answer 501) */
  contextsDir?: string;
  /** largest request body, bytes */
  bodyLimit: number;
  /** one line per request (no newline); absent: nothing is logged */
  log?: (line: string) => void;
  /** export prom-client's default process metrics too */
  processMetrics: boolean;
}

/** Numbers a generation route leaves on its request for the log line. */
export interface RequestStats {
  model: string;
  promptTokens: number;
  cachedTokens: number;
  generatedTokens: number;
  ttftMs: number;
  decodeTokensPerSecond: number;
  queueMs: number;
  status: string;
}

export class ServeState {
  private served: ServedModel | null = null;
  private failure: Error | null = null;
  readonly queue: RequestQueue;
  readonly metrics: ServeMetrics;
  /** abort controllers of the generations in flight */
  readonly active = new Set<AbortController>();
  readonly stats = new WeakMap<FastifyRequest, RequestStats>();
  /** settles when the request's generation has finished (so its log line can wait for the numbers) */
  readonly generating = new WeakMap<FastifyRequest, Promise<void>>();

  constructor(readonly config: ServeConfig) {
    this.queue = new RequestQueue(config.parallel, config.maxQueue);
    this.metrics = new ServeMetrics(() => ({ running: this.queue.running, waiting: this.queue.waiting }), config.processMetrics);
  }

  /** The loaded model, or null while loading. */
  get model(): ServedModel | null {
    return this.served;
  }

  /** Why loading failed, if it did. */
  get loadError(): Error | null {
    return this.failure;
  }

  setModel(m: ServedModel): void {
    this.served = m;
  }

  setLoadError(e: Error): void {
    this.failure = e;
  }

  /**
   * The model, for a route that needs one.
   * @throws LoadingError (503) while it loads; HttpError 500 when loading failed
   */
  requireModel(): ServedModel {
    if (this.served) return this.served;
    if (this.failure) throw new HttpError(500, `the model failed to load: ${this.failure.message}`);
    throw new LoadingError();
  }

  /** Aborts every generation in flight (a shutdown that cannot wait any longer). */
  abortAll(): void {
    for (const ac of this.active) ac.abort();
  }
}
