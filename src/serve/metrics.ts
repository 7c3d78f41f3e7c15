/**
 * The server's Prometheus metrics (prom-client, on a registry of its own: two servers in one
 * process, as in the tests, never share counters). Served as text by `GET /metrics`, the
 * exposition format of https://prometheus.io/docs/instrumenting/exposition_formats/ (llama.cpp's
 * server has the same endpoint with its own names).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { GenerateResult } from '../runtime/session.js';

export type ApiLabel = 'openai' | 'ollama';

export class ServeMetrics {
  readonly registry = new Registry();
  /** HTTP requests answered, by method, route pattern and status (499: the client went away) */
  readonly requests: Counter<'method' | 'route' | 'status'>;
  /** seconds from the request to its last byte */
  readonly requestSeconds: Histogram<'route'>;
  /** prompt tokens evaluated / taken from the cache, generated tokens */
  readonly promptTokens: Counter<'api'>;
  readonly cachedTokens: Counter<'api'>;
  readonly generatedTokens: Counter<'api'>;
  /** seconds from the start of generation to the first token chosen (queue wait excluded) */
  readonly ttft: Histogram<'api'>;
  /** decode tokens/s of each generation of at least two tokens */
  readonly decodeRate: Histogram<'api'>;
  /** seconds a request waited for a place */
  readonly queueSeconds: Histogram;
  /** generations by how they ended: max_tokens, end, aborted, context_full */
  readonly generations: Counter<'api' | 'status'>;
  /** requests refused with 429 */
  readonly rejected: Counter;

  /**
   * @param queue reads the queue's state at scrape time (gauges `edgellm_queue_waiting`,
   *   `edgellm_generations_running`)
   * @param processMetrics also export prom-client's default process metrics (RSS, CPU, heap, event
   *   loop lag) into this registry
   */
  constructor(queue: () => { running: number; waiting: number }, processMetrics = true) {
    const registers = [this.registry];
    this.requests = new Counter({ name: 'edgellm_http_requests_total', help: 'HTTP requests answered', labelNames: ['method', 'route', 'status'], registers });
    this.requestSeconds = new Histogram({
      name: 'edgellm_http_request_duration_seconds',
      help: 'seconds from request to the last byte of the answer',
      labelNames: ['route'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.promptTokens = new Counter({ name: 'edgellm_prompt_tokens_total', help: 'prompt tokens evaluated (not taken from a cache)', labelNames: ['api'], registers });
    this.cachedTokens = new Counter({ name: 'edgellm_prompt_cached_tokens_total', help: 'prompt tokens taken from a held context instead of being evaluated', labelNames: ['api'], registers });
    this.generatedTokens = new Counter({ name: 'edgellm_generated_tokens_total', help: 'tokens generated', labelNames: ['api'], registers });
    this.ttft = new Histogram({
      name: 'edgellm_time_to_first_token_seconds',
      help: 'seconds from the start of generation (after the queue) to the first token',
      labelNames: ['api'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.decodeRate = new Histogram({
      name: 'edgellm_decode_tokens_per_second',
      help: 'decode throughput of one generation (tokens after the first)',
      labelNames: ['api'],
      buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000],
      registers,
    });
    this.queueSeconds = new Histogram({
      name: 'edgellm_queue_wait_seconds',
      help: 'seconds a request waited in the queue',
      buckets: [0.001, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.generations = new Counter({ name: 'edgellm_generations_total', help: 'generations by how they ended', labelNames: ['api', 'status'], registers });
    this.rejected = new Counter({ name: 'edgellm_queue_rejected_total', help: 'requests refused with 429 because the queue was full', registers });
    new Gauge({
      name: 'edgellm_queue_waiting',
      help: 'requests waiting for a place',
      registers,
      collect() {
        this.set(queue().waiting);
      },
    });
    new Gauge({
      name: 'edgellm_generations_running',
      help: 'generations running now',
      registers,
      collect() {
        this.set(queue().running);
      },
    });
    if (processMetrics) collectDefaultMetrics({ register: this.registry });
  }

  /** Records one finished generation. */
  observeGeneration(api: ApiLabel, r: GenerateResult, queueMs: number): void {
    this.promptTokens.inc({ api }, r.promptTokens - r.cachedTokens);
    this.cachedTokens.inc({ api }, r.cachedTokens);
    this.generatedTokens.inc({ api }, r.tokens.length);
    this.generations.inc({ api, status: r.status });
    this.queueSeconds.observe(queueMs / 1000);
    if (r.tokens.length > 0 || r.status !== 'aborted') this.ttft.observe({ api }, r.ttftMs / 1000);
    if (Number.isFinite(r.decodeTokensPerSecond)) this.decodeRate.observe({ api }, r.decodeTokensPerSecond);
  }

  /** The Prometheus text exposition of every metric. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
