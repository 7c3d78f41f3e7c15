/**
 * LoRA adapters on a transformed, quantized base (Hu et al. 2021, "LoRA", §4.1: h = W·x + s·B·A·x).
 *
 * 1. Transform: the base's own function-preserving transforms (folded norms, QuaRot rotations)
 *    carried into A and B (passes/lora-transform.ts, {@link transformAdapter}).
 * 2. Refit A and B, at the same rank, to the W4 base (passes/lora-refit.ts), when the HAR keeps its
 *    fp32 weights.
 * 3. Quantize A and B on their own: int8 symmetric per output channel (row), or 4-bit symmetric
 *    group-wise on src/ir/quant.ts's grid (zero point 8, MatMulNBits packing).
 * 4. Calibrate the static A8 range of each intermediate A·x on calibration windows (capture graph of
 *    src/compiler/lower.ts with the adapter fed as graph inputs; passes/lora-calibration.ts).
 *
 *   PEFT dir ──loadPeftAdapter──> PeftAdapter ──addLora──> model.adapters += { name, A/B codes, A8 }
 *   PEFT dir ──loadPeftAdapter──> PeftAdapter ──mergeLora──> W ← W + s·B·A   (fp32 base only)
 */
import * as ort from 'onnxruntime-node';
import type { Model, LoraAdapter, LoraModule, LazyTensor, QParams } from '../../src/ir/model.js';
import { inMemory } from '../../src/ir/model.js';
import type { Tensor } from '../../src/ir/tensor.js';
import { toFloat32 } from '../../src/ir/tensor.js';
import { roundHalfEven, quantizeRtnW4, dequantizeW4, numGroups } from '../../src/ir/quant.js';
import { loraInputNames } from '../../src/compiler/lower.js';
import type { ValueSpec } from '../../formats/onnx.js';
import type { ExecutableAdapter } from '../../src/compiler/compile.js';
import type { PeftAdapter } from '../../formats/peft.js';
import type { PassContext } from '../../src/core/context.js';
import { transformAdapter, type TransformedModule, type TransformSources } from './transform.js';
import { calibrateLora, loraInputHessians } from './calibrate.js';
import { refitToBase, type LoraRefitSummary } from './refit.js';
import { decoderLinear } from '../../src/ir/architectures.js';
import { EdgeLLMError, UnsupportedModelError, UsageError, ShapeMismatchError } from '../../src/core/errors.js';

export { transformAdapter, type TransformedModule, type TransformSources } from './transform.js';
export type { LoraRefitSummary } from './refit.js';

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
  const spec = decoderLinear(model.config, linear);
  if (!spec) throw new EdgeLLMError(`LoRA module '${linear}' is not a decoder-layer linear`);
  return spec;
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
  if (opts.refit !== false && tmods.some((m) => model.quant.linears[m.linear])) {
    if (!src.optimized) ctx.log(`add-lora ${opts.name}: not refit to the quantized base: the HAR keeps no fp32 weights (quantized with --no-emulation-weights)`);
    else {
      if (windows.length === 0) throw new UsageError('add-lora: refitting the adapter to the quantized base needs calibration windows (or --no-refit)');
      ctx.log(`add-lora ${opts.name}: refitting to the W4 base on ${windows.length} windows`);
      const H = await loraInputHessians(model, adapterData(build(tmods, 32)), windows, ctx);
      ({ modules: mods, summary: refit } = await refitToBase(model, src.optimized, tmods, H, windows.length, ctx));
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
