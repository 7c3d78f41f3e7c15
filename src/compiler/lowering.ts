/**
 * The building blocks of the lowering (src/compiler/lower.ts): one {@link Lowering} per graph holds
 * the builder, the model and the mode flags, and emits the recurring pieces — RMSNorm, RoPE, a
 * linear (float Gemm or 4/8-bit MatMulNBits), a static A8 or A16 QDQ point, a KV-cache append at
 * the layer's width (KV8, KV16 or float) — with path-style node names.
 */
import { GraphBuilder, type ElemType } from '../../formats/onnx.js';
import type { Model, QParams } from '../ir/model.js';
import { activationQdq, type QdqBits } from '../ir/quant.js';
import { kvCacheQdq, kvDtypeOf, type KvCacheQdq } from '../ir/kv-quant.js';
import { actPointName, lmHead, sharesQuantizedEmbedding, type LinearSpec, type LinearInput } from '../ir/architectures.js';
import { toFloat32, type Tensor } from '../ir/tensor.js';
import { UnsupportedModelError } from '../core/errors.js';
import { captureName, kvQuantNames, loraInputNames, loraPoint } from './io-contract.js';
import { kvZeroPoint } from './kv-layout.js';

/** onnx.proto TensorProto.DataType UINT16 (the Cast target of a 16-bit activation point's zero point). */
const ONNX_UINT16 = 4;

/** Mode flags of one lowering. */
export interface LoweringFlags {
  /** emit `capture.<point>` outputs at every quantization point */
  capture: boolean;
  /** apply the model's static A8 ranges */
  actQuant: boolean;
  /** hold each layer's KV cache at the width of the model's KV ranges (uint8 KV8, uint16 KV16, float32 where a layer has none) */
  kvQuant: boolean;
  /** add the LoRA branch (graph inputs `lora.<linear>.*`) to the linears the model's adapters target; default true */
  lora?: boolean;
}


export class Lowering {
  private readonly weightCache = new Map<string, Tensor>();
  /** linear -> LoRA rank of its graph inputs (the largest over the model's adapters); empty: no LoRA */
  readonly loraRanks = new Map<string, number>();

  constructor(
    readonly g: GraphBuilder,
    readonly model: Model,
    readonly flags: LoweringFlags,
  ) {
    if (flags.lora ?? true)
      for (const a of model.adapters ?? []) for (const m of a.modules) this.loraRanks.set(m.linear, Math.max(m.rank, this.loraRanks.get(m.linear) ?? 0));
  }

  /** Reads a model tensor once per lowering. @throws UnsupportedModelError when missing */
  load(name: string): Tensor {
    let t = this.weightCache.get(name);
    if (!t) {
      const lt = this.model.weights.get(name);
      if (!lt) throw new UnsupportedModelError(`lowering: weight '${name}' is missing from the model`);
      t = lt.load();
      this.weightCache.set(name, t);
    }
    return t;
  }

  /** A model tensor as a float32 initializer under its own name. */
  floatWeight(name: string): string {
    return this.g.weight(name, () => ({ dtype: 'F32', shape: this.load(name).shape, data: toFloat32(this.load(name)) }));
  }

  reshape(x: string, shape: number[], name: string): string {
    return this.g.node('Reshape', [x, this.g.ints(shape)], { name });
  }

  transpose(x: string, perm: number[], name: string): string {
    return this.g.node('Transpose', [x], { name, attrs: { perm } });
  }

