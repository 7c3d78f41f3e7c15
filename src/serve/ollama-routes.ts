/**
 * The Ollama-compatible routes (Ollama's docs/api.md):
 *
 *   GET  /api/version, /api/tags, /api/ps
 *   POST /api/show                 the model's details, parameters and template
 *   POST /api/generate             a prompt (templated unless `raw`, resumable with `context`)
 *   POST /api/chat                 messages
 *
 * Streaming is the default (`stream` absent or true): NDJSON, one object per piece, ending with
 * an object with `done: true`, `done_reason` ("stop" | "length"), the counts and the durations in
 * nanoseconds (`prompt_eval_count` counts only the prompt tokens evaluated, not those taken from a
 * cache; `load_duration` is the time the request waited for a place — the model is loaded once at
 * start). An empty prompt (or no messages) answers at once with `done_reason: "load"`, as Ollama
 * does. Extension: `context_id` (or the X-Edgellm-Context header) generates on a named context.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ChatMessage } from '../../formats/chat-template.js';
import type { GenerationParams } from '../runtime/params.js';
import type { GenerateResult } from '../runtime/session.js';
import { VERSION } from '../core/version.js';
import type { ServeState } from './state.js';
import { modelNames, ollamaDetails, parameterCount, resolveModel, type ServedModel } from './model.js';
import { checkPromptFits, LazyStream, ns, runJob } from './generation.js';
import { errorBody, fieldError, toHttpError } from './errors.js';
import { anything, bool, checkParams, contextIdSchema, defined, int, modelSchema, num, refuseUnsupported, stopSchema, str, requestedContext } from './schema.js';

const options = {
  type: ['object', 'null'],
  additionalProperties: false,
  properties: {
    temperature: num,
    top_k: int,
    top_p: num,
    min_p: num,
    repeat_penalty: num,
    repeat_last_n: int,
    presence_penalty: num,
    frequency_penalty: num,
    num_predict: int,
    stop: stopSchema,
    seed: int,
    num_ctx: int,
    // load-time settings of Ollama's runner: accepted, without effect here
    num_thread: anything,
    num_gpu: anything,
    num_batch: anything,
    main_gpu: anything,
    use_mmap: anything,
    num_keep: anything,
  },
} as const;

const common = {
  model: modelSchema,
  stream: bool,
  options,
  keep_alive: anything,
  format: anything,
  think: anything,
  context_id: contextIdSchema,
} as const;

const generateBody = {
  type: 'object',
  required: ['model'],
  additionalProperties: false,
  properties: {
    ...common,
    prompt: str,
    system: str,
    raw: bool,
    context: { type: ['array', 'null'], items: { type: 'integer' }, maxItems: 1 << 20 },
    suffix: anything,
    template: anything,
    images: anything,
  },
} as const;

const chatBody = {
  type: 'object',
  required: ['model'],
  additionalProperties: false,
  properties: {
    ...common,
    messages: {
      type: ['array', 'null'],
      maxItems: 4096,
      items: {
        type: 'object',
        required: ['role'],
        additionalProperties: false,
        properties: { role: { type: 'string', enum: ['system', 'user', 'assistant', 'tool'] }, content: str, images: anything, tool_calls: anything, thinking: anything, tool_name: anything },
      },
    },
    tools: anything,
  },
} as const;

const showBody = {
  type: 'object',
  additionalProperties: false,
  properties: { model: modelSchema, name: modelSchema, verbose: bool },
} as const;

type Body = Record<string, any>;

/** Ollama options → GenerationParams (num_predict −1 / −2: until the context is full). */
function paramsOf(o: Body | null | undefined, served: ServedModel): Partial<GenerationParams> {
  const opt = o ?? {};
  const cap = served.session.capacity;
  if (opt.num_ctx != null && (opt.num_ctx < 1 || opt.num_ctx > cap))
    throw fieldError('options.num_ctx', `must be in [1, ${cap}] (the context capacity of this model), got ${opt.num_ctx}`);
  const np = opt.num_predict;
  const p = defined({
    maxTokens: np === -1 || np === -2 || np == null ? cap : np,
    temperature: opt.temperature,
    topK: opt.top_k,
    topP: opt.top_p,
    minP: opt.min_p,
    repeatPenalty: opt.repeat_penalty,
    repeatLastN: opt.repeat_last_n,
    presencePenalty: opt.presence_penalty,
    frequencyPenalty: opt.frequency_penalty,
    seed: opt.seed,
    stop: typeof opt.stop === 'string' ? [opt.stop] : opt.stop,
  }) as Partial<GenerationParams>;
  const names: Partial<Record<keyof GenerationParams, string>> = {
    maxTokens: 'options.num_predict',
    temperature: 'options.temperature',
    topK: 'options.top_k',
    topP: 'options.top_p',
    minP: 'options.min_p',
    repeatPenalty: 'options.repeat_penalty',
    repeatLastN: 'options.repeat_last_n',
    presencePenalty: 'options.presence_penalty',
    frequencyPenalty: 'options.frequency_penalty',
    seed: 'options.seed',
    stop: 'options.stop',
  };
  return checkParams(p, names);
}

