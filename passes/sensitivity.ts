/**
 * Sensitivity analysis (`edgellm analyze`, `quantize --auto-precision`): the KL-divergence from the
 * fp32 model that each quantization choice costs, measured on calibration windows by promoting that
 * one module alone and running the result (candidates and the report: src/ir/sensitivity.ts).
 *
 * For a quantized model Q and its fp32 model F (the HAR's emulation weights: the same basis, folded
 * and rotated like Q):
 *   - reference: F compiled and run on the measurement windows, logits kept ([seqLen, vocab] float32
 *     per window, with their row stats); with `adapter`, F carries Q's adapters and runs that one.
 *   - baseline: Q compiled and run the same way; mean KL(F ‖ Q) over every prediction (src/eval/kld.ts).
 *   - a linear's candidates (W4 g32 → W4 g16, W4 → W8 at its group size): the weight quantized at the
 *     new precision by its own method — GPTQ against the Hessian of the inputs it receives in Q's
 *     quantization (the weight pass is re-run with a hook, passes/gptq-sequential.ts GptqHooks, so H
 *     is the one true-sequential GPTQ used), or RTN — and put in Q in place of the old one.
 *     Q's ranges are kept (a promotion moves the later points' inputs only by the change in its
 *     output), except for a lm_head whose table the embedding shares: there the embedding of every
 *     token changes, so K-cache centering and the ranges are measured again on the candidate.
 *   - an activation point's candidate (A8 → A16): Q with that point's range calibrated at 16 bits on
 *     the calibration windows (passes/calibrate-ranges.ts; ranges are observed on float activations,
 *     so a point's range does not depend on the other points' widths); a layer's KV cache (KV8 →
 *     KV16, K and V together: a layer's cache has one width) likewise.
 * Each candidate model is compiled and run like the baseline; gain = baseline KLD − its KLD. What
 * a candidate costs is the bytes its weights add (src/ir/quant-scheme.ts linearBytes), or its KV
 * cache's second byte per value at `maxContext` (activation points: 0).
 *
 * The promotions measured this way are what `quantize --recipe` would produce for that module when
 * it is the only promotion; several promotions interact (later layers see other inputs), which the
 * final quantization of a chosen recipe accounts for.
 *
 * Cost: one GPTQ run (when Q used GPTQ), one calibration, and one compile + forward over the
 * measurement windows per candidate; memory: the reference logits, windows × seqLen × vocab × 4
 * bytes (stories260K, 16 × 256: 8 MiB).
 */
import type { Model, QParams } from '../src/ir/model.js';
import type { LinearPrecision, PrecisionTable } from '../src/ir/precision.js';
import { formatLinearPrecision } from '../src/ir/precision.js';
import { allLinears, sharesQuantizedEmbedding, type LinearSpec } from '../src/ir/architectures.js';
import { linearBytes, precisionOf } from '../src/ir/quant-scheme.js';
import { quantizeRtn, type PackedWeights, type WeightBits } from '../src/ir/quant.js';
import type { SensitivityCandidate, SensitivityReport, PromotionSettings } from '../src/ir/sensitivity.js';
import { kvCacheBytes } from '../src/ir/executable.js';
import { toFloat32 } from '../src/ir/tensor.js';
import type { RunContext } from '../src/core/context.js';
import { UsageError } from '../src/core/errors.js';
import { compile } from '../src/compiler/compile.js';
import { SimulatorBackend } from '../src/runtime/simulator.js';
import { rowKl, rowStats, type RowStats } from '../src/eval/kld.js';
import { gptqModel } from './gptq-sequential.js';
import { gptq, type GptqOptions } from './gptq.js';
import { calibrateRanges } from './calibrate-ranges.js';
import { centerKCache } from './k-centering.js';
import { linearWeight, setQuantized } from './rtn.js';

export interface SensitivityOptions {
  /** the windows Q was calibrated on (token ids): GPTQ's Hessians and the 16-bit ranges come from them */
  calibration: readonly number[][];
  /** the windows the KLD is measured on (e.g. the first 16 calibration windows) */
  measure: readonly number[][];
  /** KV-cache capacity the device memory is counted at (default: the model's max_position_embeddings) */
  maxContext?: number;
  /** measure Q and F with this adapter of Q's selected (null: the base model) */
  adapter?: string | null;
  /** which promotions to measure (default all three) */
  promotions?: { g16?: boolean; w8?: boolean; a16?: boolean; kv16?: boolean };
  /** onnxruntime intra-op threads of each candidate's session */
  threads?: number;
}

