/**
 * LoRA adapters on a transformed, quantized base (Hu et al. 2021, "LoRA", §4.1: h = W·x + s·B·A·x).
 *
 * 1. Transform: the base's own function-preserving transforms, rebuilt from `model.passes`
 *    ({@link transformAdapter}), move into A on input-side modules and into B on
 *    output-side ones, so that s·B'·A'·x' = s·B·A·x on the transformed activations x':
 *      fold-norms (W ← W·diag(γ))         A ← A·diag(γ)            q/k/v (γ_in), gate/up (γ_post)
 *      QuaRot R1 (Ashkboos et al. 2024, §4, "residual")   A ← A·R1  (q/k/v/gate/up),  B ← R1ᵀ·B  (o/down)
 *      QuaRot R2 (per head, v → o)        B_v ← per-head R2ᵀ·B_v,  A_o ← per-head A_o·R2
 *      QuaRot R4 (online, down input)     A_down ← A_down·R4
 * 2. Quantize A and B on their own: int8 symmetric per output channel (row), or 4-bit symmetric
 *    group-wise on src/ir/quant.ts's grid (zero point 8, MatMulNBits packing).
 * 3. Calibrate the static A8 range of each intermediate A·x on calibration windows (capture graph of
 *    src/compiler/lower.ts with the adapter fed as graph inputs).
 *
 *   PEFT dir ──loadPeftAdapter──> PeftAdapter ──addLora──> model.adapters += { name, A/B codes, A8 }
 *   PEFT dir ──loadPeftAdapter──> PeftAdapter ──mergeLora──> W ← W + s·B·A   (fp32 base only)
 */
import * as ort from 'onnxruntime-node';
import type { Model, LoraAdapter, LoraModule, LazyTensor, QParams } from '../src/ir/model.js';
import { inMemory } from '../src/ir/model.js';
import type { Tensor } from '../src/ir/tensor.js';
import { toFloat32 } from '../src/ir/tensor.js';
import { roundHalfEven, quantizeRtnW4, dequantizeW4, numGroups } from '../src/ir/quant.js';
import { loraInputNames } from '../src/compiler/lower.js';
import type { ValueSpec } from '../formats/onnx.js';
import type { ExecutableAdapter } from '../src/compiler/compile.js';
import type { PeftAdapter, PeftLoraModule } from '../formats/peft.js';
import type { PassContext } from '../src/pipeline-context.js';
import { quarotRotations, meta as quarotMeta, type QuarotOptions } from './quarot.js';
import { meta as foldMeta } from './fold-norms.js';
import { rotateVector, type KronRotation } from './hadamard.js';
import { calibrateLora, loraInputHessians, linearInputPoint } from './lora-calibration.js';
import { refitLoraModule, ortMatMul } from './lora-refit.js';
import { OrtLinalg } from './gptq-linalg.js';
import { EdgeLLMError, UnsupportedModelError, UsageError, ShapeMismatchError } from '../src/errors.js';

export const meta = { name: 'add-lora', requires: [] as string[] };
export const mergeMeta = { name: 'merge-lora', requires: [] as string[] };

export interface AddLoraOptions {
  /** adapter name (HAR member and `--adapter` selector): letters, digits, `_ . + = @ -` */
  name: string;
  /** storage of A and B: 8 (int8 per output channel, default), 4 (group-wise) or 32 (float) */
  bits: 32 | 8 | 4;
  /** input columns per scale for 4-bit (default 32; capped at the matrix width) */
  groupSize: number;
  /**
   * refit A and B, at the same rank, to the W4 base (passes/lora-refit.ts); default true. Needs
   * `TransformSources.optimized` and calibration windows; without the fp32 weights it is skipped.
   */
  refit?: boolean;
}

/** What the refit did, kept in the adapter's `source.refit` (H-weighted residuals, summed over modules). */
export type LoraRefitSummary = NonNullable<LoraAdapter['source']['refit']>;

export const DEFAULT_ADD_LORA_OPTIONS: Omit<AddLoraOptions, 'name'> = { bits: 8, groupSize: 32 };

const NAME = /^[A-Za-z0-9_.+=@-]{1,64}$/;
const I8_MAX = 127;

/** A LoraAdapter whose tensors are in memory (what an Executable holds). */
export type LoraAdapterData = ExecutableAdapter;

