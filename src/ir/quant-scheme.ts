/**
 * The quantization scheme of a model in one summary (weights, activations, KV cache), as the HAR
 * manifest, the HEF header, `inspect` and the eval report state it; and its per-module precision
 * table ({@link precisionOf}) grouped with the bytes each choice costs ({@link precisionGroups}).
 */
import type { Model, ModelConfig } from './model.js';
import { activationPoints, allLinears, lmHead, sharesQuantizedEmbedding, type LinearSpec } from './architectures.js';
import { blobBytes, numGroups } from './quant.js';
import { formatLinearPrecision, type LinearPrecision, type ObserverName, type PointPrecision, type PrecisionTable } from './precision.js';
import { DEFAULT_SETTINGS } from './recipe.js';

export interface QuantSchemeSummary {
  /** bits of the decoder linears (the most common width when a recipe mixes them; 32: float) */
  weightBits: number;
  /** their group size (likewise the most common) */
  weightGroupSize: number;
  weightScheme: 'symmetric' | 'none';
  weightMethod: string;
  activationScheme: 'static-asymmetric-per-tensor-u8' | 'none';
  /** '+k-centered': the K cache holds K − c (passes/k-centering.ts) */
  kvScheme: 'static-asymmetric-per-tensor-u8' | 'static-asymmetric-per-tensor-u8+k-centered' | 'none';
  /** lm_head: 4 or 8 (group-wise) or 32 (float), and its group size (0 when float) */
  lmHeadBits: number;
  lmHeadGroupSize: number;
  /** the tied embedding lookup reads lm_head's quantized table (src/ir/architectures.ts sharesQuantizedEmbedding) */
  embeddingShared: boolean;
}

/** Counts of equal strings, most common first (ties: first seen first). */
function tally(items: string[]): [string, number][] {
  const m = new Map<string, number>();
  for (const s of items) m.set(s, (m.get(s) ?? 0) + 1);
  return [...m].sort((a, b) => b[1] - a[1]);
}

/** Summarises a Model's quantization state. */
export function quantSchemeOf(model: Model): QuantSchemeSummary {
  const headName = lmHead(model.config).name;
  const head = model.quant.linears[headName];
  const lin = Object.entries(model.quant.linears)
    .filter(([n]) => n !== headName)
    .map(([, l]) => l);
  const mix = weightMix(model);
  const main = lin.find((l) => formatLinearPrecision(l as LinearPrecision) === mix[0]?.[0]);
  return {
    weightBits: main ? main.bits : 32,
    weightGroupSize: main ? main.groupSize : 0,
    weightScheme: lin.length ? 'symmetric' : 'none',
    weightMethod: lin.length ? [...new Set(lin.map((l) => l.method))].join('+') : 'none',
    activationScheme: Object.keys(model.quant.activations).length ? 'static-asymmetric-per-tensor-u8' : 'none',
    kvScheme: !model.quant.kvCache.length ? 'none' : model.quant.kCacheOffset ? 'static-asymmetric-per-tensor-u8+k-centered' : 'static-asymmetric-per-tensor-u8',
    lmHeadBits: head ? head.bits : 32,
    lmHeadGroupSize: head ? head.groupSize : 0,
    embeddingShared: sharesQuantizedEmbedding(model),
  };
}

/**
 * The precisions of the decoder linears (float ones included) and how many have each, most common
 * first: one entry for a uniform model, e.g. [["W4 g32 gptq", 30], ["W8 g32 gptq", 5]] for a recipe's.
 * (The summary above states the most common one; the HEF header has no field for the rest yet.)
 */
export function weightMix(model: Pick<Model, 'config' | 'quant'>): [string, number][] {
  const headName = lmHead(model.config).name;
  const text = (name: string) => (model.quant.linears[name] ? formatLinearPrecision(model.quant.linears[name] as LinearPrecision) : 'float');
  return tally(
    allLinears(model.config)
      .filter((s) => s.name !== headName)
      .map((s) => text(s.name)),
  );
}

/** What {@link precisionOf} reads of a Model (a HAR's manifest and ranges give the same). */
export type PrecisionSource = Pick<Model, 'config' | 'passes' | 'precision'> & { quant: Pick<Model['quant'], 'linears' | 'activations' | 'kvCache'> };

/**
 * A model's per-module precision table: the recipe's (`model.precision`) when it was quantized with
 * one, else the uniform one its quantization state implies — each linear as quantized (float when not),
 * activation points and KV caches 8-bit when calibrated (32, float, when not), with the observer its
 * calibrate pass recorded.
 */
export function precisionOf(model: PrecisionSource): PrecisionTable {
  if (model.precision) return model.precision;
  const cfg = model.config;
  const cal = model.passes.find((p) => p.name === 'calibrate'); // passes/calibrate-ranges.ts meta.name
  const observer = (cal?.options.observer as ObserverName | undefined) ?? DEFAULT_SETTINGS.observer;
  const linears: Record<string, LinearPrecision> = {};
  for (const s of allLinears(cfg)) {
    const q = model.quant.linears[s.name];
    linears[s.name] = q ? { bits: q.bits, groupSize: q.groupSize, method: q.method as LinearPrecision['method'] } : { bits: 32, groupSize: 0, method: 'none' };
  }
  return { linears, ...uniformPoints(cfg, (p) => p in model.quant.activations, model.quant.kvCache.length > 0, observer) };
}