  /**
   * Token embedding lookup, ids int64 [1, S] -> float32 [1, S, H]: a Gather on the float table, or,
   * when the tied lm_head is weight-quantized ({@link sharesQuantizedEmbedding}), com.microsoft
   * GatherBlockQuantized on the lm_head's own MatMulNBits initializer (uint8 [V, n_blocks, group/2],
   * default zero point 8; its scales viewed as [V, n_blocks, 1]), so one 4-bit copy serves both.
   */
  embedding(ids: string): string {
    const g = this.g;
    const cfg = this.model.config;
    if (!sharesQuantizedEmbedding(this.model)) {
      this.floatWeight('model.embed_tokens.weight');
      return g.node('Gather', ['model.embed_tokens.weight', ids], { name: '/model/embed_tokens/Gather', attrs: { axis: 0 } });
    }
    const head = lmHead(cfg);
    const lq = this.model.quant.linears[head.name];
    const [qweight, scales] = this.nbitsWeights(head.name);
    const nb = cfg.hiddenSize / lq.groupSize;
    const sc = this.reshape(scales, [cfg.vocabSize, nb, 1], '/model/embed_tokens/scales');
    const rows = g.node('GatherBlockQuantized', [qweight, ids, sc], {
      name: '/model/embed_tokens/GatherBlockQuantized',
      domain: 'com.microsoft',
      attrs: { gather_axis: 0, quantize_axis: 2, block_size: lq.groupSize, bits: lq.bits },
    }); // [1, S, n_blocks, group]
    return this.reshape(rows, [0, 0, cfg.hiddenSize], '/model/embed_tokens/rows');
  }

  /** The `.qweight` (uint8 [N, n_blocks, group/2]) and flat `.scales` (float32 [N·n_blocks]) initializers of a weight-quantized linear. */
  private nbitsWeights(linear: string): [string, string] {
    this.g.weight(`${linear}.qweight`, () => this.load(`${linear}.qweight`));
    this.g.weight(`${linear}.scales`, () => {
      const sc = this.load(`${linear}.scales`);
      return { dtype: 'F32', shape: [sc.data.length], data: toFloat32(sc) };
    });
    return [`${linear}.qweight`, `${linear}.scales`];
  }

  /**
   * RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x²) + eps) · γ, over the last axis, as
   * Pow → ReduceMean → Add → Sqrt → Div → Mul: the pattern onnxruntime fuses into one
   * SimplifiedLayerNormalization kernel (its SimplifiedLayerNormFusion), 6 nodes fewer per norm.
   */
  rmsNorm(x: string, weight: string, name: string): string {
    const g = this.g;
    const w = this.floatWeight(weight);
    const sqr = g.node('Pow', [x, g.floats([2], true)], { name: `${name}/Pow` });
    const mean = g.node('ReduceMean', [sqr], { name: `${name}/ReduceMean`, attrs: { axes: [-1], keepdims: 1 } });
    const eps = g.node('Add', [mean, g.floats([this.model.config.rmsNormEps], true)], { name: `${name}/AddEps` });
    const rms = g.node('Sqrt', [eps], { name: `${name}/Sqrt` });
    return g.node('Mul', [g.node('Div', [x, rms], { name: `${name}/Normalize` }), w], { name: `${name}/Scale` });
  }

  /** scale (float32 scalar) and zero point (uint8 scalar) constants. */
  qparams(p: QParams, name: string): [string, string] {
    return [
      this.g.constant({ dtype: 'F32', shape: [], data: Float32Array.of(p.scale) }, `${name}_scale`),
      this.g.constant({ dtype: 'U8', shape: [], data: Uint8Array.of(p.zeroPoint) }, `${name}_zp`),
    ];
  }

  /**
   * How layer `layer`'s KV cache executes in this graph (src/ir/kv-quant.ts kvCacheQdq): KV8, KV16,
   * or null (float32) for a float layer or when the graph holds no quantized cache (flags.kvQuant off).
   * @throws UnsupportedModelError as kvCacheQdq (ranges of another width than the precision table)
   */
  kvQdq(layer: number): KvCacheQdq | null {
    return this.flags.kvQuant ? kvCacheQdq(this.model, layer, 'lowering') : null;
  }

  /** Element type of layer `layer`'s `past_key_values` / `new_key_values`: uint8, uint16 or float32. */
  kvType(layer: number): ElemType {
    return kvDtypeOf(this.kvQdq(layer));
  }