/** The logits of one backend on every window, [seqLen, vocab] each. */
async function windowLogits(m: Model, windows: readonly number[][], adapter: string | null, threads: number | undefined): Promise<Float32Array[]> {
  const prefillLen = Math.max(...windows.map((w) => w.length));
  const backend = await SimulatorBackend.load(compile(m, { prefillLen, maxContext: prefillLen }), { threads });
  try {
    if (adapter !== null) backend.selectAdapter(adapter);
    const out: Float32Array[] = [];
    for (const w of windows) out.push(await backend.forward(backend.newContext(), [...w]));
    return out;
  } finally {
    await backend.dispose();
  }
}

/** Mean KL(reference ‖ model) over every prediction of every window, and its standard error. */
function meanKld(ref: { logits: Float32Array[]; stats: RowStats[][] }, logits: Float32Array[], windows: readonly number[][], V: number): { mean: number; stderr: number } {
  let n = 0;
  let sum = 0;
  let sq = 0;
  windows.forEach((w, wi) => {
    for (let t = 0; t + 1 < w.length; t++) {
      const kl = rowKl(ref.logits[wi], ref.stats[wi][t], logits[wi], rowStats(logits[wi], t * V, V), t * V, V);
      sum += kl;
      sq += kl * kl;
      n++;
    }
  });
  if (!n) throw new UsageError('analyze: the measurement windows hold no prediction (each needs 2 or more tokens)');
  const mean = sum / n;
  return { mean, stderr: n > 1 ? Math.sqrt(Math.max(0, sq / n - mean * mean) / (n - 1)) : 0 };
}

/** The candidate precisions of one linear at precision `p` (W4 only: finer groups, then 8 bits). */
function linearPromotions(p: LinearPrecision, which: { g16: boolean; w8: boolean }): { to: LinearPrecision; settings: PromotionSettings }[] {
  if (p.bits !== 4) return [];
  const out: { to: LinearPrecision; settings: PromotionSettings }[] = [];
  if (which.g16 && p.groupSize > 16) out.push({ to: { ...p, groupSize: 16 }, settings: { group_size: 16 } });
  if (which.w8) out.push({ to: { ...p, bits: 8 }, settings: { weight_bits: 8 } });
  return out;
}

/** Quantizes W at `to` by its method: GPTQ against H (with the pass's solver options), or RTN. */
async function requantize(spec: LinearSpec, W: Float32Array, to: LinearPrecision, H: Float64Array | null, solve: GptqOptions | null, la: Parameters<typeof gptq>[5]): Promise<PackedWeights> {
  const bits = to.bits as WeightBits;
  if (to.method === 'gptq' && H && solve) return (await gptq(W, spec.outFeatures, spec.inFeatures, H, { ...solve, groupSize: to.groupSize, bits }, la)).packed;
  return quantizeRtn(W, spec.outFeatures, spec.inFeatures, to.groupSize, bits);
}

/** `q` with one linear's weights replaced by `packed` (at `to`), its precision table (if any) saying so. */
function withLinear(q: Model, name: string, packed: PackedWeights, to: LinearPrecision): Model {
  const weights = new Map(q.weights);
  const linears = { ...q.quant.linears };
  setQuantized(weights, linears, name, packed, to.method as 'gptq' | 'rtn');
  const precision = q.precision && { ...q.precision, linears: { ...q.precision.linears, [name]: to } };
  return { ...q, weights, quant: { ...q.quant, linears }, ...(precision ? { precision } : {}) };
}

/** `q` with activation point `point` at 16 bits with range `range`, its precision table (if any) saying so. */
function withPoint16(q: Model, point: string, range: QParams): Model {
  const precision = q.precision && { ...q.precision, activations: { ...q.precision.activations, [point]: { ...q.precision.activations[point], bits: 16 as const } } };
  return { ...q, quant: { ...q.quant, activations: { ...q.quant.activations, [point]: range } }, ...(precision ? { precision } : {}) };
}

/** `q` with layer `layer`'s KV cache at 16 bits with ranges `range`, its precision table (if any) saying so. */
function withKv16(q: Model, layer: number, range: { k: QParams; v: QParams }): Model {
  const kvCache = q.quant.kvCache.map((kv, l) => (l === layer ? range : kv));
  const precision = q.precision && { ...q.precision, kvCache: q.precision.kvCache.map((kv, l) => (l === layer ? { k: { ...kv.k, bits: 16 as const }, v: { ...kv.v, bits: 16 as const } } : kv)) };
  return { ...q, quant: { ...q.quant, kvCache }, ...(precision ? { precision } : {}) };
}

