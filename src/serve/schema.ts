/**
 * JSON-schema pieces shared by the routes (fastify validates bodies with ajv before a handler runs;
 * the app turns ajv's first error into a 400 naming the field), and the checks schemas cannot say
 * well: fields of the protocols that edgellm does not implement, which are refused by name rather
 * than silently ignored.
 */
import { isDeepStrictEqual } from 'node:util';
import type { FastifyRequest } from 'fastify';
import { CONTEXT_ID } from '../runtime/contexts.js';
import { resolveParams, type GenerationParams } from '../runtime/params.js';
import { fieldError } from './errors.js';

/** A number or null (null: the default, as OpenAI's clients send it). */
export const num = { type: ['number', 'null'] } as const;
export const int = { type: ['integer', 'null'] } as const;
export const bool = { type: ['boolean', 'null'] } as const;
export const str = { type: 'string', maxLength: 1 << 20 } as const;
/** `stop`: one string or a list of them */
export const stopSchema = { anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' }, maxItems: 64 }, { type: 'null' }] } as const;
export const modelSchema = { type: 'string', minLength: 1, maxLength: 256 } as const;
/** a named context id (the ContextStore's rule) */
export const contextIdSchema = { type: 'string', pattern: CONTEXT_ID.source } as const;
/** accepted and ignored */
export const anything = {} as const;

/** The request header naming the context to generate on (the body field `context_id` does the same). */
export const CONTEXT_HEADER = 'x-edgellm-context';

/**
 * The named context a request asks for: the body's `context_id`, else the X-Edgellm-Context header.
 * @throws HttpError 400 for a header that is not a valid context id
 */
export function requestedContext(req: FastifyRequest, bodyField: unknown): string | undefined {
  if (typeof bodyField === 'string') return bodyField;
  const h = req.headers[CONTEXT_HEADER];
  if (h === undefined) return undefined;
  const v = Array.isArray(h) ? h[0] : h;
  if (!CONTEXT_ID.test(v)) throw fieldError(`header ${CONTEXT_HEADER}`, `must be 1-64 letters, digits, '.', '_' or '-' (not starting with '.'), got ${JSON.stringify(v.slice(0, 80))}`);
  return v;
}

/**
 * Refuses fields a protocol defines that edgellm does not implement, unless they hold their
 * default (`allowed`: the values that mean "off", e.g. `n: 1`, `logprobs: false`).
 * @throws HttpError 400 naming the first such field
 */
export function refuseUnsupported(body: Record<string, unknown>, fields: Record<string, readonly unknown[]>, prefix = ''): void {
  for (const [k, allowed] of Object.entries(fields)) {
    if (!(k in body)) continue;
    const v = body[k];
    // deep equality, not JSON text: 1e999 parses to Infinity, which JSON.stringify writes as null
    if (v === undefined || v === null || allowed.some((a) => isDeepStrictEqual(a, v))) continue;
    throw fieldError(`${prefix}${k}`, 'is not supported by edgellm', 'unsupported_field');
  }
}

/** Drops undefined and null values (the protocols' "use the default"). */
export function defined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined && v !== null)) as Partial<T>;
}

/**
 * Validates generation parameters before the request waits in the queue, naming each field as
 * the client spelled it.
 * @throws ParamError (400)
 */
export function checkParams(p: Partial<GenerationParams>, names: Partial<Record<keyof GenerationParams, string>>): Partial<GenerationParams> {
  resolveParams(p, names);
  return p;
}