/** Materialises an adapter's tensors. */
export function adapterData(a: LoraAdapter): LoraAdapterData {
  return { ...a, tensors: new Map([...a.tensors].map(([n, t]) => [n, t.load()])) };
}

/** The 4-bit group size used for a matrix `cols` wide: `groupSize`, capped at cols rounded up to even. */
export function loraGroupSize(cols: number, groupSize: number): number {
  return Math.min(groupSize, cols + (cols % 2));
}

/**
 * Quantizes one LoRA matrix W [rows, cols] (rows = output channels: r for A, out for B).
 * - 8: symmetric int8 per row, scale = max|w|/127 (1/127 for a zero row), q = clamp(round½even(w/scale), −127, 127)
 * - 4: 4-bit symmetric group-wise (quantizeRtnW4), MatMulNBits packing
 * @returns the tensors to store under `prefix` (`.qweight`, `.scales`), or `prefix` itself (F32) for 32
 */
export function quantizeLoraMatrix(W: Float32Array, rows: number, cols: number, bits: 32 | 8 | 4, groupSize: number, prefix: string): [string, Tensor][] {
  if (W.length !== rows * cols) throw new ShapeMismatchError(`quantizeLoraMatrix ${prefix}: ${W.length} elements, shape [${rows}, ${cols}] needs ${rows * cols}`);
  if (bits === 32) return [[prefix, { dtype: 'F32', shape: [rows, cols], data: Float32Array.from(W) }]];
  if (bits === 4) {
    const g = loraGroupSize(cols, groupSize);
    const p = quantizeRtnW4(W, rows, cols, g);
    const nb = numGroups(cols, g);
    return [
      [`${prefix}.qweight`, { dtype: 'U8', shape: [rows, nb, g / 2], data: p.qweight }],
      [`${prefix}.scales`, { dtype: 'F32', shape: [rows, nb], data: p.scales }],
    ];
  }
  const q = new Int8Array(rows * cols);
  const scales = new Float32Array(rows);
  for (let i = 0; i < rows; i++) {
    let m = 0;
    for (let j = 0; j < cols; j++) m = Math.max(m, Math.abs(W[i * cols + j]));
    const s = Math.fround(m === 0 ? 1 / I8_MAX : m / I8_MAX);
    scales[i] = s;
    for (let j = 0; j < cols; j++) q[i * cols + j] = Math.max(-I8_MAX, Math.min(I8_MAX, roundHalfEven(Math.fround(W[i * cols + j] / s))));
  }
  return [
    [`${prefix}.qweight`, { dtype: 'I8', shape: [rows, cols], data: q }],
    [`${prefix}.scales`, { dtype: 'F32', shape: [rows, 1], data: scales }],
  ];
}

/**
 * Inverse of {@link quantizeLoraMatrix}: float32 [rows, cols], w = q·scale (int8) or (q − 8)·scale
 * (4-bit), each product rounded to float32 as DequantizeLinear computes it.
 * @throws EdgeLLMError when a tensor is missing
 */
export function dequantizeLoraMatrix(get: (name: string) => Tensor | undefined, prefix: string, rows: number, cols: number, bits: 32 | 8 | 4, groupSize: number): Float32Array {
  const need = (n: string) => {
    const t = get(n);
    if (!t) throw new EdgeLLMError(`LoRA tensor '${n}' is missing`);
    return t;
  };
  if (bits === 32) return Float32Array.from(toFloat32(need(prefix)));
  const scales = toFloat32(need(`${prefix}.scales`));
  if (bits === 4) {
    const g = loraGroupSize(cols, groupSize);
    return dequantizeW4({ qweight: need(`${prefix}.qweight`).data as Uint8Array, scales, outFeatures: rows, inFeatures: cols, groupSize: g });
  }
  const q = need(`${prefix}.qweight`).data as Int8Array;
  const w = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) w[i * cols + j] = q[i * cols + j] * scales[i];
  return w;
}

/** Shapes of a module's A [rank, in] and B [out, rank] from the model config. */
function moduleDims(model: Pick<Model, 'config'>, linear: string): { inFeatures: number; outFeatures: number } {
  const c = model.config;
  const role = linear.slice(linear.lastIndexOf('.') + 1);
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const h = c.hiddenSize;
  const m = c.intermediateSize;
  const dims: Record<string, [number, number]> = { q_proj: [h, q], k_proj: [h, kv], v_proj: [h, kv], o_proj: [q, h], gate_proj: [h, m], up_proj: [h, m], down_proj: [m, h] };
  const d = dims[role];
  if (!d) throw new EdgeLLMError(`LoRA module '${linear}' is not a decoder-layer linear`);
  return { inFeatures: d[0], outFeatures: d[1] };
}