  /**
   * The KV8/KV16 scale (float32 []) and zero point (uint8 [] or uint16 []) of a cache point
   * (`model.layers.{i}.k_cache` / `.v_cache`) as initializers named by io-contract's `kvQuantNames`:
   * the values the KV layout states (src/compiler/kv-layout.ts kvLayoutInitializers), not graph constants.
   */
  private kvQParams(p: QParams, bits: QdqBits, point: string): [string, string] {
    const m = /^model\.layers\.(\d+)\.(k|v)_cache$/.exec(point);
    if (!m) throw new UnsupportedModelError(`lowering: '${point}' is not a KV-cache point`);
    const n = kvQuantNames(Number(m[1]));
    const [scale, zeroPoint] = m[2] === 'k' ? [n.kScale, n.kZeroPoint] : [n.vScale, n.vZeroPoint];
    return [
      this.g.weight(scale, () => ({ dtype: 'F32', shape: [], data: Float32Array.of(p.scale) })),
      this.g.weight(zeroPoint, () => kvZeroPoint({ zeroPoint: p.zeroPoint, bits })),
    ];
  }

  /** Exposes x as `capture.<point>` when capturing. */
  capture(x: string, point: string): void {
    if (!this.flags.capture) return;
    this.g.node('Identity', [x], { name: `/capture/${point}`, outputNames: [captureName(point)] });
    this.g.output(captureName(point), 'float32', null);
  }

  /**
   * Static fake quantization at an activation point, x: float32 [1, S, features] -> the same, at the
   * width the model gives the point (src/ir/quant.ts activationQdq):
   * - 8 bits: ai.onnx QuantizeLinear → DequantizeLinear (opset 17) with a uint8 zero point;
   * - 16 bits: com.microsoft QuantizeLinear → DequantizeLinear with a uint16 zero point (a Cast of an
   *   int32 constant, folded by ORT when the session loads), nodes `/quant/<point>/QuantizeLinear`
   *   (output uint16) and `/quant/<point>/DequantizeLinear`. The contrib ops take uint16 at the
   *   graph's opset 17 (onnxruntime docs/ContribOperators.md, com.microsoft.QuantizeLinear: T2
   *   int8, uint8, int16, uint16; the CPU kernel is the one of ai.onnx QuantizeLinear, same
   *   y = saturate(round½even(x / y_scale) + y_zero_point)); ai.onnx QuantizeLinear takes uint16
   *   only from opset 21, which would change the signature of other ops of the graph (ReduceMean,
   *   Split from 18). test/passes/act-precision.test.ts checks ORT's codes equal quantizeLinear;
   * - 32 bits (float): nothing, x is returned.
   * The point's `capture.<point>` output (calibration) is emitted in every case.
   * @throws UnsupportedModelError as activationQdq (a missing range, or one for another width)
   */
  actPoint(x: string, layer: number, input: LinearInput): string {
    const point = actPointName(layer, input);
    this.capture(x, point);
    if (!this.flags.actQuant) return x;
    const qdq = activationQdq(this.model, point, 'lowering');
    if (!qdq) return x;
    const name = `/quant/${point}`;
    if (qdq.bits === 8) {
      const [s, z] = this.qparams(qdq.params, point);
      return this.qdq(x, s, z, name);
    }
    const s = this.g.constant({ dtype: 'F32', shape: [], data: Float32Array.of(qdq.params.scale) }, `${point}_scale`);
    const zp32 = this.g.constant({ dtype: 'I32', shape: [], data: Int32Array.of(qdq.params.zeroPoint) }, `${point}_zp`);
    const z = this.g.node('Cast', [zp32], { name: `${name}/ZeroPointU16`, attrs: { to: ONNX_UINT16 } });
    return this.qdq(x, s, z, name, 'com.microsoft');
  }

  /** QuantizeLinear → DequantizeLinear of x with scale s and zero point z, nodes `<name>/QuantizeLinear` and `<name>/DequantizeLinear` (ai.onnx, or `domain`). */
  private qdq(x: string, s: string, z: string, name: string, domain?: string): string {
    const q = this.g.node('QuantizeLinear', [x, s, z], { name: `${name}/QuantizeLinear`, ...(domain ? { domain } : {}) });
    return this.g.node('DequantizeLinear', [q, s, z], { name: `${name}/DequantizeLinear`, ...(domain ? { domain } : {}) });
  }

