/**
 * GPTQ over a whole model, true-sequential and layer by layer (Frantar et al. 2022, §4 and the
 * reference code's `llama_sequential`): every linear is quantized against the Hessian of the inputs
 * it actually receives once everything before it is quantized.
 *
 *   x⁰ = embed(windows)                                        [windows, seq, hidden] float32
 *   for each decoder layer i:
 *     for each linear input of the layer, in execution order
 *         attn_in → q/k/v,  o_proj_in → o_proj,  mlp_in → gate/up,  down_proj_in → down_proj:
 *       run layer i (already-quantized linears as MatMulNBits) on every window up to that input,
 *       H = HessianAccumulator over the captured inputs, quantize each linear reading it (passes/gptq.ts)
 *     x^{i+1} = layer i, now fully quantized, run on x^i
 *   lm_head: float, or (quantizeLmHead) GPTQ on the final-norm output of x^L
 *
 * Each step runs a cut of `lowerLayerGraph(model, i, { capture: true })` in onnxruntime-node: the
 * graph from the layer input (and the inputs captured at earlier steps, kept per window while they
 * fit in `cacheBytes`) to the capture point needed, so no step recomputes what an earlier one
 * produced. Memory: the calibration hidden states, the cached inputs of the current layer and its
 * fp32 weights; quantized weights are kept (they are the output), other weights stay lazy.
 *
 * Output, as passes/rtn.ts: `<linear>.weight` → `<linear>.qweight` U8 [out, n_blocks, group·bits/8] +
 * `<linear>.scales` F32 [out, n_blocks], `quant.linears[name].method = 'gptq'`. Per-linear precision
 * (`linears`, from a recipe): bits 4 or 8 at its own group size; method 'rtn' rounds that linear to
 * nearest in its place in the sequence; bits 32 leaves it float (a step whose linears all stay
 * float is skipped). For every linear
 * the layer-wise errors tr((W−Q)·H·(W−Q)ᵀ) of GPTQ and of RTN on the same H go to
 * `model.report.linears` (relative to tr(W·H·Wᵀ)) and, absolute, to the pass record. Each layer
 * logs one line through ctx.log with the wall time of its forward runs, Hessians and solves.
 *
 * Cost per layer (Qwen2-1.5B, 32 windows × 2048 tokens): about one fp32 forward of the layer
 * (6.9 TFLOP) plus the Hessians (6.2 TFLOP, 85% of it down_proj's 8960² one) plus the solves
 * (~1.5 TFLOP); see scripts/bench-gptq.ts.
 */
import * as ort from 'onnxruntime-node';
import type { LazyTensor, Model } from '../src/ir/model.js';
import { inMemory } from '../src/ir/model.js';
import { actPointName, allLinears, layerLinears, lmHead, type LinearInput, type LinearSpec } from '../src/ir/architectures.js';
import { bf16ToFloat, halfToFloat, toFloat32 } from '../src/ir/tensor.js';
import { dequantizeWeights, quantizeRtn, type WeightBits } from '../src/ir/quant.js';
import type { LinearPrecision } from '../src/ir/precision.js';
import { lowerLayerGraph } from '../src/compiler/lower.js';
import { captureName, kvCacheDims, kvNames, HIDDEN_STATES, HIDDEN_STATES_OUT } from '../src/compiler/io-contract.js';
import { Lowering } from '../src/compiler/lowering.js';
import { GraphBuilder, onnx, withInitializers } from '../formats/onnx.js';
import type onnxProto from 'onnx-proto';
import { captureWindows } from '../src/engine/capture.js';
import { silentContext } from '../src/core/context.js';
import { UnsupportedModelError, UsageError } from '../src/core/errors.js';
import type { RunContext } from '../src/core/context.js';
import { HessianAccumulator } from '../calibration/hessian.js';
import { OrtLinalg } from '../src/engine/linalg.js';
import { gptq, weightedSquaredErrors, GPTQ_DEFAULTS, type GptqOptions } from './gptq.js';
import { checkPrecisionOptions, linearPrecision, linearWeight, setQuantized, type LinearPrecisionOptions } from './rtn.js';
import type { Pass } from './pass.js';

/**
 * Observers of {@link gptqModel}: `onLinear` sees every linear just before it is quantized, with its
 * fp32 weight W [out, in] (not to be modified), the Hessian H float64 [in, in] of the inputs it
 * receives (everything before it already quantized), and the solver's options, so a caller can
 * quantize the same linear at other precisions against the same H (passes/sensitivity.ts).
 */