/**
 * One module's dequantized A float32 [rank, in] and scaled B float32 [out, rank] (B·s, rounded to
 * float32), as the graph consumes them.
 */
export function loraMatrices(model: Pick<Model, 'config'>, a: LoraAdapterData, m: LoraModule): { A: Float32Array; B: Float32Array } {
  const { inFeatures, outFeatures } = moduleDims(model, m.linear);
  const get = (n: string) => a.tensors.get(n);
  const A = dequantizeLoraMatrix(get, `${m.linear}.lora_A`, m.rank, inFeatures, a.bits, a.groupSize);
  const B = dequantizeLoraMatrix(get, `${m.linear}.lora_B`, outFeatures, m.rank, a.bits, a.groupSize);
  for (let i = 0; i < B.length; i++) B[i] = Math.fround(B[i] * m.scaling);
  return { A, B };
}

/** A feed: dtype, data and dims of one LoRA graph input. */
export interface LoraFeed {
  type: 'float32' | 'uint8';
  data: Float32Array | Uint8Array;
  dims: number[];
}

/**
 * The values of a graph's `lora.*` inputs for adapter `a`, or for "no adapter" (`null`: zeros, which
 * add exact zeros). A module's rank is zero-padded to the graph's rank (rows of A, columns of B).
 * A and B are fed as float32, dequantized once from the stored codes (w = q·scale rounded to float32,
 * what DequantizeLinear computes): this also covers 4-bit group-wise codes, which DequantizeLinear
 * cannot express before opset 21 (the graphs are opset 17), and keeps one graph for every storage.
 * @param inputs the graph's input specs; only `lora.*` names are used
 * @throws EdgeLLMError when the adapter's rank exceeds the graph's, or the graph quantizes the
 *   intermediate but the adapter has no A8 range for it
 */
export function loraFeeds(model: Pick<Model, 'config'>, a: LoraAdapterData | null, inputs: readonly ValueSpec[]): Map<string, LoraFeed> {
  const feeds = new Map<string, LoraFeed>();
  const mods = new Map((a?.modules ?? []).map((m) => [m.linear, m]));
  const byLinear = new Map<string, string[]>();
  for (const s of inputs) {
    const m = /^lora\.(.+)\.(A|B|act_scale|act_zero_point)$/.exec(s.name);
    if (m) byLinear.set(m[1], [...(byLinear.get(m[1]) ?? []), m[2]]);
  }
  for (const [linear, kinds] of byLinear) {
    const n = loraInputNames(linear);
    const { inFeatures, outFeatures } = moduleDims(model, linear);
    const spec = inputs.find((s) => s.name === n.A);
    const r = Number(spec?.shape?.[0]);
    const mod = mods.get(linear);
    const A = new Float32Array(r * inFeatures);
    const B = new Float32Array(outFeatures * r);
    let act: QParams = { scale: 1, zeroPoint: 0 };
    if (mod && a) {
      if (mod.rank > r) throw new EdgeLLMError(`adapter '${a.name}': ${linear} has rank ${mod.rank}, the graph was compiled for rank ${r}`);
      const mat = loraMatrices(model, a, mod);
      A.set(mat.A); // rows beyond mod.rank stay zero
      for (let o = 0; o < outFeatures; o++) B.set(mat.B.subarray(o * mod.rank, (o + 1) * mod.rank), o * r);
      if (kinds.includes('act_scale')) {
        if (!mod.act) throw new EdgeLLMError(`adapter '${a.name}': ${linear} has no A8 range for its intermediate A·x (re-add it with calibration)`);
        act = mod.act;
      }
    }
    feeds.set(n.A, { type: 'float32', data: A, dims: [r, inFeatures] });
    feeds.set(n.B, { type: 'float32', data: B, dims: [outFeatures, r] });
    if (kinds.includes('act_scale')) {
      feeds.set(n.scale, { type: 'float32', data: Float32Array.of(act.scale), dims: [] });
      feeds.set(n.zeroPoint, { type: 'uint8', data: Uint8Array.of(act.zeroPoint), dims: [] });
    }
  }
  return feeds;
}