const UNSUPPORTED = { format: ['', null], think: [false], suffix: [''], template: [''], images: [[]], tools: [[]] };
const doneReason = (r: GenerateResult) => (r.status === 'end' || r.status === 'aborted' ? 'stop' : 'length');

function timings(r: GenerateResult, queueMs: number, t0: number): Record<string, number> {
  return {
    total_duration: ns(performance.now() - t0),
    load_duration: ns(queueMs),
    prompt_eval_count: r.promptTokens - r.cachedTokens,
    prompt_eval_duration: ns(r.promptMs),
    eval_count: r.tokens.length,
    eval_duration: ns(r.decodeMs),
  };
}

type Shape = {
  /** a streamed piece / the final object's content field(s) */
  piece(text: string): Record<string, unknown>;
  final(text: string, r: GenerateResult): Record<string, unknown>;
};

async function generateAndAnswer(
  state: ServeState,
  req: FastifyRequest,
  reply: FastifyReply,
  served: ServedModel,
  tokens: number[],
  shape: Shape,
): Promise<unknown> {
  const t0 = performance.now();
  const b = req.body as Body;
  const adapter = resolveModel(served, b.model);
  const params = paramsOf(b.options, served);
  const context = requestedContext(req, b.context_id);
  checkPromptFits(served, tokens);
  const head = () => ({ model: b.model, created_at: new Date().toISOString() });
  const job = { api: 'ollama' as const, served, modelName: b.model, adapter, tokens, params, context };
  if (b.stream === false) {
    const { result, queueMs } = await runJob(state, req, reply, job);
    return { ...head(), ...shape.final(result.text, result), done: true, done_reason: doneReason(result), ...timings(result, queueMs, t0) };
  }
  const out = new LazyStream(reply, 'application/x-ndjson');
  try {
    const { result, queueMs } = await runJob(state, req, reply, { ...job, onText: (t) => out.write(JSON.stringify({ ...head(), ...shape.piece(t), done: false }) + '\n') });
    out.end(JSON.stringify({ ...head(), ...shape.final('', result), done: true, done_reason: doneReason(result), ...timings(result, queueMs, t0) }) + '\n');
  } catch (e) {
    if (!out.started) throw e;
    out.end(JSON.stringify(errorBody(toHttpError(e), 'ollama')) + '\n');
  }
  return reply;
}

/** The answer to an empty prompt: the model is loaded (Ollama's way to preload a model). */
function loaded(b: Body, served: ServedModel, extra: Record<string, unknown>): Record<string, unknown> {
  resolveModel(served, b.model);
  return { model: b.model, created_at: new Date().toISOString(), ...extra, done: true, done_reason: 'load' };
}

