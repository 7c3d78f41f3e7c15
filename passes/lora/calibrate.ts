/**
 * The calibration runs of `add-lora`, both over one capture graph: the quantized base (its W4
 * weights as MatMulNBits, activations and KV cache in float, as the base's own `calibrate` pass
 * observes them) with one adapter fed as graph inputs (src/compiler/lower.ts, `capture: true`).
 *
 * - {@link loraInputHessians}: H = mean of x·xᵀ of the inputs of the adapted linears (attn_in for
 *   q/k/v, o_proj_in for o, …), float64 [in, in] per input point, for the refit
 *   (passes/lora/refit.ts).
 * - {@link calibrateLora}: static A8 ranges of each intermediate A·x, with the base's observer.
 */
import * as ort from 'onnxruntime-node';
import type { Model, QParams } from '../../src/ir/model.js';
import { lowerModel } from '../../src/compiler/lower.js';
import { captureName, loraPoint } from '../../src/compiler/io-contract.js';
import { actPointName, decoderLinear } from '../../src/ir/architectures.js';
import { EdgeLLMError } from '../../src/core/errors.js';
import { windowFeeds } from '../../calibration/window-feeds.js';
import { captureWindows } from '../../src/engine/capture.js';
import { HessianAccumulator } from '../../calibration/hessian.js';
import { OBSERVERS, type ObserverKind } from '../../calibration/observers.js';
import type { RunContext } from '../../src/core/context.js';
import { loraFeeds } from '../../src/compiler/lora-feeds.js';
import type { LoraAdapterData } from '../../src/ir/lora-storage.js';

/** The observer kind the base's `calibrate` pass used (minmax when unknown). */
function baseObserver(model: Model): ObserverKind {
  const rec = [...model.passes].reverse().find((p) => p.name === 'calibrate');
  const k = rec?.options.observer;
  return typeof k === 'string' && k in OBSERVERS ? (k as ObserverKind) : 'minmax';
}

/**
 * Runs the capture graph of `model` + `adapter` on every window and hands each window's captured
 * `points` (float32 [seq, features] each) to `onWindow`.
 */
async function runAdapterCapture(
  model: Model,
  adapter: LoraAdapterData,
  windows: readonly number[][],
  points: string[],
  label: string,
  ctx: RunContext,
  onWindow: (captured: Record<string, Float32Array>, window: number[]) => Promise<void> | void,
): Promise<void> {
  const single: Model = { ...model, adapters: [{ ...adapter, tensors: new Map() }] };
  const maxLen = Math.max(1, ...windows.map((w) => w.length));
  const g = lowerModel(single, { seqLen: 'dynamic', maxContext: maxLen, capture: true, activationQuant: false, kvQuant: false, name: label });
  const lora: Record<string, ort.Tensor> = {};
  for (const [n, f] of loraFeeds(model, adapter, g.inputSpecs)) lora[n] = new ort.Tensor(f.type, f.data, f.dims);
  const run = { graph: g.toModelProto(true), label: `LoRA ${label} graph`, count: windows.length, feeds: (w: number) => ({ ...lora, ...windowFeeds(model.config, windows[w]) }), fetches: points.map(captureName), progress: label };
  await captureWindows(run, ctx, (w, res) => onWindow(Object.fromEntries(points.map((p) => [p, res[captureName(p)].data as Float32Array])), windows[w]));
}

/** The activation point a decoder linear reads, e.g. `model.layers.3.attn_in` for its q_proj. */
function linearInputPoint(model: Pick<Model, 'config'>, linear: string): string {
  const spec = decoderLinear(model.config, linear);
  if (!spec) throw new EdgeLLMError(`no decoder-layer linear '${linear}'`);
  return actPointName(spec.layer, spec.input);
}

/**
 * Input Hessians of the linears `adapter` adapts, on `windows`, with the adapter applied.
 * @returns input point (`model.layers.{i}.attn_in`, …) -> H = mean x·xᵀ, float64 [in, in] row-major
 */
export async function loraInputHessians(model: Model, adapter: LoraAdapterData, windows: readonly number[][], ctx: RunContext): Promise<Map<string, Float64Array>> {
  const points = [...new Set(adapter.modules.map((m) => linearInputPoint(model, m.linear)))];
  const acc = new Map(points.map((p) => [p, null as HessianAccumulator | null]));
  try {
    await runAdapterCapture(model, adapter, windows, points, 'lora-hessians', ctx, async (captured, w) => {
      for (const p of points) {
        const x = captured[p];
        let a = acc.get(p);
        if (!a) acc.set(p, (a = new HessianAccumulator(x.length / w.length)));
        await a.addBatch(x);
      }
    });
    return new Map(points.map((p) => [p, acc.get(p)!.H]));
  } finally {
    for (const a of acc.values()) await a?.dispose();
  }
}

/**
 * Static A8 ranges of the intermediates A·x of `adapter` on `windows` (the adapter with its
 * quantized A and B), with the observer of the base's `calibrate` pass.
 * @returns linear -> QParams
 */
export async function calibrateLora(model: Model, adapter: LoraAdapterData, windows: readonly number[][], ctx: RunContext): Promise<Map<string, QParams>> {
  const kind = baseObserver(model);
  const obs = new Map(adapter.modules.map((m) => [m.linear, OBSERVERS[kind]()]));
  const points = adapter.modules.map((m) => loraPoint(m.linear));
  await runAdapterCapture(model, adapter, windows, points, 'lora-calib', ctx, (captured) => {
    for (const m of adapter.modules) obs.get(m.linear)!.observe(captured[loraPoint(m.linear)]);
  });
  return new Map([...obs].map(([l, o]) => [l, o.qparams()]));
}
