/**
 * HTTP errors of the server: every error a route can meet (the session's typed errors, fastify's
 * own — schema validation, bad JSON, body too large — and the server's: unknown model, queue full,
 * still loading) becomes one {@link HttpError} with a status, and then a JSON body in the shape of
 * the API the request was made to:
 *
 * - OpenAI (`/v1/*` and everything that is not Ollama's): `{"error": {"message", "type", "param",
 *   "code"}}` (OpenAI API reference, "Error codes"; the `type` names are llama.cpp server's:
 *   invalid_request_error, authentication_error, not_found_error, rate_limit_error,
 *   unavailable_error, not_supported_error, server_error).
 * - Ollama (`/api/*`): `{"error": "message"}` (Ollama docs/api.md, "Errors").
 */
import { EdgeLLMError, FormatError, UsageError } from '../core/errors.js';
import { ParamError } from '../runtime/params.js';
import { ContextOverflowError } from '../runtime/session.js';
import { ContextBusyError, ContextLimitError, ContextNotFoundError } from '../runtime/contexts.js';

export interface HttpErrorOptions {
  /** OpenAI error type (default from the status) */
  type?: string;
  /** the request field at fault, as the client spells it (e.g. `messages[0].content`) */
  param?: string | null;
  /** a stable machine-readable code (e.g. `model_not_found`) */
  code?: string | null;
  /** extra response headers (e.g. Retry-After) */
  headers?: Record<string, string>;
}

/** An error answered with `status` and a JSON body; `message` is one line. */
export class HttpError extends Error {
  readonly type: string;
  readonly param: string | null;
  readonly code: string | null;
  readonly headers: Record<string, string>;
  constructor(
    readonly status: number,
    message: string,
    opts: HttpErrorOptions = {},
  ) {
    super(message);
    this.name = 'HttpError';
    this.type = opts.type ?? typeForStatus(status);
    this.param = opts.param ?? null;
    this.code = opts.code ?? null;
    this.headers = opts.headers ?? {};
  }
}

/** A bad request field (400), named in `param`. */
export function fieldError(param: string, problem: string, code = 'invalid_value'): HttpError {
  return new HttpError(400, `${param}: ${problem}`, { param, code });
}

/** The request's model is not served (404). */
export class UnknownModelError extends HttpError {
  constructor(model: string, known: readonly string[]) {
    super(404, `model '${model}' not found (this server has: ${known.join(', ')})`, { param: 'model', code: 'model_not_found' });
  }
}

/** The queue is full (429, with Retry-After in seconds). */
export class QueueFullError extends HttpError {
  constructor(readonly retryAfterSeconds: number, running: number, waiting: number) {
    super(429, `the server is busy (${running} generating, ${waiting} waiting, the queue is full): retry after ${retryAfterSeconds} s`, {
      code: 'queue_full',
      headers: { 'retry-after': String(retryAfterSeconds) },
    });
  }
}

/** The model is still loading (503). */
export class LoadingError extends HttpError {
  constructor() {
    super(503, 'the model is loading', { code: 'loading', headers: { 'retry-after': '1' } });
  }
}

/** The client went away while its request waited (never sent: there is nobody to read it). */
export class ClientGoneError extends HttpError {
  constructor() {
    super(499, 'the client closed the connection', { code: 'client_closed' });
  }
}

function typeForStatus(s: number): string {
  if (s === 401) return 'authentication_error';
  if (s === 403) return 'permission_error';
  if (s === 404) return 'not_found_error';
  if (s === 429) return 'rate_limit_error';
  if (s === 501) return 'not_supported_error';
  if (s === 503) return 'unavailable_error';
  if (s >= 500) return 'server_error';
  return 'invalid_request_error';
}

/** One of ajv's errors, as fastify attaches them to a validation error (`error.validation`). */
interface AjvError {
  instancePath: string;
  keyword: string;
  params: Record<string, unknown>;
  message?: string;
}

/**
 * The client's name for the field an ajv error is about: the JSON pointer as `a.b[0].c`, plus the
 * missing or unknown property for `required` / `additionalProperties`.
 */
export function fieldOfAjvError(e: AjvError): string {
  const parts = e.instancePath
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  const extra = e.keyword === 'required' ? e.params.missingProperty : e.keyword === 'additionalProperties' ? e.params.additionalProperty : undefined;
  if (typeof extra === 'string') parts.push(extra);
  let out = '';
  for (const p of parts) out += /^\d+$/.test(p) ? `[${p}]` : out === '' ? p : `.${p}`;
  return out;
}

