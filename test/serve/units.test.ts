/**
 * The server's small parts on their own: the queue (order, limit, abort while waiting, release
 * once), the error mapping (typed errors -> status and field, ajv paths -> field names), context
 * file names kept inside the directory, model names -> adapters.
 */
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { RequestQueue } from '../../src/serve/queue.js';
import { ClientGoneError, QueueFullError, errorBody, fieldOfAjvError, styleOf, toHttpError } from '../../src/serve/errors.js';
import { contextFilePath } from '../../src/serve/contexts-routes.js';
import { humanCount, modelIdOf, resolveModel, type ServedModel } from '../../src/serve/model.js';
import { ParamError } from '../../src/runtime/params.js';
import { ContextOverflowError } from '../../src/runtime/session.js';
import { ContextBusyError, ContextNotFoundError } from '../../src/runtime/contexts.js';
import { FormatError, UsageError } from '../../src/core/errors.js';

describe('RequestQueue', () => {
  it('runs `parallel` at once, queues `maxQueue` in order, refuses the rest with 429', async () => {
    const q = new RequestQueue(1, 2);
    const r1 = await q.acquire();
    const order: number[] = [];
    const w2 = q.acquire().then((r) => (order.push(2), r));
    const w3 = q.acquire().then((r) => (order.push(3), r));
    await expect(q.acquire()).rejects.toBeInstanceOf(QueueFullError);
    expect([q.running, q.waiting]).toEqual([1, 2]);
    r1();
    r1(); // a second release is a no-op
    const r2 = await w2;
    expect([q.running, q.waiting]).toEqual([1, 1]);
    r2();
    (await w3)();
    expect(order).toEqual([2, 3]);
    expect([q.running, q.waiting]).toEqual([0, 0]);
  });

  it('drops a waiter whose signal fires, and gives Retry-After in seconds', async () => {
    const q = new RequestQueue(1, 1);
    const r1 = await q.acquire();
    const ac = new AbortController();
    const w = q.acquire(ac.signal);
    ac.abort();
    await expect(w).rejects.toBeInstanceOf(ClientGoneError);
    expect(q.waiting).toBe(0);
    // the place the aborted waiter left is free: the next one waits instead of being refused
    const w2 = q.acquire();
    expect(q.waiting).toBe(1);
    await expect(q.acquire()).rejects.toMatchObject({ status: 429, headers: { 'retry-after': expect.stringMatching(/^\d+$/) } });
    r1();
    (await w2)();
    expect([q.running, q.waiting]).toEqual([0, 0]);
    expect(() => new RequestQueue(0, 1)).toThrow(RangeError);
  });
});

describe('errors', () => {
  it('maps typed errors to statuses and fields', () => {
    expect(toHttpError(new ParamError('top_p', 'must be in [0, 1], got 3'))).toMatchObject({ status: 400, param: 'top_p' });
    expect(toHttpError(new ContextOverflowError(600, 512))).toMatchObject({ status: 400, code: 'context_length_exceeded', message: expect.stringMatching(/600 tokens.*512/) });
    expect(toHttpError(new ContextNotFoundError('no context'))).toMatchObject({ status: 404 });
    expect(toHttpError(new ContextBusyError('busy'))).toMatchObject({ status: 409 });
    expect(toHttpError(new FormatError('f', 'bad'))).toMatchObject({ status: 400 });
    expect(toHttpError(new UsageError('no template'))).toMatchObject({ status: 400 });
    expect(toHttpError(new Error('secret internals'))).toMatchObject({ status: 500, message: 'internal server error' });
    expect(toHttpError({ statusCode: 413, code: 'FST_ERR_CTP_BODY_TOO_LARGE', message: 'Request body is too large' })).toMatchObject({ status: 413 });
    const v = toHttpError({ validation: [{ instancePath: '/messages/0', keyword: 'required', params: { missingProperty: 'role' }, message: 'x' }], validationContext: 'body' });
    expect([v.status, v.param, v.message]).toEqual([400, 'messages[0].role', 'messages[0].role: is required']);
  });

  it('names ajv fields and shapes bodies per API', () => {
    expect(fieldOfAjvError({ instancePath: '/options/num_ctx', keyword: 'type', params: {} })).toBe('options.num_ctx');
    expect(fieldOfAjvError({ instancePath: '', keyword: 'additionalProperties', params: { additionalProperty: 'foo' } })).toBe('foo');
    expect(fieldOfAjvError({ instancePath: '/a~1b/2', keyword: 'type', params: {} })).toBe('a/b[2]');
    const h = toHttpError(new ParamError('seed', 'bad'));
    expect(errorBody(h, 'ollama')).toEqual({ error: 'seed: bad' });
    expect(errorBody(h, 'openai')).toEqual({ error: { message: 'seed: bad', type: 'invalid_request_error', param: 'seed', code: 'invalid_value' } });
    expect([styleOf('/api/chat'), styleOf('/v1/models'), styleOf('/slots/x')]).toEqual(['ollama', 'openai', 'openai']);
  });
});

describe('names', () => {
  it('keeps context files inside the directory', () => {
    expect(contextFilePath('/srv/ctx', 'conv-1.ctx')).toBe(path.resolve('/srv/ctx/conv-1.ctx'));
    for (const bad of ['../x', '..', '.', '.x', 'a/b', 'a\\b', '/etc/passwd', '', 'x'.repeat(129), 'a\u0000b', 'c.spill.ctx'])
      expect(() => contextFilePath('/srv/ctx', bad), bad).toThrow(/^filename: /);
  });

  it('turns model fields into adapters', () => {
    const served = { id: 'stories', session: { backend: { adapters: ['wiki'] } } } as unknown as ServedModel;
    expect([resolveModel(served, 'stories'), resolveModel(served, 'stories:latest'), resolveModel(served, 'stories:wiki')]).toEqual([null, null, 'wiki']);
    expect(() => resolveModel(served, 'stories:nope')).toThrow(/model 'stories:nope' not found \(this server has: stories, stories:wiki\)/);
    expect(resolveModel({ ...served, defaultAdapter: 'wiki' }, 'stories')).toBe('wiki');
    expect([modelIdOf('/x/stories.hef'), modelIdOf('m.v2.hef'), modelIdOf('noext')]).toEqual(['stories', 'm.v2', 'noext']);
    expect([humanCount(260_000), humanCount(1_540_000_000), humanCount(999)]).toEqual(['260K', '1.5B', '999']);
  });
});