  /**
   * y = x·Wᵀ (+ b), x: [1, S, in] -> [1, S, out]. A weight-quantized linear is com.microsoft
   * MatMulNBits (bits 4, block_size = group size, default zero point 8); a float one is Gemm(transB)
   * on the stored [out, in] weight (a tied lm_head reads the embedding table itself).
   */
  linear(x: string, spec: LinearSpec, path: string): string {
    const g = this.g;
    const lq = this.model.quant.linears[spec.name];
    let y: string;
    if (lq) {
      const [qweight, scales] = this.nbitsWeights(spec.name);
      y = g.node('MatMulNBits', [x, qweight, scales], {
        name: `${path}/MatMulNBits`,
        domain: 'com.microsoft',
        attrs: { K: spec.inFeatures, N: spec.outFeatures, bits: lq.bits, block_size: lq.groupSize },
      });
    } else {
      const wname = spec.role === 'lm_head' && !this.model.weights.has('lm_head.weight') ? 'model.embed_tokens.weight' : `${spec.name}.weight`;
      this.floatWeight(wname);
      const flat = this.reshape(x, [-1, spec.inFeatures], `${path}/Flatten`);
      const gemm = g.node('Gemm', [flat, wname], { name: `${path}/Gemm`, attrs: { transB: 1 } });
      y = this.reshape(gemm, [1, -1, spec.outFeatures], `${path}/Unflatten`);
    }
    if (spec.hasBias) y = g.node('Add', [y, this.floatWeight(`${spec.name}.bias`)], { name: `${path}/BiasAdd` });
    if (this.loraRanks.has(spec.name)) y = this.loraBranch(x, y, spec, path);
    return y;
  }

  /**
   * LoRA (Hu et al. 2021, §4.1) as a runtime-switchable branch: y + ((x·Aᵀ)·Bᵀ) with A [r, in] and
   * the pre-scaled B [out, r] fed as graph inputs ({@link loraInputNames}), and a static A8 QDQ
   * point on the intermediate x·Aᵀ [S, r] when the model quantizes activations. Zero A and B add
   * exact zeros, so "no adapter" reproduces the base output bit for bit.
   */
  private loraBranch(x: string, y: string, spec: LinearSpec, path: string): string {
    const g = this.g;
    const n = loraInputNames(spec.name);
    const flat = this.reshape(x, [-1, spec.inFeatures], `${path}/lora/Flatten`);
    let h = g.node('Gemm', [flat, n.A], { name: `${path}/lora/A`, attrs: { transB: 1 } }); // [S, r]
    this.capture(h, loraPoint(spec.name));
    if (this.flags.actQuant) {
      h = this.qdq(h, n.scale, n.zeroPoint, `${path}/lora`);
    }
    const d = g.node('Gemm', [h, n.B], { name: `${path}/lora/B`, attrs: { transB: 1 } }); // [S, out]
    return g.node('Add', [y, this.reshape(d, [1, -1, spec.outFeatures], `${path}/lora/Unflatten`)], { name: `${path}/lora/Add` });
  }

  /** Declares the LoRA graph inputs of the linears in `specs` that an adapter targets. */
  loraInputs(specs: LinearSpec[]): void {
    for (const s of specs) {
      const r = this.loraRanks.get(s.name);
      if (r === undefined) continue;
      const n = loraInputNames(s.name);
      // symbolic rank: each adapter is fed at its own rank, "no adapter" at rank 0 (src/compiler/lora-feeds.ts)
      const rank = `lora_rank.${s.name}`;
      this.g.input(n.A, 'float32', [rank, s.inFeatures]);
      this.g.input(n.B, 'float32', [s.outFeatures, rank]);
      if (this.flags.actQuant) {
        this.g.input(n.scale, 'float32', []);
        this.g.input(n.zeroPoint, 'uint8', []);
      }
    }
  }

