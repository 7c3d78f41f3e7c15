/**
 * The HTTP server: a fastify 5 instance with the OpenAI routes (/v1), the Ollama routes (/api),
 * the context routes (/slots), /health and /metrics, over one ModelSession.
 *
 * - Bodies are JSON whatever their Content-Type (curl's `-d` sends form-urlencoded), must be valid
 *   UTF-8, at most `bodyLimit` bytes (413 past it), and are validated by JSON schema with ajv
 *   (no type coercion, unknown fields refused): the first error becomes a 400 naming the field.
 * - Every error is a JSON body in the shape of the API asked (see errors.ts); an unknown route is
 *   a 404 the same way. Nothing a client sends can crash the server.
 * - With `apiKey`, every route except /health (and routes registered with `config: { public: true
 *   }`) needs `Authorization: Bearer <key>`, else 401.
 * - One line per request goes to `log`, once the response is over or the client has gone.
 * - `plugins` add routes (the web page at `/` is one): each gets the app and the shared state.
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { oneLine } from '../core/errors.js';
import { ServeState, type ServeConfig } from './state.js';
import type { ServedModel } from './model.js';
import { errorBody, HttpError, styleOf, toHttpError } from './errors.js';
import { openaiRoutes } from './openai-routes.js';
import { ollamaRoutes } from './ollama-routes.js';
import { contextsRoutes } from './contexts-routes.js';

/** Adds routes to the server (e.g. the web page at `/`); runs before the server listens. */
export type ServePlugin = (app: FastifyInstance, state: ServeState) => void | Promise<void>;

export interface ServeAppOptions extends Partial<ServeConfig> {
  /** the model, or its loading (until it resolves /health answers 503 and model routes 503) */
  model: ServedModel | Promise<ServedModel>;
  plugins?: readonly ServePlugin[];
}

/** fastify's request body limit unless told otherwise: 1 MiB. */
export const DEFAULT_BODY_LIMIT = 1 << 20;

/**
 * Builds the server (not yet listening: call `app.listen({ host, port })`, and `app.close()` to
 * stop; closing waits for the answers in flight, `state.abortAll()` cuts them short).
 */
export async function buildApp(o: ServeAppOptions): Promise<{ app: FastifyInstance; state: ServeState }> {
  const config: ServeConfig = {
    parallel: o.parallel ?? 1,
    maxQueue: o.maxQueue ?? 16,
    apiKey: o.apiKey,
    contextsDir: o.contextsDir,
    bodyLimit: o.bodyLimit ?? DEFAULT_BODY_LIMIT,
    log: o.log,
    processMetrics: o.processMetrics ?? true,
  };
  const state = new ServeState(config);
  if (o.model instanceof Promise) o.model.then((m) => state.setModel(m), (e: Error) => state.setLoadError(e));
  else state.setModel(o.model);

  const app = Fastify({
    logger: false,
    bodyLimit: config.bodyLimit,
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false } },
  });

  jsonBodies(app, config.bodyLimit);
  closeQuietSockets(app);
  app.addHook('onRequest', async (req, reply) => {
    logWhenDone(state, req, reply);
    if (config.apiKey !== undefined && !(req.routeOptions.config as { public?: boolean } | undefined)?.public) checkKey(req, config.apiKey);
  });
  app.setErrorHandler((err, req, reply) => {
    const h = toHttpError(err);
    if (h.status === 500 && config.log) config.log(`error: ${req.method} ${oneLine(req.url.slice(0, 200))}: ${oneLine(String((err as Error)?.stack ?? err))}`);
    return reply
      .code(h.status)
      .headers(h.headers)
      .type('application/json; charset=utf-8')
      .send(errorBody(h, styleOf(req.url)));
  });
  app.setNotFoundHandler((req, reply) => {
    const h = new HttpError(404, `no route ${req.method} ${req.url.split('?')[0].slice(0, 200)}`, { code: 'not_found' });
    return reply.code(404).send(errorBody(h, styleOf(req.url)));
  });

  app.get('/health', { config: { public: true } }, async (_req, reply) => {
    const m = state.model;
    if (m) return { status: 'ok', model: m.id, slots_processing: state.queue.running, slots_idle: config.parallel - state.queue.running, queue_waiting: state.queue.waiting };
    if (state.loadError) return reply.code(500).send({ status: 'error', error: state.loadError.message });
    return reply.code(503).header('retry-after', '1').send({ status: 'loading' });
  });
  app.get('/metrics', async (_req, reply) => reply.type(state.metrics.contentType).send(await state.metrics.text()));
  openaiRoutes(app, state);
  ollamaRoutes(app, state);
  contextsRoutes(app, state);
  for (const p of o.plugins ?? []) await p(app, state);
  await app.ready();
  return { app, state };
}