export interface GptqHooks {
  onLinear?: (spec: LinearSpec, W: Float32Array, H: Float64Array, solve: GptqOptions, la: OrtLinalg) => Promise<void>;
}

/** `linears` (passes/rtn.ts LinearPrecisionOptions): per-linear bits 4/8/32, group size and method ('rtn': rounded to nearest here, in sequence). */
export interface GptqPassOptions extends Partial<Omit<GptqOptions, 'groupSize' | 'bits'>>, LinearPrecisionOptions {
  /** input columns per scale (MatMulNBits block size: a power of two ≥ 16) */
  groupSize: number;
  /** also quantize lm_head, with GPTQ on the final-norm output (default false, as the reference code) */
  quantizeLmHead?: boolean;
  /** lm_head's group size (default: `groupSize`) */
  lmHeadGroupSize?: number;
  /** bytes of captured layer inputs kept between steps (default 4 GiB); beyond it steps recompute */
  cacheBytes?: number;
}

/** One linear's layer-wise errors, tr(D·H·Dᵀ) on its calibration Hessian H. */
export interface GptqLinearReport {
  name: string;
  /** D = W − Q_gptq */
  gptq: number;
  /** D = W − Q_rtn (round to nearest on the same grid) */
  rtn: number;
  /** D = W, the output energy the errors compare with */
  reference: number;
  /** λ added to diag H, and how many ×10 retries it took */
  damp: number;
  retries: number;
}

export const meta = { name: 'gptq', requires: [] as string[] };

const DEFAULT_CACHE_BYTES = 4 * 2 ** 30;

/**
 * Quantizes every decoder-layer linear (and lm_head with `quantizeLmHead`) with true-sequential GPTQ
 * calibrated on `windows` (token ids, each run from position 0).
 * @returns a new Model; the input is not modified
 * @throws UsageError (bad group size, no windows, act-order without static groups),
 *   UnsupportedModelError (a layer graph without the expected capture points), EdgeLLMError when a
 *   Hessian stays indefinite after the damping retries
 */
export async function gptqModel(model: Model, windows: readonly number[][], opts: GptqPassOptions, ctx: RunContext, hooks: GptqHooks = {}): Promise<Model> {
  checkPrecisionOptions('gptq', opts);
  if (windows.length === 0 || windows.some((w) => w.length === 0)) throw new UsageError('gptq: needs at least one non-empty calibration window');
  const solveOpts: GptqOptions = { ...GPTQ_DEFAULTS, ...stripUndefined(opts), groupSize: opts.groupSize };
  if (solveOpts.actOrder && !solveOpts.staticGroups) throw new UsageError('gptq: --act-order needs static groups (MatMulNBits has no g_idx)');
  const cfg = model.config;
  const weights = new Map(model.weights);
  const linears = { ...model.quant.linears };
  const report: GptqLinearReport[] = [];
  const precisionOf = (spec: LinearSpec) => linearPrecision(spec, opts, 'gptq');
  const total = allLinears(cfg).filter((spec) => precisionOf(spec).bits !== 32).length;
  const bar = ctx.progress('gptq', total);
  const la = new OrtLinalg();
  const maxContext = Math.max(...windows.map((w) => w.length));
  let hidden = embed(model, windows); // per window [S, hidden]
  try {
    for (let i = 0; i < cfg.numLayers; i++) {
      const layer = new LayerState(model, i, weights, linears, maxContext);
      const stages = stagesOf(layerLinears(cfg, i));
      let budget = opts.cacheBytes ?? DEFAULT_CACHE_BYTES;
      const timing: string[] = [];
      for (const [s, stage] of stages.entries()) {
        const todo = stage.linears.filter((spec) => precisionOf(spec).bits !== 32);
        if (!todo.length) continue; // every linear reading this input stays float
        const point = actPointName(i, stage.input);
        const K = stage.linears[0].inFeatures;
        // keep this input for later steps (not the first one: recomputing it from x is free)
        const bytes = hidden.reduce((n, h) => n + (h.length / cfg.hiddenSize) * K * 4, 0);
        const keep = s > 0 && bytes <= budget;
        if (keep) budget -= bytes;
        const acc = new HessianAccumulator(K);
        const t0 = performance.now();
        let tH = 0;
        await layer.run(hidden, [captureName(point)], async (w, out) => {
          const x = out[captureName(point)].data as Float32Array;
          const t = performance.now();
          await acc.addBatch(x);
          tH += performance.now() - t;
          if (keep) layer.cache(point, w, x);
        });
        await acc.dispose();
        const t1 = performance.now();
        for (const spec of todo) {
          bar.status?.(`layer ${i} ${spec.role}`);
          const W = layer.fp32(spec);
          await hooks.onLinear?.(spec, W, acc.H, solveOpts, la);
          report.push(await quantizeLinear(spec, W, acc.H, solveOpts, precisionOf(spec), la, weights, linears));
          bar.tick();
        }
        timing.push(`${stage.input} ${sec(t1 - t0 - tH)} + H ${sec(tH)} + solve ${sec(performance.now() - t1)}`);
      }
      const t0 = performance.now();
      hidden = await layer.output(hidden);
      ctx.log(`gptq layer ${i} (wall s, forward + Hessian + GPTQ): ${timing.join('; ')}; output ${sec(performance.now() - t0)}`);
    }
    const head = lmHead(cfg);
    if (precisionOf(head).bits !== 32) {
      bar.status?.('lm_head');
      const H = await finalNormHessian(model, hidden);
      const W = toFloat32(linearWeight(model, head).load());
      await hooks.onLinear?.(head, W, H, solveOpts, la);
      report.push(await quantizeLinear(head, W, H, solveOpts, precisionOf(head), la, weights, linears));
      bar.tick();
    }
  } finally {
    await la.dispose();
    bar.done();
  }
  const rel = Object.fromEntries(report.map((r) => [r.name, { relError: r.gptq / r.reference, rtnRelError: r.rtn / r.reference, method: linears[r.name].method }]));
  return {
    ...model,
    weights,
    quant: { ...model.quant, linears },
    report: { linears: { ...model.report?.linears, ...rel }, points: { ...model.report?.points } },
    passes: [...model.passes, { name: meta.name, options: { ...solveOpts, quantizeLmHead: !!opts.quantizeLmHead, windows: windows.length, report } }],
  };
}

