/**
 * The quantization scheme of a model in one summary (weights, activations, KV cache), as the HAR
 * manifest, the HEF header, `inspect` and the eval report state it; and its per-module precision
 * table ({@link precisionOf}) grouped with the bytes each choice costs ({@link precisionGroups}).
 */
import type { Model, ModelConfig } from './model.js';
import { activationPoints, allLinears, lmHead, sharesQuantizedEmbedding, type LinearSpec } from './architectures.js';
import { blobBytes, numGroups, qdqBitsOf } from './quant.js';
import { kvRanges } from './kv-quant.js';
import { formatLinearPrecision, type LinearPrecision, type ObserverName, type PointPrecision, type PrecisionTable } from './precision.js';
import { DEFAULT_SETTINGS } from './recipe.js';

/**
 * Static asymmetric per-tensor QDQ (ONNX QuantizeLinear/DequantizeLinear semantics) at 8 bits (uint8),
 * 16 bits (uint16, com.microsoft QDQ), or at several widths ('mixed': the precision table, HEF
 * `precision_json` / HAR manifest `precision`, gives each point's).
 */
export type PointScheme = 'static-asymmetric-per-tensor-u8' | 'static-asymmetric-per-tensor-u16' | 'static-asymmetric-per-tensor-mixed';

export interface QuantSchemeSummary {
  /** bits of the decoder linears (the most common width when a recipe mixes them; 32: float) */
  weightBits: number;
  /** their group size (likewise the most common) */
  weightGroupSize: number;
  weightScheme: 'symmetric' | 'none';
  weightMethod: string;
  /**
   * the width(s) of the quantized activation points: u8, u16, or mixed (8 and 16); float points do
   * not count (a u8 model may keep some points float); 'none' when no point is quantized
   */
  activationScheme: PointScheme | 'none';
  /**
   * the width of every layer's KV cache: u8 (KV8), u16 (KV16), or mixed (layers at different widths,
   * float layers included); 'none' when every layer is float. '+k-centered': the quantized K caches
   * hold K − c (passes/k-centering.ts)
   */
  kvScheme: PointScheme | `${PointScheme}+k-centered` | 'none';
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
    activationScheme: pointScheme(Object.values(model.quant.activations).map(qdqBitsOf)),
    kvScheme: kvSchemeOf(model),
    lmHeadBits: head ? head.bits : 32,
    lmHeadGroupSize: head ? head.groupSize : 0,
    embeddingShared: sharesQuantizedEmbedding(model),
  };
}

/** The scheme of points quantized at `widths` (8, 16; 32 for a float layer of a KV cache): one width, several ('mixed'), or none. */
function pointScheme(widths: number[]): PointScheme | 'none' {
  const w = new Set(widths);
  if (!w.size) return 'none';
  if (w.size > 1) return 'static-asymmetric-per-tensor-mixed';
  return w.has(16) ? 'static-asymmetric-per-tensor-u16' : 'static-asymmetric-per-tensor-u8';
}

/** The KV scheme of a model's ranges (src/ir/kv-quant.ts: per layer KV8, KV16 or null = float). */
function kvSchemeOf(model: Pick<Model, 'quant'>): QuantSchemeSummary['kvScheme'] {
  const ranges = kvRanges(model);
  if (!ranges.length) return 'none';
  const s = pointScheme(ranges.map((e) => (e ? qdqBitsOf(e.k) : 32)));
  return s !== 'none' && model.quant.kCacheOffset ? `${s}+k-centered` : s;
}

/**
 * The width label of a point scheme ({@link QuantSchemeSummary} activationScheme / kvScheme, as a
 * HEF header holds it): '8', '16', 'mix' (several widths), or '' ('none', or a scheme this version
 * does not know), e.g. for `W4A8KV8` or `W4A16KVmix`.
 */
export function schemeWidth(scheme: string): string {
  const m = /^static-asymmetric-per-tensor-(u8|u16|mixed)(\+|$)/.exec(scheme);
  return !m ? '' : m[1] === 'mixed' ? 'mix' : m[1].slice(1);
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
 * one, else the one its quantization state implies — each linear as quantized (float when not),
 * activation points and KV caches at their ranges' width (8, or 16 for ranges with `bits: 16`) when
 * calibrated (32, float, when not: no range, or a null KV entry), with the observer its calibrate pass
 * recorded.
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
  const point = (bits: number): PointPrecision => ({ bits: bits as PointPrecision['bits'], observer });
  const ranges = kvRanges(model);
  const kvBits = (i: number) => (ranges.length ? (ranges[i] ? qdqBitsOf(ranges[i]!.k) : 32) : 32);
  const act = model.quant.activations;
  return {
    linears,
    activations: Object.fromEntries(activationPoints(cfg).map((p) => [p, point(act[p] ? qdqBitsOf(act[p]) : 32)])),
    kvCache: Array.from({ length: cfg.numLayers }, (_, i) => ({ k: point(kvBits(i)), v: point(kvBits(i)) })),
  };
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
