/**
 * The OpenAI-compatible routes (OpenAI API reference: "Models", "Chat Completions", "Completions
 * (Legacy)"; llama.cpp's server README for the extensions top_k, min_p, repeat_penalty):
 *
 *   GET  /v1/models, /v1/models/:model
 *   POST /v1/chat/completions   messages -> the chat template -> one answer
 *   POST /v1/completions        a prompt (text or token ids) -> its continuation
 *
 * Both stream as server-sent events when `stream` is true: `data: <chunk JSON>\n\n` per piece, the
 * first delta carrying role "assistant", the last choice chunk a finish_reason, with
 * `stream_options.include_usage` a final chunk with `choices: []` and the usage, then
 * `data: [DONE]`. Extensions: `context_id` (or the X-Edgellm-Context header) generates on a named
 * context; `usage.prompt_tokens_details.cached_tokens` counts the prompt tokens taken from a cache.
 */
import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ChatMessage } from '../../formats/chat-template.js';
import type { GenerationParams } from '../runtime/params.js';
import type { GenerateResult } from '../runtime/session.js';
import type { ServeState } from './state.js';
import { modelNames, resolveModel, type ServedModel } from './model.js';
import { checkPromptFits, LazyStream, runJob } from './generation.js';
import { errorBody, fieldError, toHttpError } from './errors.js';
import { anything, bool, checkParams, contextIdSchema, defined, int, modelSchema, num, refuseUnsupported, stopSchema, str, requestedContext } from './schema.js';

/** Sampling fields common to both generation routes (OpenAI's, then llama.cpp's extensions). */
const sampling = {
  model: modelSchema,
  max_tokens: int,
  temperature: num,
  top_p: num,
  frequency_penalty: num,
  presence_penalty: num,
  stop: stopSchema,
  seed: int,
  stream: bool,
  stream_options: { type: ['object', 'null'], additionalProperties: false, properties: { include_usage: { type: 'boolean' } } },
  n: int,
  user: { type: ['string', 'null'] },
  top_k: int,
  min_p: num,
  repeat_penalty: num,
  repeat_last_n: int,
  context_id: contextIdSchema,
  // defined by OpenAI, refused unless off (see refuseUnsupported)
  logprobs: anything,
  logit_bias: anything,
} as const;

const textPart = { type: 'object', required: ['type', 'text'], additionalProperties: false, properties: { type: { const: 'text' }, text: str } } as const;
const message = {
  type: 'object',
  required: ['role'],
  additionalProperties: false,
  properties: {
    role: { type: 'string', enum: ['system', 'developer', 'user', 'assistant', 'tool'] },
    content: { anyOf: [str, { type: 'array', items: textPart, maxItems: 1024 }, { type: 'null' }] },
    name: { type: 'string', maxLength: 256 },
    tool_calls: anything,
    tool_call_id: anything,
    refusal: anything,
  },
} as const;

const chatBody = {
  type: 'object',
  required: ['model', 'messages'],
  additionalProperties: false,
  properties: {
    ...sampling,
    messages: { type: 'array', items: message, maxItems: 4096 },
    max_completion_tokens: int,
    top_logprobs: anything,
    tools: anything,
    tool_choice: anything,
    parallel_tool_calls: anything,
    response_format: anything,
    modalities: anything,
    audio: anything,
    prediction: anything,
    reasoning_effort: anything,
    functions: anything,
    function_call: anything,
    store: anything,
    metadata: anything,
    service_tier: anything,
  },
} as const;

const completionBody = {
  type: 'object',
  required: ['model', 'prompt'],
  additionalProperties: false,
  properties: {
    ...sampling,
    prompt: {
      anyOf: [
        str,
        { type: 'array', items: { type: 'integer' }, minItems: 1, maxItems: 1 << 20 },
        { type: 'array', items: str, minItems: 1, maxItems: 1 },
        { type: 'array', items: { type: 'array', items: { type: 'integer' }, minItems: 1 }, minItems: 1, maxItems: 1 },
      ],
    },
    echo: anything,
    suffix: anything,
    best_of: anything,
  },
} as const;