/** The gptq pass's per-linear absolute errors from a model's pass record, if it ran. */
export function gptqReport(model: Model): GptqLinearReport[] | undefined {
  const rec = model.passes.find((p) => p.name === meta.name);
  return rec?.options.report as GptqLinearReport[] | undefined;
}

const sec = (ms: number) => (ms / 1000).toFixed(1);

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** The layer's linears grouped by the input they read, in execution order (the true-sequential steps). */
function stagesOf(specs: LinearSpec[]): { input: LinearInput; linears: LinearSpec[] }[] {
  const out: { input: LinearInput; linears: LinearSpec[] }[] = [];
  for (const s of specs) {
    const last = out[out.length - 1];
    if (last && last.input === s.input) last.linears.push(s);
    else out.push({ input: s.input, linears: [s] });
  }
  return out;
}

/**
 * Quantizes one linear at precision `p` (bits 4 or 8, its group size; method 'gptq', or 'rtn': round
 * to nearest, whose report then gives the RTN error as both errors, with damp 0), records it in
 * `weights`/`linears`, and measures GPTQ and RTN errors on H.
 */
async function quantizeLinear(
  spec: LinearSpec,
  W: Float32Array,
  H: Float64Array,
  opts: GptqOptions,
  p: LinearPrecision,
  la: OrtLinalg,
  weights: Map<string, LazyTensor>,
  linears: Model['quant']['linears'],
): Promise<GptqLinearReport> {
  const N = spec.outFeatures;
  const K = spec.inFeatures;
  const bits = p.bits as WeightBits;
  const rtnPacked = quantizeRtn(W, N, K, p.groupSize, bits);
  const res = p.method === 'gptq' ? await gptq(W, N, K, H, { ...opts, groupSize: p.groupSize, bits }, la) : { packed: rtnPacked, damp: 0, retries: 0 };
  const rtnQ = dequantizeWeights(rtnPacked);
  const gptqQ = dequantizeWeights(res.packed);
  for (let j = 0; j < W.length; j++) {
    gptqQ[j] = W[j] - gptqQ[j];
    rtnQ[j] = W[j] - rtnQ[j];
  }
  const [eG, eR, ref] = await weightedSquaredErrors([gptqQ, rtnQ, W], N, K, H, la);
  setQuantized(weights, linears, spec.name, res.packed, p.method as 'gptq' | 'rtn');
  return { name: spec.name, gptq: eG, rtn: eR, reference: ref, damp: res.damp, retries: res.retries };
}