/**
 * On close, ends the connections that have no request in flight — including those a client
 * opened and never used (undici opens a spare one after an aborted stream), which Node counts as
 * active until their headers timeout (a minute) — and each other one as its answer ends.
 */
function closeQuietSockets(app: FastifyInstance): void {
  const inFlight = new Map<Socket, number>();
  let closing = false;
  app.server.on('connection', (s: Socket) => {
    inFlight.set(s, 0);
    s.once('close', () => inFlight.delete(s));
  });
  app.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const s = req.socket;
    inFlight.set(s, (inFlight.get(s) ?? 0) + 1);
    res.once('close', () => {
      const n = (inFlight.get(s) ?? 1) - 1;
      inFlight.set(s, n);
      if (closing && n === 0) s.destroy();
    });
  });
  app.addHook('preClose', async () => {
    closing = true;
    for (const [s, n] of inFlight) if (n === 0) s.destroy();
  });
}

/**
 * Every body is parsed as JSON, whatever its Content-Type, after a strict UTF-8 decode (invalid
 * bytes are a 400, not replacement characters in a prompt). An empty body is no body.
 */
function jsonBodies(app: FastifyInstance, bodyLimit: number): void {
  const parse = app.getDefaultJsonParser('error', 'error');
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit }, (req, body, done) => {
    const buf = body as Buffer;
    if (buf.length === 0) return done(null, undefined);
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(buf);
    } catch {
      return done(new HttpError(400, 'the body is not valid UTF-8', { code: 'invalid_utf8' }), undefined);
    }
    parse(req, text, done);
  });
}

/** @throws HttpError 401 unless the request carries `Authorization: Bearer <key>` */
function checkKey(req: FastifyRequest, key: string): void {
  const h = req.headers.authorization;
  const m = typeof h === 'string' ? /^Bearer\s+(.+)$/i.exec(h.trim()) : null;
  const given = Buffer.from(m ? m[1] : '');
  const want = Buffer.from(key);
  const ok = given.length === want.length && timingSafeEqual(given, want);
  if (!ok) throw new HttpError(401, m ? 'invalid API key' : 'missing API key: send Authorization: Bearer <key>', { code: 'invalid_api_key' });
}

/** Logs one line and counts the request once its response is over (or the client is gone). */
function logWhenDone(state: ServeState, req: FastifyRequest, reply: FastifyReply): void {
  const t0 = performance.now();
  reply.raw.once('close', () => {
    const ms = performance.now() - t0;
    const status = reply.raw.writableFinished ? reply.statusCode : 499;
    const route = req.routeOptions.url ?? '(unmatched)';
    state.metrics.requests.inc({ method: req.method, route, status: String(status) });
    state.metrics.requestSeconds.observe({ route }, ms / 1000);
    const log = state.config.log;
    if (log) void Promise.resolve(state.generating.get(req)).then(() => log(requestLine(state, req, status, ms)));
  });
}

/** `<time> <ip> <method> <url> <status> <ms>ms` and, for a generation, its numbers. */
function requestLine(state: ServeState, req: FastifyRequest, status: number, ms: number): string {
  const s = state.stats.get(req);
  const gen = s
    ? ` model=${s.model} prompt=${s.promptTokens} cached=${s.cachedTokens} generated=${s.generatedTokens} ttft=${s.ttftMs.toFixed(1)}ms ` +
      `${Number.isFinite(s.decodeTokensPerSecond) ? s.decodeTokensPerSecond.toFixed(1) : '-'}tok/s queue=${s.queueMs.toFixed(0)}ms ${s.status}`
    : '';
  return `${new Date().toISOString()} ${req.ip} ${req.method} ${oneLine(req.url.slice(0, 200))} ${status} ${ms.toFixed(1)}ms${gen}`;
}