/**
 * `m` with what the pipeline measures after the weights done again on it: K-cache centering (when
 * `m` has it) and the ranges of every point at its width in `table` (passes/k-centering.ts,
 * passes/calibrate-ranges.ts).
 */
async function recalibrate(m: Model, table: PrecisionTable, windows: readonly number[][], ctx: RunContext): Promise<Model> {
  // as in the pipeline: centering sees the model before any range (no QDQ), calibration the centred one
  const bare = { ...m, adapters: undefined, quant: { ...m.quant, activations: {}, kvCache: [], kCacheOffset: undefined } };
  const centered = m.quant.kCacheOffset ? await centerKCache(bare, windows, ctx) : { ...m, adapters: undefined };
  const r = await calibrateRanges(centered, windows, { observer: 'mse', activations: true, kvCache: true, precision: { activations: table.activations, kvCache: table.kvCache } }, ctx);
  return { ...m, quant: r.quant };
}

/** Device bytes of a compiled model: its weights (as `inspect` counts a HEF's weights section) plus its KV cache at `maxContext`. */
function deviceBytes(q: Model, maxContext: number): number {
  const exe = compile(q, { prefillLen: 1, maxContext });
  let bytes = 0;
  for (const t of exe.weights.values()) bytes += t.data.byteLength;
  return bytes + kvCacheBytes(exe.kvLayout);
}

/**
 * Measures every candidate promotion of `quantized` (see the module doc).
 * @param quantized Q, as `quantize` wrote it (its recipe's table, or the uniform one, is the start)
 * @param reference F: the fp32 model Q was quantized from, after the same transforms (fold-norms, QuaRot)
 * @throws UsageError when Q has nothing to promote, the adapter is unknown or a window is too short
 */