/** Layer 0's input: rows of model.embed_tokens.weight, float32 [S, hidden] per window (read without a full fp32 copy). */
function embed(model: Model, windows: readonly number[][]): Float32Array[] {
  const H = model.config.hiddenSize;
  const t = model.weights.get('model.embed_tokens.weight');
  if (!t) throw new UnsupportedModelError('gptq: model.embed_tokens.weight is missing');
  const e = t.load();
  const row: (dst: Float32Array, at: number, id: number) => void =
    e.dtype === 'BF16' || e.dtype === 'F16'
      ? (dst, at, id) => {
          const src = e.data as Uint16Array;
          const cvt = e.dtype === 'BF16' ? bf16ToFloat : halfToFloat;
          for (let j = 0; j < H; j++) dst[at + j] = cvt(src[id * H + j]);
        }
      : ((f) => (dst: Float32Array, at: number, id: number) => dst.set(f.subarray(id * H, (id + 1) * H), at))(toFloat32(e));
  return windows.map((w) => {
    const x = new Float32Array(w.length * H);
    w.forEach((id, s) => row(x, s * H, id));
    return x;
  });
}

/** H of the lm_head input, rmsnorm(x)·γ_final, over the final hidden states. */
async function finalNormHessian(model: Model, hidden: Float32Array[]): Promise<Float64Array> {
  const Hd = model.config.hiddenSize;
  const L = new Lowering(new GraphBuilder('gptq_final_norm'), model, { capture: false, actQuant: false, kvQuant: false });
  const x = L.g.input(HIDDEN_STATES, 'float32', [1, 'sequence_length', Hd]);
  L.g.node('Identity', [L.rmsNorm(x, 'model.norm.weight', '/model/norm')], { name: '/model/norm/output', outputNames: ['normed'] });
  L.g.output('normed', 'float32', [1, 'sequence_length', Hd]);
  const acc = new HessianAccumulator(Hd);
  const feeds = (w: number) => ({ [HIDDEN_STATES]: new ort.Tensor('float32', hidden[w], [1, hidden[w].length / Hd, Hd]) });
  await captureWindows({ graph: L.g.encode(true), label: 'gptq final norm', count: hidden.length, feeds, fetches: ['normed'] }, silentContext, (_w, out) => acc.addBatch(out.normed.data as Float32Array));
  await acc.dispose();
  return acc.H;
}

/**
 * One decoder layer during GPTQ: its fp32 linear weights (loaded once), the inputs captured so far
 * per window, and runs of cuts of its capture graph over all windows.
 */
class LayerState {
  private readonly fp32Cache = new Map<string, Float32Array>();
  /** capture point -> per-window captured input [S, width] */
  private readonly cached = new Map<string, Float32Array[]>();

  constructor(
    private readonly base: Model,
    readonly layer: number,
    private readonly weights: Map<string, LazyTensor>,
    private readonly linears: Model['quant']['linears'],
    private readonly maxContext: number,
  ) {}

  /** The fp32 weight W [out, in] of one of the layer's linears (as loaded, before quantization). */
  fp32(spec: LinearSpec): Float32Array {
    let w = this.fp32Cache.get(spec.name);
    if (!w) {
      w = toFloat32(linearWeight(this.base, spec).load());
      this.fp32Cache.set(spec.name, w);
    }
    return w;
  }

  cache(point: string, window: number, x: Float32Array): void {
    let c = this.cached.get(point);
    if (!c) this.cached.set(point, (c = []));
    c[window] = x;
  }

  /** The layer's output x^{i+1} per window (the layer fully quantized). */
  async output(hidden: Float32Array[]): Promise<Float32Array[]> {
    const out: Float32Array[] = [];
    await this.run(hidden, [HIDDEN_STATES_OUT], async (w, res) => void (out[w] = res[HIDDEN_STATES_OUT].data as Float32Array));
    return out;
  }