  /** Rotate-half RoPE on t: [1, S, heads, hd] with cos/sin: [1, S, 1, hd/2]. */
  rope(t: string, cos: string, sin: string, name: string): string {
    const g = this.g;
    const hd = this.model.config.headDim;
    const half = hd / 2;
    const x1 = g.node('Slice', [t, g.ints([0]), g.ints([half]), g.ints([3])], { name: `${name}/x1` });
    const x2 = g.node('Slice', [t, g.ints([half]), g.ints([hd]), g.ints([3])], { name: `${name}/x2` });
    const m = (a: string, b: string, n: string) => g.node('Mul', [a, b], { name: `${name}/${n}` });
    const r1 = g.node('Sub', [m(x1, cos, 'x1cos'), m(x2, sin, 'x2sin')], { name: `${name}/r1` });
    const r2 = g.node('Add', [m(x2, cos, 'x2cos'), m(x1, sin, 'x1sin')], { name: `${name}/r2` });
    return g.node('Concat', [r1, r2], { name: `${name}/Concat`, attrs: { axis: 3 } });
  }

  /**
   * K-cache centering: k − c for the post-RoPE k [1, S, kv, hd], c = model.quant.kCacheOffset[layer]
   * read as the initializer `kvQuantNames(layer).kOffset` float32 [1, 1, kv, hd] (built from the KV
   * layout) (exact for attention; see passes/k-centering.ts).
   * @throws UnsupportedModelError when the offset does not have kv·hd values
   */
  kCenter(k: string, layer: number, offset: readonly number[], name: string): string {
    const { numKvHeads: nKv, headDim: hd } = this.model.config;
    if (offset.length !== nKv * hd) throw new UnsupportedModelError(`lowering: layer ${layer} K-cache offset has ${offset.length} values, expected ${nKv * hd}`);
    const c = this.g.weight(kvQuantNames(layer).kOffset, () => ({ dtype: 'F32', shape: [1, 1, nKv, hd], data: Float32Array.from(offset) }));
    return this.g.node('Sub', [k, c], { name });
  }

  /**
   * The cache step of K or V: this call's rows `fresh` [1, S, kv, hd] become the graph output
   * `rows` and are appended to the past cache [1, P, kv, hd] (sequence-major, io-contract.ts);
   * returns the float cache [1, T, kv, hd] that attention reads. At the layer's width (`q`: K's or
   * V's params and the layer's bits, from {@link kvQdq}):
   * - KV8: ai.onnx QuantizeLinear (uint8 rows), Concat, DequantizeLinear (opset 17);
   * - KV16: com.microsoft QuantizeLinear (uint16 rows), Concat, com.microsoft DequantizeLinear — the
   *   contrib ops take uint16 at opset 17 (onnxruntime docs/ContribOperators.md, T2: int8, uint8,
   *   int16, uint16), with the same y = saturate(round½even(x / scale) + zero_point);
   * - float (q null): Identity rows, Concat.
   */
  cacheAppend(fresh: string, past: string, rows: string, point: string, q: { params: QParams; bits: QdqBits } | null, name: string): string {
    const g = this.g;
    this.capture(fresh, point);
    if (!q) {
      g.node('Identity', [fresh], { name: `${name}/Rows`, outputNames: [rows] });
      return g.node('Concat', [past, rows], { name: `${name}/Concat`, attrs: { axis: 1 } });
    }
    const domain = q.bits === 16 ? { domain: 'com.microsoft' } : {};
    const [s, z] = this.kvQParams(q.params, q.bits, point);
    g.node('QuantizeLinear', [fresh, s, z], { name: `${name}/QuantizeLinear`, outputNames: [rows], ...domain });
    const all = g.node('Concat', [past, rows], { name: `${name}/Concat`, attrs: { axis: 1 } });
    return g.node('DequantizeLinear', [all, s, z], { name: `${name}/DequantizeLinear`, ...domain });
  }
}
