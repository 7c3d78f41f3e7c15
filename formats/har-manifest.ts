/**
 * The shapes formats/har-model.ts loadModelHar assumes of a HAR's manifest and ranges.json, checked
 * before they are used. formats/har.ts verifies the archive (checksums, format, version, member
 * list); these checks catch a manifest that is well-formed JSON with intact checksums but wrong
 * field types (another producer, a hand-edited or crafted file), so that it is refused with a
 * FormatError naming the HAR and the field rather than failing later with a TypeError.
 */
import { FormatError } from '../src/core/errors.js';
import { OBSERVER_NAMES, POINT_BITS, WEIGHT_BITS } from '../src/ir/precision.js';
import { describe, isPlainObject as isObject } from './safetensors.js';

/** ModelConfig fields that must be positive integers (the sizes everything downstream indexes by). */
const CONFIG_SIZES = ['hiddenSize', 'intermediateSize', 'numLayers', 'numHeads', 'numKvHeads', 'headDim', 'vocabSize', 'maxPositionEmbeddings'] as const;

const isPositiveInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v > 0;

/**
 * Checks the manifest fields loadModelHar reads: `config` (an object whose sizes are positive
 * integers and whose `family` is a string), and, when present (not null), `passes` (a list of
 * `{name: string, ...}`), `linears` and `online` (objects), `emulation` (an object of objects),
 * `adapters` (a list of `{name: string, member: string, ...}`), `modelName` and `sourceSha256`
 * (strings), `precision` (a per-module precision table, {@link precisionTableProblem}; its module
 * names are not checked against the config).
 * @param path the HAR, named in errors
 * @throws FormatError naming `path` and the field
 */
export function checkModelManifest(path: string, m: Record<string, unknown>): void {
  const bad = (field: string, want: string, got: unknown) => new FormatError(path, `manifest field '${field}' must be ${want}, got ${describe(got)}`);
  const c = m.config;
  if (!isObject(c)) throw bad('config', 'an object (the normalised model config)', c);
  for (const k of CONFIG_SIZES) if (!isPositiveInt(c[k])) throw bad(`config.${k}`, 'a positive integer', c[k]);
  if (typeof c.family !== 'string') throw bad('config.family', 'a string', c.family);
  const optional = (field: string, ok: (v: unknown) => boolean, want: string) => {
    if (m[field] != null && !ok(m[field])) throw bad(field, want, m[field]);
  };
  const listOf = (keys: string[]) => (v: unknown) => Array.isArray(v) && v.every((e) => isObject(e) && keys.every((k) => typeof e[k] === 'string'));
  optional('passes', listOf(['name']), 'a list of {name, options}');
  optional('linears', isObject, 'an object (linear name -> quantization)');
  optional('online', isObject, 'an object');
  optional('emulation', (v) => isObject(v) && Object.values(v).every(isObject), 'an object of emulation levels');
  optional('adapters', listOf(['name', 'member']), 'a list of {name, member, ...}');
  for (const field of ['modelName', 'sourceSha256']) optional(field, (v) => typeof v === 'string', 'a string');
  if (m.precision != null) {
    const problem = precisionTableProblem(m.precision, c.numLayers as number);
    if (problem) throw new FormatError(path, `manifest field 'precision' ${problem}`);
  }
}

const isPoint = (p: unknown) => isObject(p) && (POINT_BITS as readonly unknown[]).includes(p.bits) && (OBSERVER_NAMES as readonly unknown[]).includes(p.observer);

/**
 * What is wrong with a stored precision table (src/ir/precision.ts PrecisionTable), or undefined:
 * `linears` {name: {bits 4|8|32, groupSize (a non-negative integer), method (a string)}},
 * `activations` {name: {bits 8|16|32, observer}}, `kvCache` a list of `numLayers` {k, v} of those.
 */