/** A PEFT module after the base's transforms: float32 A [rank, in], B [out, rank]. */
export interface TransformedModule {
  linear: string;
  role: string;
  layer: number;
  rank: number;
  scaling: number;
  inFeatures: number;
  outFeatures: number;
  A: Float32Array;
  B: Float32Array;
}

/** Where transforms that discard information find it: the source (pre-fold) fp32 model, for γ. */
export interface TransformSources {
  /** the base before any pass (e.g. a HAR's `emulation/native` model, or the HF checkpoint) */
  native?: Model;
  /** the fp32 base after its transforms, before weight quantization (a HAR's `emulation/optimized`), for the refit */
  optimized?: Model;
}

/**
 * Base passes that leave every linear's function unchanged in float, so an adapter's A and B stay as
 * they are: weight/activation quantization, calibration, and k-centering (it shifts the whole K cache,
 * the adapter's contribution included, and attention is invariant to that shift).
 */
const NEUTRAL_PASSES = new Set(['rtn', 'gptq', 'calibrate', 'k-centering', 'merge-lora', 'add-lora']);

const INPUT_SIDE = new Set(['q_proj', 'k_proj', 'v_proj', 'gate_proj', 'up_proj']);

/** X [rows, n] ← X·R on every row, R applied to each consecutive segment of length R.n (per head when n > R.n). */
function rotateRows(X: Float64Array, rows: number, R: KronRotation): void {
  const n = X.length / rows;
  const tmp = new Float64Array(R.n);
  for (let i = 0; i < rows; i++) for (let o = 0; o < n; o += R.n) rotateVector(R, X.subarray(i * n + o, i * n + o + R.n), tmp);
}

/** X [n, cols] ← Rᵀ·X (each column c ← c·R as a row vector, per segment of length R.n). */
function rotateCols(X: Float64Array, cols: number, R: KronRotation): void {
  const n = X.length / cols;
  const col = new Float64Array(n);
  for (let j = 0; j < cols; j++) {
    for (let i = 0; i < n; i++) col[i] = X[i * cols + j];
    rotateRows(col, 1, R);
    for (let i = 0; i < n; i++) X[i * cols + j] = col[i];
  }
}

/**
 * Carries the base's transforms, read from `model.passes` in order, into a PEFT adapter's A and B
 * (see the file header for the algebra). Math in float64, rounded to float32 at the end.
 * @returns the transformed modules and the names of the passes that changed them
 * @throws UnsupportedModelError for a base pass whose effect on an adapter is unknown, or when
 *   information it needs (the folded γ) is not available
 */
export function transformAdapter(peft: PeftAdapter, model: Model, src: TransformSources = {}): { modules: TransformedModule[]; applied: string[] } {
  const cfg = model.config;
  const work = peft.modules.map((m): PeftLoraModule & { A64: Float64Array; B64: Float64Array } => ({ ...m, A64: Float64Array.from(m.A), B64: Float64Array.from(m.B) }));
  const applied: string[] = [];
  for (const rec of model.passes) {
    if (NEUTRAL_PASSES.has(rec.name)) continue;
    if (rec.name === foldMeta.name) {
      const native = src.native;
      for (const m of work) {
        if (!INPUT_SIDE.has(m.role)) continue;
        const norm = m.role === 'gate_proj' || m.role === 'up_proj' ? `model.layers.${m.layer}.post_attention_layernorm.weight` : `model.layers.${m.layer}.input_layernorm.weight`;
        const t = native?.weights.get(norm);
        if (!t) throw new UnsupportedModelError(`add-lora: the base folded its RMSNorm weights (fold-norms) and keeps no fp32 copy; pass --base-model <hf-dir> so '${norm}' can be folded into lora_A`);
        const g = toFloat32(t.load());
        if (g.length !== m.inFeatures) throw new ShapeMismatchError(`add-lora: pre-fold '${norm}' has ${g.length} entries, ${m.linear} reads ${m.inFeatures} (is --base-model the HAR's source?)`);
        for (let j = 0; j < m.rank; j++) for (let k = 0; k < m.inFeatures; k++) m.A64[j * m.inFeatures + k] *= g[k];
      }
    } else if (rec.name === quarotMeta.name) {
      // passes/quarot.ts: inputs W·R1, outputs R1ᵀ·W, v rows per head R2ᵀ·W_v, o columns per head W_o·R2, down W·R4
      const R = quarotRotations(cfg, rec.options as unknown as QuarotOptions);
      for (const m of work) {
        if (INPUT_SIDE.has(m.role)) rotateRows(m.A64, m.rank, R.r1); // A ← A·R1
        else rotateCols(m.B64, m.rank, R.r1); // B ← R1ᵀ·B (o_proj, down_proj)
        if (m.role === 'v_proj') rotateCols(m.B64, m.rank, R.r2[m.layer]); // B_v ← R2ᵀ·B_v per KV head
        if (m.role === 'o_proj') rotateRows(m.A64, m.rank, R.r2[m.layer]); // A_o ← A_o·R2 per query head
        if (m.role === 'down_proj' && R.r4) rotateRows(m.A64, m.rank, R.r4); // A_down ← A_down·R4
      }
    } else throw new UnsupportedModelError(`add-lora: the base pass '${rec.name}' has no known effect on LoRA adapters; cannot keep the adapter exact`);
    applied.push(rec.name);
  }
  return {
    modules: work.map(({ A64, B64, A: _a, B: _b, ...m }) => ({ ...m, A: Float32Array.from(A64), B: Float32Array.from(B64) })),
    applied,
  };
}