const ARTICLE: Record<string, string> = { integer: 'an integer', object: 'an object', array: 'an array', null: 'null' };
/** "must be a string, an array or null" from ajv's type names */
function mustBe(types: string[]): string {
  const words = [...new Set(types.flatMap((t) => t.split(',')))].map((t) => ARTICLE[t] ?? `a ${t}`);
  return `must be ${words.length > 1 ? `${words.slice(0, -1).join(', ')} or ${words[words.length - 1]}` : words[0]}`;
}

function fromValidation(err: { validation: AjvError[]; validationContext?: string }): HttpError {
  const any = err.validation.find((v) => v.keyword === 'anyOf');
  const e = any ?? err.validation[0];
  const field = fieldOfAjvError(e);
  const where = err.validationContext && err.validationContext !== 'body' ? `${err.validationContext} ` : '';
  const name = field === '' ? where.trim() || 'body' : `${where}${field}`;
  let problem = e.message ?? 'is invalid';
  if (e.keyword === 'required') problem = 'is required';
  else if (e.keyword === 'additionalProperties') problem = 'is not a known field';
  else if (e.keyword === 'type') problem = mustBe([String(e.params.type)]);
  else if (e.keyword === 'enum' && Array.isArray(e.params.allowedValues)) problem = `must be one of ${e.params.allowedValues.map((v) => JSON.stringify(v)).join(', ')}`;
  else if (any) {
    const types = err.validation.filter((v) => v.keyword === 'type' && v.instancePath === any.instancePath).map((v) => String(v.params.type));
    problem = types.length ? `${mustBe(types)} (of the accepted shape)` : 'does not have an accepted shape';
  }
  return fieldError(name, problem, e.keyword === 'additionalProperties' ? 'unknown_field' : 'invalid_value');
}

/** The HttpError for anything a route threw. Unknown errors become a 500 without their details. */
export function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (e instanceof ParamError) return new HttpError(400, e.message, { param: e.field, code: 'invalid_value' });
  if (e instanceof ContextOverflowError)
    return new HttpError(400, e.message, { code: 'context_length_exceeded', param: null });
  if (e instanceof ContextNotFoundError) return new HttpError(404, e.message, { code: 'context_not_found' });
  if (e instanceof ContextBusyError) return new HttpError(409, e.message, { code: 'context_busy' });
  if (e instanceof ContextLimitError) return new HttpError(503, e.message, { code: 'context_limit' });
  if (e instanceof FormatError) return new HttpError(400, e.message, { code: 'invalid_format' });
  if (e instanceof UsageError) return new HttpError(400, e.message);
  if (e instanceof EdgeLLMError) return new HttpError(500, e.message);
  const f = e as { validation?: AjvError[]; statusCode?: unknown; code?: unknown; message?: unknown };
  if (f && Array.isArray(f.validation) && f.validation.length > 0) return fromValidation(f as { validation: AjvError[] });
  if (f && typeof f.statusCode === 'number' && f.statusCode >= 400 && f.statusCode < 500) {
    const code = typeof f.code === 'string' ? f.code : null;
    return new HttpError(f.statusCode, fastifyMessage(code, String(f.message ?? 'bad request')), { code });
  }
  return new HttpError(500, 'internal server error', { code: 'internal_error' });
}

/** Plainer words for fastify's own request errors. */
function fastifyMessage(code: string | null, message: string): string {
  if (code === 'FST_ERR_CTP_BODY_TOO_LARGE') return `request body is too large (${message})`;
  if (code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return 'unsupported content type: send application/json';
  if (code === 'FST_ERR_CTP_EMPTY_JSON_BODY') return 'the body is empty: send a JSON object';
  if (code === 'FST_ERR_CTP_INVALID_CONTENT_LENGTH') return 'the Content-Length does not match the body';
  if (code === 'FST_ERR_CTP_INVALID_JSON_BODY' || (code === null && /JSON/.test(message))) return 'the body is not valid JSON';
  return message.split('\n')[0];
}

export type ApiStyle = 'openai' | 'ollama';

/** Ollama's routes are under /api/; every other route answers errors in OpenAI's shape. */
export function styleOf(url: string): ApiStyle {
  return url.startsWith('/api/') || url === '/api' ? 'ollama' : 'openai';
}

/** The JSON error body for `style`. */
export function errorBody(h: HttpError, style: ApiStyle): unknown {
  if (style === 'ollama') return { error: h.message };
  return { error: { message: h.message, type: h.type, param: h.param, code: h.code } };
}
