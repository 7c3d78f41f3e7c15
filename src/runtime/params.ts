/**
 * Generation parameters: one typed set shared by `run`, `chat`, `serve` (both APIs) and the library,
 * with the defaults and the validation every entry point applies. Names follow the field's usage
 * (llama.cpp / Ollama options, HailoRT GenAI's LLMGeneratorParams); the server maps the OpenAI and
 * Ollama spellings onto them.
 */
import { UsageError } from '../core/errors.js';
import type { PenaltyOptions, SamplingOptions } from './sampling.js';

export interface GenerationParams extends Required<SamplingOptions>, PenaltyOptions {
  /** most tokens to generate (≥ 1) */
  maxTokens: number;
  /** seed of the sampling PRNG (an unsigned 32-bit integer) */
  seed: number;
  /**
   * stop strings: generation ends at the first occurrence of any, which is not part of the text
   * returned (OpenAI `stop`, Ollama `options.stop`)
   */
  stop: string[];
  /**
   * stop token ids: generation ends when one is chosen (it is not returned); null means the model's
   * end-of-sequence ids (generation_config.json, config.json, tokenizer_config.json)
   */
  stopTokenIds: number[] | null;
}

/** llama.cpp's and Ollama's defaults, except `repeatPenalty` 1 (off, as in llama.cpp) and `minP` 0. */
export const DEFAULT_PARAMS: Readonly<GenerationParams> = Object.freeze({
  maxTokens: 128,
  seed: 0,
  temperature: 0.8,
  topK: 40,
  topP: 0.95,
  minP: 0,
  repeatPenalty: 1,
  repeatLastN: 64,
  frequencyPenalty: 0,
  presencePenalty: 0,
  stop: [],
  stopTokenIds: null,
});

/**
 * A bad generation parameter. `field` is the parameter's name as the caller spelled it (the server
 * puts it in its 400 body; the CLI prints the message).
 */
export class ParamError extends UsageError {
  constructor(
    readonly field: string,
    problem: string,
  ) {
    super(`${field}: ${problem}`);
  }
}

type Rule = { min?: number; max?: number; integer?: boolean };
const RULES: Record<keyof Omit<GenerationParams, 'stop' | 'stopTokenIds'>, Rule> = {
  maxTokens: { min: 1, max: 1 << 20, integer: true },
  seed: { min: 0, max: 2 ** 32 - 1, integer: true },
  temperature: { min: 0, max: 100 },
  topK: { min: 0, max: 1 << 30, integer: true },
  topP: { min: 0, max: 1 },
  minP: { min: 0, max: 1 },
  repeatPenalty: { min: 0, max: 100 },
  repeatLastN: { min: -1, max: 1 << 30, integer: true },
  frequencyPenalty: { min: -2, max: 2 },
  presencePenalty: { min: -2, max: 2 },
};

/** At most this many stop strings, each at most this many UTF-16 code units (OpenAI allows 4). */
export const MAX_STOP_STRINGS = 16;
export const MAX_STOP_LENGTH = 256;

/**
 * Fills the defaults and checks every value.
 * @param given parameters by their GenerationParams names (undefined: the default)
 * @param names how the caller spells each field in its messages (e.g. `{ maxTokens: 'num_predict' }`)
 * @throws ParamError naming the first bad field: a non-finite or out-of-range number, a fraction
 *   where an integer is needed, too many or empty stop strings, a negative stop token id
 */
export function resolveParams(
  given: Partial<GenerationParams>,
  names: Partial<Record<keyof GenerationParams, string>> = {},
  defaults: Readonly<GenerationParams> = DEFAULT_PARAMS,
): GenerationParams {
  const out: GenerationParams = { ...defaults, stop: [...defaults.stop], stopTokenIds: defaults.stopTokenIds && [...defaults.stopTokenIds] };
  for (const [key, rule] of Object.entries(RULES) as [keyof typeof RULES, Rule][]) {
    const v = given[key];
    if (v === undefined) continue;
    const field = names[key] ?? key;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new ParamError(field, `must be a finite number, got ${JSON.stringify(v) ?? String(v)}`);
    if (rule.integer && !Number.isInteger(v)) throw new ParamError(field, `must be an integer, got ${v}`);
    if ((rule.min !== undefined && v < rule.min) || (rule.max !== undefined && v > rule.max))
      throw new ParamError(field, `must be in [${rule.min}, ${rule.max}], got ${v}`);
    out[key] = v;
  }
  if (given.stop !== undefined) {
    const field = names.stop ?? 'stop';
    if (!Array.isArray(given.stop) || given.stop.some((s) => typeof s !== 'string')) throw new ParamError(field, 'must be a list of strings');
    if (given.stop.length > MAX_STOP_STRINGS) throw new ParamError(field, `at most ${MAX_STOP_STRINGS} stop strings, got ${given.stop.length}`);
    for (const s of given.stop) {
      if (s.length === 0) throw new ParamError(field, 'a stop string must not be empty');
      if (s.length > MAX_STOP_LENGTH) throw new ParamError(field, `a stop string is at most ${MAX_STOP_LENGTH} characters, got ${s.length}`);
    }
    out.stop = [...given.stop];
  }
  if (given.stopTokenIds !== undefined) {
    const field = names.stopTokenIds ?? 'stopTokenIds';
    const ids = given.stopTokenIds;
    if (ids !== null && (!Array.isArray(ids) || ids.some((t) => !Number.isInteger(t) || t < 0)))
      throw new ParamError(field, 'must be a list of non-negative integer token ids');
    out.stopTokenIds = ids && [...ids];
  }
  return out;
}