/** The adapter record: transformed modules with A and B stored at `bits`. */
function buildAdapter(name: string, peft: PeftAdapter, mods: TransformedModule[], bits: 32 | 8 | 4, groupSize: number, transforms: string[]): LoraAdapter {
  const tensors = new Map<string, LazyTensor>();
  for (const m of mods) {
    for (const [n, t] of quantizeLoraMatrix(m.A, m.rank, m.inFeatures, bits, groupSize, `${m.linear}.lora_A`)) tensors.set(n, inMemory(t));
    for (const [n, t] of quantizeLoraMatrix(m.B, m.outFeatures, m.rank, bits, groupSize, `${m.linear}.lora_B`)) tensors.set(n, inMemory(t));
  }
  return {
    name,
    r: peft.config.r,
    alpha: peft.config.loraAlpha,
    useRslora: peft.config.useRslora,
    bits,
    groupSize: bits === 4 ? groupSize : 0,
    modules: mods.map((m) => ({ linear: m.linear, rank: m.rank, scaling: m.scaling })),
    tensors,
    source: { baseModelNameOrPath: peft.config.baseModelNameOrPath, transforms },
  };
}

/**
 * Adds a PEFT adapter to `model` under `opts.name`: transformed like the base, A and B quantized on
 * their own, the intermediate A·x calibrated for static A8 when the base quantizes activations.
 * Base weights and other adapters are untouched.
 * @param windows calibration token windows (only used when the base has A8 ranges)
 * @returns a new Model with the adapter appended to `adapters`
 * @throws UsageError (bad or duplicate name, bad bits/group size, no windows when needed);
 *   UnsupportedModelError when a base pass cannot be carried into the adapter
 */