export async function measureSensitivity(quantized: Model, reference: Model, opts: SensitivityOptions, ctx: RunContext): Promise<SensitivityReport> {
  const cfg = quantized.config;
  const V = cfg.vocabSize;
  const adapter = opts.adapter ?? null;
  const which = { g16: opts.promotions?.g16 ?? true, w8: opts.promotions?.w8 ?? true, a16: opts.promotions?.a16 ?? true, kv16: opts.promotions?.kv16 ?? true };
  if (adapter !== null && !(quantized.adapters ?? []).some((a) => a.name === adapter))
    throw new UsageError(`--adapter ${adapter}: the model has no such adapter (it has: ${(quantized.adapters ?? []).map((a) => a.name).join(', ') || 'none'})`);
  const table: PrecisionTable = precisionOf(quantized);
  const maxContext = opts.maxContext ?? cfg.maxPositionEmbeddings;
  const windows = opts.measure;
  const measureStart = performance.now();

  // the reference's logits, kept for every candidate
  const refModel: Model = adapter !== null ? { ...reference, adapters: quantized.adapters } : reference;
  const refLogits = await windowLogits(refModel, windows, adapter, opts.threads);
  const ref = { logits: refLogits, stats: refLogits.map((l, wi) => Array.from({ length: windows[wi].length }, (_, t) => rowStats(l, t * V, V))) };
  const kldOf = async (m: Model) => meanKld(ref, await windowLogits(m, windows, adapter, opts.threads), windows, V);
  const baseline = await kldOf(quantized);
  ctx.log(`analyze: baseline KLD ${baseline.mean.toFixed(5)} ± ${baseline.stderr.toFixed(5)} nats/token on ${windows.length} windows`);

  // candidate models, built as they are measured
  const pending: { spec?: LinearSpec; point?: string; kind?: 'kv'; to: string; from: string; settings: PromotionSettings; bytes: number; build: () => Promise<Model> }[] = [];
  const specs = allLinears(cfg);
  const promos = new Map(specs.map((s) => [s.name, linearPromotions(table.linears[s.name] ?? { bits: 32, groupSize: 0, method: 'none' }, which)]));
  const packed = new Map<string, PackedWeights>(); // `${linear}|${to}` -> its weights
  const usesGptq = specs.some((s) => promos.get(s.name)!.some((c) => c.to.method === 'gptq'));
  if (usesGptq) {
    // the weight pass again, with Q's own options, to see each linear's Hessian as GPTQ saw it
    const rec = quantized.passes.find((p) => p.name === 'gptq');
    if (!rec) throw new UsageError('analyze: the model asks for GPTQ linears but records no gptq pass');
    const o = rec.options as Record<string, unknown>;
    const head = table.linears[specs[specs.length - 1].name];
    await gptqModel(
      reference,
      opts.calibration,
      {
        groupSize: (o.groupSize as number) ?? 32,
        percDamp: o.percDamp as number,
        actOrder: o.actOrder as boolean,
        blockSize: o.blockSize as number,
        staticGroups: o.staticGroups as boolean,
        quantizeLmHead: head !== undefined && head.bits !== 32,
        linears: table.linears,
      },
      ctx,
      {
        onLinear: async (spec, W, H, solve, la) => {
          for (const c of promos.get(spec.name)!) packed.set(`${spec.name}|${formatLinearPrecision(c.to)}`, await requantize(spec, W, c.to, H, solve, la));
        },
      },
    );
  }
  for (const spec of specs) {
    const from = table.linears[spec.name];
    for (const c of promos.get(spec.name)!) {
      const to = formatLinearPrecision(c.to);
      pending.push({
        spec,
        from: formatLinearPrecision(from),
        to,
        settings: c.settings,
        bytes: linearBytes(spec, c.to) - linearBytes(spec, from),
        build: async () => {
          const m = withLinear(quantized, spec.name, packed.get(`${spec.name}|${to}`) ?? (await requantize(spec, toFloat32(linearWeight(reference, spec).load()), c.to, null, null, undefined)), c.to);
          // a shared embedding table changes every activation: calibrate the model as it will execute
          return spec.role === 'lm_head' && sharesQuantizedEmbedding(quantized) ? recalibrate(m, table, opts.calibration, ctx) : m;
        },
      });
    }
  }
  // every 8-bit point's 16-bit range in one calibration (ranges are observed on float activations,
  // so a point's range does not depend on the other points' widths)
  const a8 = which.a16 ? Object.entries(table.activations).flatMap(([n, p]) => (p.bits === 8 ? [n] : [])) : [];
  const kv8 = which.kv16 ? table.kvCache.flatMap((kv, layer) => (kv.k.bits === 8 && kv.v.bits === 8 ? [layer] : [])) : [];
  if (a8.length || kv8.length) {
    const wideTable = {
      activations: Object.fromEntries(Object.entries(table.activations).map(([n, p]) => [n, a8.includes(n) ? { ...p, bits: 16 as const } : p])),
      kvCache: table.kvCache.map((kv, l) => (kv8.includes(l) ? { k: { ...kv.k, bits: 16 as const }, v: { ...kv.v, bits: 16 as const } } : kv)),
    };
    // base ranges are calibrated without adapters (passes/lora/add.ts adds them after quantize)
    const wide = await calibrateRanges({ ...quantized, adapters: undefined }, opts.calibration, { observer: 'mse', activations: true, kvCache: true, precision: wideTable }, ctx);
    for (const point of a8)
      pending.push({ point, from: 'A8', to: 'A16', settings: { act_bits: 16 }, bytes: 0, build: async () => withPoint16(quantized, point, wide.quant.activations[point]) });
    const perValue = cfg.numKvHeads * cfg.headDim * maxContext; // values of one layer's K (or V) at the compiled context
    for (const layer of kv8)
      pending.push({
        point: `model.layers.${layer}.{k,v}_cache`,
        kind: 'kv',
        from: 'KV8',
        to: 'KV16',
        settings: { kv_bits: 16 },
        bytes: 2 * perValue, // one more byte per value, K and V
        build: async () => withKv16(quantized, layer, wide.quant.kvCache[layer]),
      });
  }
  if (!pending.length) throw new UsageError('analyze: nothing to promote (no W4 linear, no A8 activation point, no KV8 cache)');

  const candidates: SensitivityCandidate[] = [];
  const bar = ctx.progress('analyze', pending.length);
  for (const p of pending) {
    bar.status?.(`${p.spec?.name ?? p.point} ${p.to}`);
    const k = await kldOf(await p.build());
    candidates.push({ module: p.spec?.name ?? p.point!, kind: p.spec ? 'linear' : (p.kind ?? 'activation'), settings: p.settings, from: p.from, to: p.to, bytes: p.bytes, kld: k.mean, gain: baseline.mean - k.mean });
    bar.tick();
  }
  bar.done();
  ctx.log(`analyze: ${candidates.length} candidates in ${((performance.now() - measureStart) / 1000).toFixed(1)} s`);
  return {
    metric: 'kld',
    adapter,
    windows: windows.length,
    seqLen: Math.max(...windows.map((w) => w.length)),
    baselineKld: baseline.mean,
    baselineKldStderr: baseline.stderr,
    baselineBytes: deviceBytes(quantized, maxContext),
    maxContext,
    candidates,
  };
}