/**
 * Activation points and KV caches at today's scheme: 8-bit where `quantized(point)` / `kvQuantized`,
 * else 32 (float), all with `observer`.
 */
export function uniformPoints(cfg: ModelConfig, quantized: (point: string) => boolean, kvQuantized: boolean, observer: ObserverName): Pick<PrecisionTable, 'activations' | 'kvCache'> {
  const point = (q: boolean): PointPrecision => ({ bits: q ? 8 : 32, observer });
  return {
    activations: Object.fromEntries(activationPoints(cfg).map((p) => [p, point(quantized(p))])),
    kvCache: Array.from({ length: cfg.numLayers }, () => ({ k: point(kvQuantized), v: point(kvQuantized) })),
  };
}

/**
 * Bytes a linear's weights take at precision `p`: quantized, `.qweight` N·n_blocks·group·bits/8 plus
 * float32 `.scales` N·n_blocks·4 (a ragged last group is padded); float, N·K·4 (float32, as compiled).
 * Biases are not counted.
 */
export function linearBytes(spec: Pick<LinearSpec, 'inFeatures' | 'outFeatures'>, p: LinearPrecision): number {
  const { outFeatures: N, inFeatures: K } = spec;
  if (p.bits === 32) return N * K * 4;
  const nb = numGroups(K, p.groupSize);
  return N * nb * (blobBytes(p.groupSize, p.bits) + 4);
}

/**
 * Nominal bits per weight of the quantized decoder linears, bits + 32/group size, averaged over
 * their weights (5.0 for uniform W4 g32; ragged groups are not counted); 0 when none is quantized.
 */
export function nominalBitsPerWeight(table: PrecisionTable, cfg: ModelConfig): number {
  let bits = 0;
  let n = 0;
  for (const s of allLinears(cfg)) {
    const p = table.linears[s.name];
    if (s.role === 'lm_head' || !p || p.bits === 32) continue;
    bits += (p.bits + 32 / p.groupSize) * s.outFeatures * s.inFeatures;
    n += s.outFeatures * s.inFeatures;
  }
  return n ? bits / n : 0;
}

/** One row of {@link precisionGroups}: modules of one role at one precision. */
export interface PrecisionGroup {
  kind: 'linear' | 'activation' | 'kv';
  /** q_proj, …, lm_head; attn_in, …, lm_head_in; k_cache, v_cache */
  role: string;
  count: number;
  /** "W4 g32 gptq", "float", "A8 mse", "KV8 mse", "A32 (float)" */
  precision: string;
  /**
   * bytes the group takes on the device: weights ({@link linearBytes}; a lm_head shared with the
   * embedding counted once), KV caches at `maxContext` tokens; 0 for activation points
   */
  bytes: number;
  /** linears: weights in the group (for bits per weight = bytes·8/weights) */
  weights?: number;
  /** e.g. that lm_head's table is also the embedding's */
  note?: string;
}

const pointText = (prefix: string, p: PointPrecision, observer: boolean) => (p.bits === 32 ? `${prefix}32 (float)` : `${prefix}${p.bits}${observer ? ` ${p.observer}` : ''}`);

/**
 * The table grouped by role and precision, in model order (linears, activation points, KV caches):
 * what `inspect` prints as e.g. "down_proj ×5: W8 g32 gptq, 65.0 KiB".
 * @param maxContext KV-cache capacity in tokens the KV bytes are counted at
 * @param opts.observers name the points' observers (default true; a HEF does not record them)
 * @param opts.sharedEmbedding the tied embedding is looked up in lm_head's quantized table (noted on lm_head's group)
 */
export function precisionGroups(table: PrecisionTable, cfg: ModelConfig, maxContext: number, opts: { observers?: boolean; sharedEmbedding?: boolean } = {}): PrecisionGroup[] {
  const observers = opts.observers ?? true;
  const groups = new Map<string, PrecisionGroup>();
  const add = (kind: PrecisionGroup['kind'], role: string, precision: string, bytes: number, weights?: number) => {
    const key = `${kind}|${role}|${precision}`;
    const g = groups.get(key) ?? { kind, role, count: 0, precision, bytes: 0, ...(weights !== undefined ? { weights: 0 } : {}) };
    g.count++;
    g.bytes += bytes;
    if (weights !== undefined) g.weights! += weights;
    groups.set(key, g);
  };
  for (const s of allLinears(cfg)) {
    const p = table.linears[s.name];
    if (p) add('linear', s.role, formatLinearPrecision(p), linearBytes(s, p), s.outFeatures * s.inFeatures);
    if (p && s.role === 'lm_head' && opts.sharedEmbedding) groups.get(`linear|lm_head|${formatLinearPrecision(p)}`)!.note = 'also the embedding table';
  }
  for (const [name, p] of Object.entries(table.activations)) add('activation', name.slice(name.lastIndexOf('.') + 1), pointText('A', p, observers), 0);
  const cacheBytes = (p: PointPrecision) => cfg.numKvHeads * cfg.headDim * maxContext * (p.bits / 8);
  for (const kv of table.kvCache) {
    add('kv', 'k_cache', pointText('KV', kv.k, observers), cacheBytes(kv.k));
    add('kv', 'v_cache', pointText('KV', kv.v, observers), cacheBytes(kv.v));
  }
  return [...groups.values()];
}