export async function addLora(model: Model, peft: PeftAdapter, opts: AddLoraOptions, windows: number[][], ctx: PassContext, src: TransformSources = {}): Promise<Model> {
  if (!NAME.test(opts.name)) throw new UsageError(`--name '${opts.name}': use 1-64 letters, digits or _ . + = @ -`);
  if ((model.adapters ?? []).some((a) => a.name === opts.name)) throw new UsageError(`--name '${opts.name}': the HAR already has an adapter of that name`);
  if (![32, 8, 4].includes(opts.bits)) throw new UsageError(`--lora-bits ${opts.bits}: must be 8, 4 or 32 (float)`);
  if (opts.bits === 4 && (!Number.isInteger(opts.groupSize) || opts.groupSize < 2 || opts.groupSize % 2 !== 0))
    throw new UsageError(`--lora-group-size ${opts.groupSize}: must be an even integer ≥ 2`);
  const { modules: tmods, applied } = transformAdapter(peft, model, src);
  const build = (mods: TransformedModule[], bits: 32 | 8 | 4) => buildAdapter(opts.name, peft, mods, bits, opts.groupSize, applied);
  let mods = tmods;
  let refit: LoraRefitSummary | undefined;
  const onQuantized = tmods.filter((m) => model.quant.linears[m.linear]);
  if (opts.refit !== false && onQuantized.length > 0) {
    if (!src.optimized) ctx.log(`add-lora ${opts.name}: not refit to the quantized base: the HAR keeps no fp32 weights (quantized with --no-emulation-weights)`);
    else {
      if (windows.length === 0) throw new UsageError('add-lora: refitting the adapter to the quantized base needs calibration windows (or --no-refit)');
      ctx.log(`add-lora ${opts.name}: refitting ${onQuantized.length} modules to the W4 base on ${windows.length} windows`);
      const H = await loraInputHessians(model, adapterData(build(tmods, 32)), windows, ctx);
      refit = { modules: onQuantized.length, windows: windows.length, residualBefore: 0, residualAfter: 0 };
      const la = new OrtLinalg();
      const bar = ctx.progress('lora-refit', onQuantized.length);
      mods = [];
      try {
        for (const m of tmods) mods.push(model.quant.linears[m.linear] ? await refitModule(m) : m);
      } finally {
        bar.done();
        await la.dispose();
      }
      async function refitModule(m: TransformedModule): Promise<TransformedModule> {
        const q = model.quant.linears[m.linear];
        const W = src.optimized!.weights.get(`${m.linear}.weight`);
        if (!W) throw new UnsupportedModelError(`add-lora: the HAR's fp32 weights have no '${m.linear}.weight'`);
        const get = (n: string) => model.weights.get(`${m.linear}.${n}`)?.load();
        const qweight = get('qweight');
        const scales = get('scales');
        if (!qweight || !scales) throw new UnsupportedModelError(`add-lora: ${m.linear} is quantized but its qweight/scales are missing`);
        const Wq = dequantizeW4({ qweight: qweight.data as Uint8Array, scales: toFloat32(scales), outFeatures: m.outFeatures, inFeatures: m.inFeatures, groupSize: q.groupSize });
        const H_ = H.get(linearInputPoint(model, m.linear, m.layer))!;
        const r = await refitLoraModule(toFloat32(W.load()), Wq, m.A, m.B, m.scaling, H_, m.outFeatures, m.inFeatures, m.rank, ortMatMul(la));
        refit!.residualBefore += r.residualBefore;
        refit!.residualAfter += r.residualAfter;
        bar.tick();
        return { ...m, A: r.A, B: r.B };
      }
    }
  }
  const adapter = build(mods, opts.bits);
  if (refit) adapter.source.refit = refit;
  if (Object.keys(model.quant.activations).length > 0) {
    if (windows.length === 0) throw new UsageError('add-lora: the base quantizes activations (static A8), so calibration windows are needed for the adapter');
    ctx.log(`add-lora ${opts.name}: calibrating ${adapter.modules.length} intermediates on ${windows.length} windows`);
    const ranges = await calibrateLora(model, adapterData(adapter), windows, ctx);
    for (const m of adapter.modules) m.act = ranges.get(m.linear);
  }
  return { ...model, adapters: [...(model.adapters ?? []), adapter] };
}

/**
 * Merges a PEFT adapter into the float base: W ← W + s·B·A for every adapted linear (after carrying
 * the base's transforms into A and B, so it also applies after fold-norms/QuaRot). Run it before
 * weight quantization (GPTQ/RTN then quantize the merged weights).
 * @returns a new Model; the input is not modified
 * @throws UnsupportedModelError when an adapted linear is already weight-quantized
 */
export function mergeLora(model: Model, peft: PeftAdapter, ctx: PassContext, src: TransformSources = {}): Model {
  const { modules } = transformAdapter(peft, model, src);
  const weights = new Map(model.weights);
  for (const m of modules) {
    if (model.quant.linears[m.linear]) throw new UnsupportedModelError(`merge-lora: ${m.linear} is already quantized; merge the adapter into the fp32 base (edgellm quantize --merge-lora)`);
    const name = `${m.linear}.weight`;
    const lt = model.weights.get(name);
    if (!lt) throw new UnsupportedModelError(`merge-lora: weight '${name}' is missing from the base`);
    const W = toFloat32(lt.load());
    const out = new Float32Array(W.length);
    const { rank: r, inFeatures: K } = m;
    for (let o = 0; o < m.outFeatures; o++)
      for (let k = 0; k < K; k++) {
        let acc = 0;
        for (let j = 0; j < r; j++) acc += m.B[o * r + j] * m.A[j * K + k];
        out[o * K + k] = W[o * K + k] + m.scaling * acc;
      }
    weights.set(name, inMemory({ dtype: 'F32', shape: [m.outFeatures, K], data: out }));
  }
  ctx.log(`merge-lora: merged ${modules.length} modules of ${peft.dir}`);
  return { ...model, weights, passes: [...model.passes, { name: mergeMeta.name, options: { adapter: peft.dir, modules: modules.length } }] };
}
