/**
 * Quantizing with a recipe as `edgellm quantize --recipe` does (parse, resolve, refuse what cannot
 * run, the pass plan of passes/pipeline.ts), with the calibrate pass given the table's per-point
 * widths and observers; and a model's graph run with every QDQ point's input and codes exposed
 * (the 8-bit points' uint8 codes, the 16-bit points' uint16 ones, the KV8 / KV16 rows).
 */
import * as ort from 'onnxruntime-node';
import { parseRecipe } from '../../formats/recipe.js';
import { resolveRecipe, refuseUnsupported } from '../../src/ir/recipe.js';
import { quantizePlan, withPrecision, DEFAULT_QUANTIZE_OPTIONS } from '../../passes/pipeline.js';
import { calibrateRangesPass, type CalibrateOptions } from '../../passes/calibrate-ranges.js';
import { passContext, runPasses } from '../../passes/pass.js';
import { lowerModel } from '../../src/compiler/lower.js';
import { INPUT_IDS, LOGITS, captureName, kvCacheDims, kvNames, kvPoints } from '../../src/compiler/io-contract.js';
import { CheckedSession } from '../../src/engine/session.js';
import { silentContext } from '../../src/core/context.js';
import { activationPoints } from '../../src/ir/architectures.js';
import { activationQdq, type QdqBits } from '../../src/ir/quant.js';
import type { Model, QParams } from '../../src/ir/model.js';
import { kvCacheQdq, kvDtypeOf } from '../../src/ir/kv-quant.js';

/** Points at 16 (layer 0, every down_proj input) and 32 (lm_head_in, layer 3's o_proj_in), the rest 8; four observers. */
export const MIXED_POINTS = `overrides:
  model.layers.0: {act_bits: 16}
  model.layers.*.down_proj_in: {act_bits: 16}
  model.layers.3.o_proj_in: {act_bits: 32}
  lm_head_in: {act_bits: 32}
  model.layers.2.mlp_in: {observer: percentile}
  model.layers.4.attn_in: {observer: minmax}
  model.layers.1.v_cache: {observer: minmax}
`;

/** KV caches of layers 0 and 4 at 16 bits, layer 2 float, layers 1 and 3 at the default 8; layer 1's V cache observed with minmax. */
export const MIXED_KV = `overrides:
  model.layers.0: {kv_bits: 16}
  model.layers.2: {kv_bits: 32}
  model.layers.4: {kv_bits: 16}
  model.layers.1.v_cache: {observer: minmax}
`;
/** The KV width of each layer of {@link MIXED_KV} on stories260K (5 layers). */
export const MIXED_KV_BITS = [16, 8, 32, 8, 16];

/** onnx.proto TensorProto.DataType of the codes' element types. */
const ELEM = { 8: 2, 16: 4 } as const;

/**
 * `base` quantized with the recipe `yaml` on `windows` (the default options otherwise), the model
 * carrying the resolved table as `precision`.
 */
export async function quantizeWithRecipe(base: Model, yaml: string, windows: number[][]): Promise<Model> {
  const resolved = resolveRecipe(parseRecipe(yaml, 'recipe.yaml'), base.config);
  refuseUnsupported(resolved);
  const opts = withPrecision(DEFAULT_QUANTIZE_OPTIONS, resolved.table, base.config);
  const plan = quantizePlan(opts).map((p) => (p.name === 'calibrate' ? calibrateRangesPass({ ...(p.options as CalibrateOptions), precision: resolved.table }) : p));
  const m = await runPasses(base, plan, passContext(silentContext, windows));
  return { ...m, precision: resolved.table };
}

/** One QDQ point of a graph: the float32 values entering its QuantizeLinear and the codes it produced. */
export interface QdqSample {
  point: string;
  params: QParams;
  bits: QdqBits;
  /** [T, features] */
  input: Float32Array;
  codes: Uint8Array | Uint16Array;
}

/** One window through the graph: its logits [T, vocab] and every QDQ point. */
export interface QdqRun {
  logits: Float32Array;
  points: Map<string, QdqSample>;
}

/**
 * The model's graph (the compiled lowering, plus capture outputs and every QuantizeLinear's output)
 * run on each window from position 0: what ORT fed into each QDQ point and the codes it chose.
 * Float activation points have no QuantizeLinear and are not listed.
 */
export async function runQdqGraph(model: Model, windows: number[][]): Promise<QdqRun[]> {
  const T = Math.max(...windows.map((w) => w.length));
  const cfg = model.config;
  const g = lowerModel(model, { seqLen: 'dynamic', maxContext: T, capture: true, name: 'qdq-probe' });
  const points = new Map<string, { output: string; params: QParams; bits: QdqBits }>();
  for (const p of activationPoints(cfg)) {
    const q = activationQdq(model, p, 'test');
    if (q) points.set(p, { output: `/quant/${p}/QuantizeLinear/output_0`, ...q });
  }
  for (let i = 0; i < cfg.numLayers; i++) {
    const q = kvCacheQdq(model, i, 'test'); // float layers have no QuantizeLinear
    if (!q) continue;
    points.set(kvPoints(i).k, { output: kvNames(i).newKey, params: q.k, bits: q.bits });
    points.set(kvPoints(i).v, { output: kvNames(i).newValue, params: q.v, bits: q.bits });
  }
  const proto = g.toModelProto(true);
  for (const [p, s] of points)
    if (!p.endsWith('_cache')) proto.graph!.output!.push({ name: s.output, type: { tensorType: { elemType: ELEM[s.bits], shape: null } } });
  const session = await CheckedSession.create(proto, 'qdq-probe');
  const runs: QdqRun[] = [];
  try {
    for (const w of windows) {
      const feeds: Record<string, ort.Tensor> = { [INPUT_IDS]: new ort.Tensor('int64', BigInt64Array.from(w.map(BigInt)), [1, w.length]) };
      for (let i = 0; i < cfg.numLayers; i++) {
        const type = kvDtypeOf(kvCacheQdq(model, i, 'test'));
        const empty = type === 'uint8' ? new Uint8Array(0) : type === 'uint16' ? new Uint16Array(0) : new Float32Array(0);
        for (const n of [kvNames(i).pastKey, kvNames(i).pastValue]) feeds[n] = new ort.Tensor(type, empty, kvCacheDims(cfg.numKvHeads, cfg.headDim, 0));
      }
      const res = await session.run(feeds, [LOGITS, ...[...points.keys()].map(captureName), ...[...points.values()].map((s) => s.output)]);
      const samples = new Map<string, QdqSample>();
      for (const [p, s] of points)
        samples.set(p, { point: p, params: s.params, bits: s.bits, input: res[captureName(p)].data as Float32Array, codes: res[s.output].data as Uint8Array | Uint16Array });
      runs.push({ logits: res[LOGITS].data as Float32Array, points: samples });
    }
  } finally {
    await session.release();
  }
  return runs;
}