type Body = Record<string, any>;

/** OpenAI fields → GenerationParams, and the names to report errors under. */
function paramsOf(b: Body, served: ServedModel): Partial<GenerationParams> {
  const maxField = b.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens';
  const stop = typeof b.stop === 'string' ? [b.stop] : b.stop;
  const p = defined({
    maxTokens: b.max_completion_tokens ?? b.max_tokens ?? served.session.capacity,
    temperature: b.temperature,
    topP: b.top_p,
    topK: b.top_k,
    minP: b.min_p,
    frequencyPenalty: b.frequency_penalty,
    presencePenalty: b.presence_penalty,
    repeatPenalty: b.repeat_penalty,
    repeatLastN: b.repeat_last_n,
    seed: b.seed,
    stop,
  }) as Partial<GenerationParams>;
  return checkParams(p, {
    maxTokens: maxField,
    topP: 'top_p',
    topK: 'top_k',
    minP: 'min_p',
    frequencyPenalty: 'frequency_penalty',
    presencePenalty: 'presence_penalty',
    repeatPenalty: 'repeat_penalty',
    repeatLastN: 'repeat_last_n',
  });
}

const finishReason = (r: GenerateResult) => (r.status === 'end' || r.status === 'aborted' ? 'stop' : 'length');
const usageOf = (r: GenerateResult) => ({
  prompt_tokens: r.promptTokens,
  completion_tokens: r.tokens.length,
  total_tokens: r.promptTokens + r.tokens.length,
  prompt_tokens_details: { cached_tokens: r.cachedTokens },
});
const sse = (o: unknown) => `data: ${JSON.stringify(o)}\n\n`;

/** Chat messages as the session takes them: text parts joined, "developer" as "system". */
function chatMessages(ms: Body[]): ChatMessage[] {
  return ms.map((m, i) => {
    if (m.tool_calls != null || m.tool_call_id != null) throw fieldError(`messages[${i}].${m.tool_calls != null ? 'tool_calls' : 'tool_call_id'}`, 'tools are not supported by edgellm', 'unsupported_field');
    const c = m.content;
    const content = typeof c === 'string' ? c : Array.isArray(c) ? c.map((p: Body) => p.text).join('') : '';
    return { role: m.role === 'developer' ? 'system' : m.role, content };
  });
}

interface Kind {
  object: string;
  chunkObject: string;
  idPrefix: string;
  /** the choice of a whole answer / of a streamed piece (text null: the first, role-only chunk) */
  choice(text: string, r: GenerateResult): Record<string, unknown>;
  piece(text: string | null, finish: string | null): Record<string, unknown>;
}

const CHAT: Kind = {
  object: 'chat.completion',
  chunkObject: 'chat.completion.chunk',
  idPrefix: 'chatcmpl-',
  choice: (text, r) => ({ index: 0, message: { role: 'assistant', content: text, refusal: null }, logprobs: null, finish_reason: finishReason(r) }),
  piece: (text, finish) => ({ index: 0, delta: finish !== null ? {} : text === null ? { role: 'assistant', content: '' } : { content: text }, logprobs: null, finish_reason: finish }),
};

const TEXT: Kind = {
  object: 'text_completion',
  chunkObject: 'text_completion',
  idPrefix: 'cmpl-',
  choice: (text, r) => ({ index: 0, text, logprobs: null, finish_reason: finishReason(r) }),
  piece: (text, finish) => ({ index: 0, text: text ?? '', logprobs: null, finish_reason: finish }),
};