export function precisionTableProblem(t: unknown, numLayers: number): string | undefined {
  if (!isObject(t)) return `must be an object, got ${describe(t)}`;
  if (!isObject(t.linears)) return 'needs linears: an object';
  for (const [n, p] of Object.entries(t.linears))
    if (!isObject(p) || !(WEIGHT_BITS as readonly unknown[]).includes(p.bits) || !Number.isSafeInteger(p.groupSize) || (p.groupSize as number) < 0 || typeof p.method !== 'string')
      return `linears['${n}'] must be {bits: 4|8|32, groupSize, method}, got ${describe(p)}`;
  if (!isObject(t.activations)) return 'needs activations: an object';
  for (const [n, p] of Object.entries(t.activations)) if (!isPoint(p)) return `activations['${n}'] must be {bits: 8|16|32, observer}, got ${describe(p)}`;
  if (!Array.isArray(t.kvCache) || t.kvCache.length !== numLayers) return `needs kvCache: a list of ${numLayers} layers`;
  const bad = t.kvCache.findIndex((l) => !isObject(l) || !isPoint(l.k) || !isPoint(l.v));
  if (bad >= 0) return `kvCache[${bad}] must be {k, v} of {bits: 8|16|32, observer}`;
  return undefined;
}

/**
 * What is wrong with one stored range (src/ir/quant.ts QdqParams), or undefined: `scale` a positive
 * finite number, `bits` absent (uint8) or 16 (uint16), `zeroPoint` an integer in [0, 255] or, with
 * `bits: 16`, [0, 65535].
 */
export function qparamsProblem(p: unknown): string | undefined {
  if (!isObject(p)) return `must be {scale, zeroPoint} or {scale, zeroPoint, bits: 16}, got ${describe(p)}`;
  if (p.bits !== undefined && p.bits !== 16) return `bits must be absent (8-bit) or 16, got ${describe(p.bits)}`;
  if (typeof p.scale !== 'number' || !Number.isFinite(p.scale) || p.scale <= 0) return `scale must be a positive finite number, got ${describe(p.scale)}`;
  const qmax = p.bits === 16 ? 65535 : 255;
  if (!Number.isInteger(p.zeroPoint) || (p.zeroPoint as number) < 0 || (p.zeroPoint as number) > qmax)
    return `zeroPoint must be an integer in [0, ${qmax}] for a ${p.bits === 16 ? 16 : 8}-bit range, got ${describe(p.zeroPoint)}`;
  return undefined;
}

/**
 * Checks ranges.json: an object whose `activations` (when present) maps point names to ranges and
 * `kvCache` (when present) is a list of {k, v} ranges ({@link qparamsProblem}: a 16-bit range says
 * `bits: 16` and may have a zero point up to 65535, an 8-bit one up to 255) or null (a float layer
 * beside quantized ones, src/ir/kv-quant.ts); `kCacheOffset` (when
 * present) holds `numLayers` lists of `width` numbers.
 * @throws FormatError naming `path` and the field
 */
export function checkRanges(path: string, r: unknown, numLayers: number, width: number): void {
  const bad = (what: string) => new FormatError(path, `ranges.json: ${what}`);
  if (!isObject(r)) throw bad(`must be a JSON object, got ${describe(r)}`);
  if (r.activations != null && !isObject(r.activations)) throw bad(`activations must be an object, got ${describe(r.activations)}`);
  if (r.kvCache != null && !Array.isArray(r.kvCache)) throw bad(`kvCache must be a list, got ${describe(r.kvCache)}`);
  for (const [n, p] of Object.entries(r.activations ?? {})) {
    const problem = qparamsProblem(p);
    if (problem) throw bad(`activations['${n}'] ${problem}`);
  }
  for (const [i, l] of ((r.kvCache ?? []) as unknown[]).entries()) {
    if (l === null) continue; // a float layer
    if (!isObject(l)) throw bad(`kvCache[${i}] must be {k, v} or null, got ${describe(l)}`);
    for (const which of ['k', 'v'] as const) {
      const problem = qparamsProblem(l[which]);
      if (problem) throw bad(`kvCache[${i}].${which} ${problem}`);
    }
  }
  const off = r.kCacheOffset;
  if (off && (!Array.isArray(off) || off.length !== numLayers || off.some((l) => !Array.isArray(l) || l.length !== width || l.some((x) => typeof x !== 'number'))))
    throw bad(`kCacheOffset must hold ${numLayers} layers of ${width} numbers`);
}