/** Registers the Ollama routes on `app`. */
export function ollamaRoutes(app: FastifyInstance, state: ServeState): void {
  const listEntry = (name: string, served: ServedModel) => ({
    name,
    model: name,
    modified_at: (served.modifiedAt ?? new Date()).toISOString(),
    size: served.sizeBytes ?? 0,
    digest: served.exe?.sourceSha256 ?? '',
    details: ollamaDetails(served),
  });

  app.get('/api/version', async () => ({ version: VERSION }));

  app.get('/api/tags', async () => {
    const served = state.requireModel();
    return { models: modelNames(served).map((n) => listEntry(n, served)) };
  });

  app.get('/api/ps', async () => {
    const served = state.requireModel();
    const expires = new Date(Date.now() + 365 * 24 * 3600 * 1000).toISOString();
    return { models: modelNames(served).map((n) => ({ ...listEntry(n, served), expires_at: expires, size_vram: 0, context_length: served.session.capacity })) };
  });

  app.post('/api/show', { schema: { body: showBody } }, async (req) => {
    const b = (req.body ?? {}) as Body;
    const name = b.model ?? b.name;
    if (name === undefined) throw fieldError('model', 'is required');
    const served = state.requireModel();
    const adapter = resolveModel(served, name);
    const c = served.exe?.config;
    const arch = c?.family ?? 'unknown';
    const modelInfo: Record<string, unknown> = c
      ? {
          'general.architecture': arch,
          'general.parameter_count': served.exe ? parameterCount(served.exe) : 0,
          [`${arch}.context_length`]: served.session.capacity,
          [`${arch}.embedding_length`]: c.hiddenSize,
          [`${arch}.block_count`]: c.numLayers,
          [`${arch}.attention.head_count`]: c.numHeads,
          [`${arch}.attention.head_count_kv`]: c.numKvHeads,
          [`${arch}.feed_forward_length`]: c.intermediateSize,
          [`${arch}.vocab_size`]: c.vocabSize,
          'edgellm.adapter': adapter,
          'edgellm.adapters': served.session.backend.adapters,
        }
      : {};
    return {
      license: '',
      modelfile: `# edgellm serves ${served.id} (HEF); adapters: ${served.session.backend.adapters.join(', ') || 'none'}\nFROM ${served.id}\n`,
      parameters: `num_ctx ${served.session.capacity}`,
      template: served.session.hasChatTemplate ? '(the model\'s jinja chat_template)' : '{{ .Prompt }}',
      details: ollamaDetails(served),
      model_info: modelInfo,
      capabilities: ['completion'],
      modified_at: (served.modifiedAt ?? new Date()).toISOString(),
    };
  });

  app.post('/api/generate', { schema: { body: generateBody } }, async (req, reply) => {
    const b = req.body as Body;
    const served = state.requireModel();
    refuseUnsupported(b, UNSUPPORTED);
    if (!b.prompt) return loaded(b, served, { response: '' });
    const s = served.session;
    // raw: the prompt as it is (the tokenizer's BOS rule applies); else the chat template, when the model has one
    const text = b.raw || !s.hasChatTemplate ? (b.system && !b.raw ? `${b.system}\n${b.prompt}` : b.prompt) : null;
    const msgs: ChatMessage[] = [...(b.system ? [{ role: 'system', content: b.system }] : []), { role: 'user', content: b.prompt }];
    let tokens: number[];
    if (b.context?.length) {
      // resume: the held conversation's ids, then the new turn (no second BOS)
      const V = s.backend.vocabSize;
      const bad = (b.context as number[]).findIndex((t) => t < 0 || t >= V);
      if (bad >= 0) throw fieldError(`context[${bad}]`, `token id ${b.context[bad]} is outside the vocabulary [0, ${V})`);
      const tail = text !== null ? await s.tokenizer.encode(text, false) : await s.tokenizer.encode(s.renderChat(msgs), false);
      tokens = [...b.context, ...tail];
    } else tokens = text !== null ? await s.encode({ prompt: text }) : await s.encode({ messages: msgs });
    return generateAndAnswer(state, req, reply, served, tokens, {
      piece: (t) => ({ response: t }),
      final: (t, r) => ({ response: t, context: r.contextIds }),
    });
  });

  app.post('/api/chat', { schema: { body: chatBody } }, async (req, reply) => {
    const b = req.body as Body;
    const served = state.requireModel();
    refuseUnsupported(b, UNSUPPORTED);
    const ms = (b.messages ?? []) as Body[];
    if (ms.length === 0) return loaded(b, served, { message: { role: 'assistant', content: '' } });
    ms.forEach((m, i) => refuseUnsupported(m, { images: [[]], tool_calls: [[]] }, `messages[${i}].`));
    const msgs: ChatMessage[] = ms.map((m) => ({ role: m.role, content: m.content ?? '' }));
    const tokens = await served.session.encode({ messages: msgs, continueFinalMessage: msgs[msgs.length - 1].role === 'assistant' });
    return generateAndAnswer(state, req, reply, served, tokens, {
      piece: (t) => ({ message: { role: 'assistant', content: t } }),
      final: (t) => ({ message: { role: 'assistant', content: t } }),
    });
  });
}