async function complete(state: ServeState, req: FastifyRequest, reply: FastifyReply, kind: Kind, tokens: (served: ServedModel) => Promise<number[]>): Promise<unknown> {
  const b = req.body as Body;
  const served = state.requireModel();
  refuseUnsupported(b, { n: [1], logprobs: [false], logit_bias: [{}], echo: [false], suffix: [''], best_of: [1], top_logprobs: [0], tools: [[]], tool_choice: ['none'], response_format: [{ type: 'text' }], functions: [[]], function_call: ['none'], audio: [], prediction: [], modalities: [['text']], parallel_tool_calls: [true, false], reasoning_effort: [] });
  const adapter = resolveModel(served, b.model);
  const params = paramsOf(b, served);
  const context = requestedContext(req, b.context_id);
  const ids = await tokens(served);
  checkPromptFits(served, ids);
  const id = kind.idPrefix + randomUUID().replace(/-/g, '');
  const created = Math.floor(Date.now() / 1000);
  const job = { api: 'openai' as const, served, modelName: b.model, adapter, tokens: ids, params, context };
  if (!b.stream) {
    const { result } = await runJob(state, req, reply, job);
    return { id, object: kind.object, created, model: b.model, system_fingerprint: null, choices: [kind.choice(result.text, result)], usage: usageOf(result) };
  }
  const withUsage = b.stream_options?.include_usage === true;
  const chunk = (choices: unknown[], usage?: unknown) => sse({ id, object: kind.chunkObject, created, model: b.model, system_fingerprint: null, choices, ...(withUsage ? { usage: usage ?? null } : {}) });
  const out = new LazyStream(reply, 'text/event-stream; charset=utf-8');
  const opening = () => (kind === CHAT && !out.started ? chunk([kind.piece(null, null)]) : '');
  try {
    const { result } = await runJob(state, req, reply, { ...job, onText: (t) => out.write(opening() + chunk([kind.piece(t, null)])) });
    let tail = opening() + chunk([kind.piece(kind === CHAT ? null : '', finishReason(result))]);
    if (withUsage) tail += chunk([], usageOf(result));
    out.end(tail + 'data: [DONE]\n\n');
  } catch (e) {
    if (!out.started) throw e;
    out.end(sse(errorBody(toHttpError(e), 'openai')) + 'data: [DONE]\n\n');
  }
  return reply;
}

/** Registers the OpenAI routes on `app`. */
export function openaiRoutes(app: FastifyInstance, state: ServeState): void {
  const modelObject = (id: string, served: ServedModel) => ({
    id,
    object: 'model',
    created: Math.floor((served.modifiedAt?.getTime() ?? Date.now()) / 1000),
    owned_by: 'edgellm',
  });

  app.get('/v1/models', async () => {
    const served = state.requireModel();
    return { object: 'list', data: modelNames(served).map((n) => modelObject(n, served)) };
  });

  app.get<{ Params: { model: string } }>('/v1/models/:model', async (req) => {
    const served = state.requireModel();
    resolveModel(served, req.params.model);
    return modelObject(req.params.model, served);
  });

  app.post('/v1/chat/completions', { schema: { body: chatBody } }, (req, reply) =>
    complete(state, req, reply, CHAT, (served) => {
      const ms = chatMessages((req.body as Body).messages);
      if (ms.length === 0) throw fieldError('messages', 'at least one message is needed');
      return served.session.encode({ messages: ms, continueFinalMessage: ms[ms.length - 1].role === 'assistant' });
    }),
  );

  app.post('/v1/completions', { schema: { body: completionBody } }, (req, reply) =>
    complete(state, req, reply, TEXT, async (served) => {
      let p = (req.body as Body).prompt;
      if (Array.isArray(p) && (typeof p[0] === 'string' || Array.isArray(p[0]))) p = p[0];
      const ids: number[] = typeof p === 'string' ? await served.session.encode({ prompt: p }) : p;
      const V = served.session.backend.vocabSize;
      const bad = ids.findIndex((t) => t < 0 || t >= V);
      if (bad >= 0) throw fieldError(`prompt[${bad}]`, `token id ${ids[bad]} is outside the vocabulary [0, ${V})`);
      return ids;
    }),
  );
}
