/**
 * The model a server serves, and how request `model` fields name it: the base model by its id
 * (the HEF's file name without extension, e.g. "stories" for stories.hef; Ollama's "stories:latest"
 * too), each LoRA adapter of the HEF as `<id>:<adapter>` (llama.cpp chooses a LoRA per request,
 * HailoRT fixes it at load; here the model field chooses it, on both APIs).
 */
import type { ModelSession } from '../runtime/session.js';
import type { Executable } from '../ir/executable.js';
import { schemeWidth } from '../ir/quant-scheme.js';
import { UnknownModelError } from './errors.js';

export interface ServedModel {
  session: ModelSession;
  /** the model id: the file name without extension */
  id: string;
  /** the executable, for /api/show details (absent: details left out) */
  exe?: Executable;
  /** ms the model took to load */
  loadMs: number;
  /** file size in bytes (Ollama's `size`) */
  sizeBytes?: number;
  /** when the file was last modified */
  modifiedAt?: Date;
  /** the adapter used when the request names the base model and the server was started with --adapter */
  defaultAdapter?: string | null;
}

/** The HEF's file name without extension: "stories" for /x/stories.hef. */
export function modelIdOf(fileName: string): string {
  const base = fileName.split(/[\\/]/).pop() ?? fileName;
  const dot = base.lastIndexOf('.');
  return dot > 0 ? base.slice(0, dot) : base;
}

/** Every model name the server answers to, base first: `stories`, `stories:wiki`, ... */
export function modelNames(m: ServedModel): string[] {
  return [m.id, ...m.session.backend.adapters.map((a) => `${m.id}:${a}`)];
}

/**
 * The adapter a request's model field selects (null: the base model, or the --adapter default).
 * @throws UnknownModelError (404) for any other name
 */
export function resolveModel(m: ServedModel, name: string): string | null {
  if (name === m.id || name === `${m.id}:latest`) return m.defaultAdapter ?? null;
  if (name.startsWith(`${m.id}:`)) {
    const a = name.slice(m.id.length + 1);
    if (m.session.backend.adapters.includes(a)) return a;
  }
  throw new UnknownModelError(name, modelNames(m));
}

/** Parameters of the model (embeddings, attention, MLP, norms; lm_head when not tied), from its config. */
export function parameterCount(exe: Executable): number {
  const c = exe.config;
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const perLayer = c.hiddenSize * (q + 2 * kv) + q * c.hiddenSize + 3 * c.hiddenSize * c.intermediateSize + 2 * c.hiddenSize;
  const embed = c.vocabSize * c.hiddenSize * (c.tieWordEmbeddings ? 1 : 2);
  return embed + c.numLayers * perLayer + c.hiddenSize;
}

/** 260000 -> "260K", 1.54e9 -> "1.5B" (Ollama's parameter_size). */
export function humanCount(n: number): string {
  for (const [unit, v] of [['B', 1e9], ['M', 1e6], ['K', 1e3]] as const) if (n >= v) return `${Number((n / v).toPrecision(n / v >= 100 ? 3 : 2))}${unit}`;
  return String(n);
}

/** `prefix + width`, or '' for no width. */
const prefixed = (prefix: string, width: string) => (width ? prefix + width : '');

/** Ollama's `details` object of a model (docs/api.md, "List Local Models"). */
export function ollamaDetails(m: ServedModel): Record<string, unknown> {
  const exe = m.exe;
  const family = exe?.config.family ?? 'unknown';
  const q = exe?.quant;
  return {
    parent_model: '',
    format: 'hef',
    family,
    families: [family],
    parameter_size: exe ? humanCount(parameterCount(exe)) : '',
    quantization_level: q ? `W${q.weightBits}${prefixed('A', schemeWidth(q.activationScheme))}${prefixed('KV', schemeWidth(q.kvScheme))}` : '', // e.g. W4A8KV8, W4A16KV16, W4A8KVmix
  };
}
