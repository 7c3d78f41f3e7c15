/**
 * Named contexts over HTTP, after llama.cpp server's slot API (its README, "POST
 * /slots/{id_slot}?action=save|restore|erase"), with edgellm's named contexts as the slots:
 *
 *   GET  /slots                              the named contexts held (in memory or spilled)
 *   GET  /slots/:id                          one context: tokens held, capacity, adapter
 *   POST /slots/:id?action=save     {filename}  writes it to <contexts-dir>/<filename>
 *   POST /slots/:id?action=restore  {filename}  loads it (replacing a context of that id)
 *   POST /slots/:id?action=erase               forgets it
 *
 * A request generates on a context with the body field `context_id` or the X-Edgellm-Context
 * header (both APIs); after a restore, a prompt that extends the saved tokens evaluates only its
 * new tokens. File names are plain names inside --contexts-dir: no separators, no leading dot
 * (path traversal is refused with 400). A file from another model, or with any byte changed, is
 * refused with 400 naming the problem, and nothing changes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { EdgeLLMError, FormatError } from '../core/errors.js';
import { ContextBusyError, ContextLimitError, ContextNotFoundError } from '../runtime/contexts.js';
import type { ServeState } from './state.js';
import { fieldError, HttpError } from './errors.js';
import { contextIdSchema } from './schema.js';

/** A context file name: letters, digits, '.', '_', '-', 1-128 characters, not starting with '.'. */
export const CONTEXT_FILE = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$/;

/**
 * `<dir>/<filename>`, strictly inside `dir`.
 * @throws HttpError 400 naming `filename` for anything but a plain file name (separators, `..`,
 *   a leading dot, the session's own `.spill.ctx` files)
 */
export function contextFilePath(dir: string, filename: string): string {
  if (!CONTEXT_FILE.test(filename)) throw fieldError('filename', `must be a plain file name of 1-128 letters, digits, '.', '_' or '-' (not starting with '.'), got ${JSON.stringify(filename.slice(0, 80))}`);
  if (filename.endsWith('.spill.ctx')) throw fieldError('filename', "names ending in '.spill.ctx' are the server's own spill files");
  const root = path.resolve(dir);
  const file = path.resolve(root, filename);
  const rel = path.relative(root, file);
  if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel) || rel.includes(path.sep)) throw fieldError('filename', 'must name a file inside the contexts directory');
  return file;
}

const params = { type: 'object', required: ['id'], properties: { id: contextIdSchema } } as const;
const query = { type: 'object', required: ['action'], additionalProperties: false, properties: { action: { type: 'string', enum: ['save', 'restore', 'erase'] } } } as const;
const body = { type: ['object', 'null'], additionalProperties: false, properties: { filename: { type: 'string', maxLength: 256 } } } as const;

/** Registers the /slots routes on `app`. */
export function contextsRoutes(app: FastifyInstance, state: ServeState): void {
  app.get('/slots', async () => {
    const s = state.requireModel().session;
    return s.contexts.ids().map((id) => ({ id, n_ctx: s.capacity }));
  });

  app.get<{ Params: { id: string } }>('/slots/:id', { schema: { params } }, async (req) => {
    const s = state.requireModel().session;
    const c = s.contexts.info(req.params.id); // no load of a spilled context, no use counted
    if (!c) throw new ContextNotFoundError(`no context '${req.params.id}'`);
    return { id: c.id, n_ctx: s.capacity, n_tokens: c.tokens, adapter: c.adapter, is_processing: c.busy, in_memory: c.inMemory };
  });

  app.post<{ Params: { id: string }; Querystring: { action: 'save' | 'restore' | 'erase' }; Body: { filename?: string } | null }>(
    '/slots/:id',
    { schema: { params, querystring: query, body } },
    async (req) => {
      const s = state.requireModel().session;
      const id = req.params.id;
      const action = req.query.action;
      const t0 = performance.now();
      if (action === 'erase') {
        const n = s.contexts.info(id)?.tokens ?? 0;
        s.contexts.delete(id);
        return { id_slot: id, n_erased: n };
      }
      const dir = state.config.contextsDir;
      if (!dir) throw new HttpError(501, 'this server was started without --contexts-dir: contexts cannot be saved or restored', { code: 'not_supported' });
      const filename = req.body?.filename;
      if (typeof filename !== 'string') throw fieldError('filename', 'is required');
      const file = contextFilePath(dir, filename);
      if (action === 'save') {
        fs.mkdirSync(dir, { recursive: true });
        const n = s.contexts.save(id, file);
        return { id_slot: id, filename, n_saved: n, n_written: fs.statSync(file).size, timings: { save_ms: performance.now() - t0 } };
      }
      let st: fs.Stats;
      try {
        st = fs.lstatSync(file);
      } catch {
        throw new HttpError(404, `filename: no context file '${filename}' in the contexts directory`, { param: 'filename', code: 'file_not_found' });
      }
      if (!st.isFile()) throw fieldError('filename', 'is not a regular file');
      try {
        const c = s.contexts.load(id, file);
        return { id_slot: id, filename, n_restored: c.tokens.length, n_read: st.size, timings: { restore_ms: performance.now() - t0 } };
      } catch (e) {
        // name the file as the client did, not by the server's path
        if (e instanceof FormatError) throw new HttpError(400, `${filename}: ${e.problem}`, { param: 'filename', code: 'invalid_context_file' });
        if (e instanceof ContextBusyError || e instanceof ContextLimitError || !(e instanceof EdgeLLMError)) throw e;
        // the backend refusing the snapshot (an adapter this model lacks, a length past its capacity)
        throw new HttpError(400, `${filename}: ${e.message}`, { param: 'filename', code: 'invalid_context_file' });
      }
    },
  );
}
