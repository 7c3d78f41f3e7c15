/**
 * The shapes formats/har-model.ts loadModelHar assumes of a HAR's manifest and ranges.json, checked
 * before they are used. formats/har.ts verifies the archive (checksums, format, version, member
 * list); these checks catch a manifest that is well-formed JSON with intact checksums but wrong
 * field types (another producer, a hand-edited or crafted file), so that it is refused with a
 * FormatError naming the HAR and the field rather than failing later with a TypeError.
 */
import { FormatError } from '../src/core/errors.js';
import { describe, isPlainObject as isObject } from './safetensors.js';

/** ModelConfig fields that must be positive integers (the sizes everything downstream indexes by). */
const CONFIG_SIZES = ['hiddenSize', 'intermediateSize', 'numLayers', 'numHeads', 'numKvHeads', 'headDim', 'vocabSize', 'maxPositionEmbeddings'] as const;

const isPositiveInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v > 0;

/**
 * Checks the manifest fields loadModelHar reads: `config` (an object whose sizes are positive
 * integers and whose `family` is a string), and, when present (not null), `passes` (a list of
 * `{name: string, ...}`), `linears` and `online` (objects), `emulation` (an object of objects),
 * `adapters` (a list of `{name: string, member: string, ...}`), `modelName` and `sourceSha256`
 * (strings).
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
}

/**
 * Checks ranges.json: an object whose `activations` (when present) is an object and `kvCache` a
 * list; `kCacheOffset` (when present) holds `numLayers` lists of `width` numbers.
 * @throws FormatError naming `path` and the field
 */
export function checkRanges(path: string, r: unknown, numLayers: number, width: number): void {
  const bad = (what: string) => new FormatError(path, `ranges.json: ${what}`);
  if (!isObject(r)) throw bad(`must be a JSON object, got ${describe(r)}`);
  if (r.activations != null && !isObject(r.activations)) throw bad(`activations must be an object, got ${describe(r.activations)}`);
  if (r.kvCache != null && !Array.isArray(r.kvCache)) throw bad(`kvCache must be a list, got ${describe(r.kvCache)}`);
  const off = r.kCacheOffset;
  if (off && (!Array.isArray(off) || off.length !== numLayers || off.some((l) => !Array.isArray(l) || l.length !== width || l.some((x) => typeof x !== 'number'))))
    throw bad(`kCacheOffset must hold ${numLayers} layers of ${width} numbers`);
}