  /**
   * Runs the cut of the layer graph that produces `outputs` on every window, in order, and hands each
   * window's results to `each`. The model as it stands: quantized linears as MatMulNBits, the others
   * in fp32; no activation or KV quantization, no LoRA branches.
   */
  async run(hidden: Float32Array[], outputs: string[], each: (window: number, res: Record<string, ort.Tensor>) => Promise<void>): Promise<void> {
    const cfg = this.base.config;
    const weights = new Map(this.weights);
    for (const spec of layerLinears(cfg, this.layer))
      if (!this.linears[spec.name]) weights.set(`${spec.name}.weight`, inMemory({ dtype: 'F32', shape: [spec.outFeatures, spec.inFeatures], data: this.fp32(spec) }));
    const view: Model = {
      ...this.base,
      weights,
      quant: { linears: this.linears, activations: {}, kvCache: [] },
      adapters: undefined,
    };
    const g = lowerLayerGraph(view, this.layer, { maxContext: this.maxContext, capture: true, name: `gptq_layer${this.layer}` });
    const cuts = new Map<string, string>(); // cut value -> capture point
    for (const point of this.cached.keys()) cuts.set(captureInput(g, point), point);
    const proto = cutGraph(g, cuts, outputs);
    const label = `gptq layer ${this.layer} → ${outputs.join(', ')}`;
    const kv = kvNames(this.layer);
    const empty = () => new ort.Tensor('float32', new Float32Array(0), kvCacheDims(cfg.numKvHeads, cfg.headDim, 0));
    const feeds = (w: number, inputNames: readonly string[]) => {
      const S = hidden[w].length / cfg.hiddenSize;
      const f: Record<string, ort.Tensor> = {};
      for (const name of inputNames) {
        if (name === HIDDEN_STATES) f[name] = new ort.Tensor('float32', hidden[w], [1, S, cfg.hiddenSize]);
        else if (name === kv.pastKey || name === kv.pastValue) f[name] = empty();
        else {
          const x = this.cached.get(cuts.get(name)!)![w];
          f[name] = new ort.Tensor('float32', x, [1, S, x.length / S]);
        }
      }
      return f;
    };
    await captureWindows({ graph: withInitializers(proto, g.initializers, label), label, count: hidden.length, feeds, fetches: outputs }, silentContext, each);
  }
}

/** The value a capture point exposes (the input of its `/capture/<point>` Identity node). */
function captureInput(g: GraphBuilder, point: string): string {
  const node = g.toModelProto(false).graph!.node!.find((n) => n.name === `/capture/${point}`);
  if (!node?.input?.[0]) throw new UnsupportedModelError(`gptq: the layer graph has no capture point '${point}'`);
  return node.input[0];
}

/**
 * The part of g's graph that computes `outputs` when the values in `cuts` are fed as graph inputs
 * (float32 [1, sequence_length, width]): nodes are kept by walking back from the outputs, stopping at
 * cut values and graph inputs; unused graph inputs are dropped. Initializers are attached later.
 */
function cutGraph(g: GraphBuilder, cuts: Map<string, string>, outputs: string[]): onnxProto.onnx.IModelProto {
  const proto = g.toModelProto(false);
  const graph = proto.graph!;
  const producer = new Map<string, onnxProto.onnx.INodeProto>();
  for (const n of graph.node ?? []) for (const o of n.output ?? []) producer.set(o, n);
  const graphInputs = new Set((graph.input ?? []).map((v) => v.name!));
  const keep = new Set<onnxProto.onnx.INodeProto>();
  const usedInputs = new Set<string>();
  const seen = new Set<string>();
  const stack = [...outputs];
  while (stack.length) {
    const v = stack.pop()!;
    if (seen.has(v)) continue;
    seen.add(v);
    if (cuts.has(v) || graphInputs.has(v)) {
      usedInputs.add(v);
      continue;
    }
    const n = producer.get(v);
    if (!n || keep.has(n)) continue; // an initializer, or already kept
    keep.add(n);
    for (const i of n.input ?? []) if (i) stack.push(i);
  }
  const cutInputs = [...cuts.keys()]
    .filter((v) => usedInputs.has(v))
    .map((name, k) => ({
      name,
      type: { tensorType: { elemType: onnx.TensorProto.DataType.FLOAT, shape: { dim: [{ dimValue: 1 }, { dimParam: 'sequence_length' }, { dimParam: `cut_width_${k}` }] } } },
    }));
  const outSpecs = outputs.map((name) => {
    const spec = (graph.output ?? []).find((o) => o.name === name);
    if (!spec) throw new UnsupportedModelError(`gptq: the layer graph has no output '${name}'`);
    return spec;
  });
  return {
    ...proto,
    graph: {
      ...graph,
      node: (graph.node ?? []).filter((n) => keep.has(n)),
      input: [...(graph.input ?? []).filter((v) => usedInputs.has(v.name!)), ...cutInputs],
      output: outSpecs,
    },
  };
}

/** GPTQ W4 as a {@link Pass}: layer by layer on `ctx.windows`. */
export function gptqPass(options: GptqPassOptions): Pass<GptqPassOptions> {
  return { name: meta.name, requires: meta.requires, stage: 'quantize', options, run: (model, ctx) => gptqModel(model, ctx.windows, options, ctx) };
}
