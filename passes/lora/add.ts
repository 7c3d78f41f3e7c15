/**
 * LoRA adapters on a transformed, quantized base (Hu et al. 2021, "LoRA", §4.1: h = W·x + s·B·A·x).
 *
 * 1. Transform: the base's own function-preserving transforms (folded norms, QuaRot rotations)
 *    carried into A and B (passes/lora/transform.ts, {@link transformAdapter}).
 * 2. Refit A and B, at the same rank, to the W4 base (passes/lora/refit.ts), when the HAR keeps its
 *    fp32 weights.
 * 3. Quantize A and B on their own: int8 symmetric per output channel (row), or 4-bit symmetric
 *    group-wise (the codecs of src/ir/codecs.ts, through src/ir/lora-storage.ts).
 * 4. Calibrate the static A8 range of each intermediate A·x on calibration windows (capture graph of
 *    src/compiler/lower.ts with the adapter fed as graph inputs; passes/lora/calibrate.ts).
 *
 *   PEFT dir ──loadPeftAdapter──> PeftAdapter ──addLora──> model.adapters += { name, A/B codes, A8 }
 *   PEFT dir ──loadPeftAdapter──> PeftAdapter ──mergeLora──> W ← W + s·B·A   (fp32 base only; passes/lora/merge.ts)
 */
import type { Model, LoraAdapter, LazyTensor } from '../../src/ir/model.js';
import { inMemory } from '../../src/ir/model.js';
import { quantizeLoraMatrix, adapterData } from '../../src/ir/lora-storage.js';
import type { PeftAdapter } from '../../formats/peft.js';
import type { RunContext } from '../../src/core/context.js';
import type { Pass } from '../pass.js';
import { transformAdapter, type TransformedModule, type TransformSources } from './transform.js';
import { calibrateLora, loraInputHessians } from './calibrate.js';
import { refitToBase, type LoraRefitSummary } from './refit.js';
import { UsageError } from '../../src/core/errors.js';

export { transformAdapter, type TransformedModule, type TransformSources } from './transform.js';
export type { LoraRefitSummary } from './refit.js';

export const meta = { name: 'add-lora', requires: [] as string[] };

export interface AddLoraOptions {
  /** adapter name (HAR member and `--adapter` selector): letters, digits, `_ . + = @ -` */
  name: string;
  /** storage of A and B: 8 (int8 per output channel, default), 4 (group-wise) or 32 (float) */
  bits: 32 | 8 | 4;
  /** input columns per scale for 4-bit (default 32; capped at the matrix width) */
  groupSize: number;
  /**
   * refit A and B, at the same rank, to the W4 base (passes/lora/refit.ts); default true. Needs
   * `TransformSources.optimized` and calibration windows; without the fp32 weights it is skipped.
   */
  refit?: boolean;
}

export const DEFAULT_ADD_LORA_OPTIONS: Omit<AddLoraOptions, 'name'> = { bits: 8, groupSize: 32 };

const NAME = /^[A-Za-z0-9_.+=@-]{1,64}$/;

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

/** What adding an adapter to a base involves, decided once for the command and the pass. */
export interface AddLoraPlan {
  /** refit A and B to the W4 base */
  refit: boolean;
  /** why no refit although it was asked for and the base has W4 linears the adapter adapts ('no-fp32': the HAR keeps no fp32 weights) */
  refitSkipped?: 'no-fp32';
  /** static A8 ranges of the intermediates A·x are calibrated (the base quantizes activations) */
  calibrateActivations: boolean;
  /** calibration windows are needed (refit or A8 calibration) */
  needsWindows: boolean;
}

/**
 * Decides whether the adapter is refit and whether its intermediates are calibrated: the refit needs
 * W4 linears among the adapted ones to refit against and the HAR's fp32 weights
 * (`hasOptimized`) to refit towards; A8 calibration follows the base's activation quantization.
 * @param linears the linears the adapter adapts
 */
export function planAddLora(model: Pick<Model, 'quant'>, linears: readonly string[], opts: Pick<AddLoraOptions, 'refit'>, hasOptimized: boolean): AddLoraPlan {
  const wanted = opts.refit !== false && linears.some((l) => model.quant.linears[l]);
  const refit = wanted && hasOptimized;
  const calibrateActivations = Object.keys(model.quant.activations).length > 0;
  return { refit, ...(wanted && !hasOptimized ? { refitSkipped: 'no-fp32' as const } : {}), calibrateActivations, needsWindows: refit || calibrateActivations };
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
export async function addLora(model: Model, peft: PeftAdapter, opts: AddLoraOptions, windows: readonly number[][], ctx: RunContext, src: TransformSources = {}): Promise<Model> {
  if (!NAME.test(opts.name)) throw new UsageError(`--name '${opts.name}': use 1-64 letters, digits or _ . + = @ -`);
  if ((model.adapters ?? []).some((a) => a.name === opts.name)) throw new UsageError(`--name '${opts.name}': the HAR already has an adapter of that name`);
  if (![32, 8, 4].includes(opts.bits)) throw new UsageError(`--lora-bits ${opts.bits}: must be 8, 4 or 32 (float)`);
  if (opts.bits === 4 && (!Number.isInteger(opts.groupSize) || opts.groupSize < 2 || opts.groupSize % 2 !== 0))
    throw new UsageError(`--lora-group-size ${opts.groupSize}: must be an even integer ≥ 2`);
  const { modules: tmods, applied } = transformAdapter(peft, model, src);
  const build = (mods: TransformedModule[], bits: 32 | 8 | 4) => buildAdapter(opts.name, peft, mods, bits, opts.groupSize, applied);
  const plan = planAddLora(model, tmods.map((m) => m.linear), opts, src.optimized !== undefined);
  const w = windows;
  let mods = tmods;
  let refit: LoraRefitSummary | undefined;
  if (plan.refitSkipped) ctx.log(`add-lora ${opts.name}: not refit to the quantized base: the HAR keeps no fp32 weights (quantized with --no-emulation-weights)`);
  if (plan.refit) {
    if (w.length === 0) throw new UsageError('add-lora: refitting the adapter to the quantized base needs calibration windows (or --no-refit)');
    ctx.log(`add-lora ${opts.name}: refitting to the W4 base on ${w.length} windows`);
    const H = await loraInputHessians(model, adapterData(build(tmods, 32)), w, ctx);
    ({ modules: mods, summary: refit } = await refitToBase(model, src.optimized!, tmods, H, w.length, ctx));
  }
  const adapter = build(mods, opts.bits);
  if (refit) adapter.source.refit = refit;
  if (plan.calibrateActivations) {
    if (w.length === 0) throw new UsageError('add-lora: the base quantizes activations (static A8), so calibration windows are needed for the adapter');
    ctx.log(`add-lora ${opts.name}: calibrating ${adapter.modules.length} intermediates on ${w.length} windows`);
    const ranges = await calibrateLora(model, adapterData(adapter), w, ctx);
    for (const m of adapter.modules) m.act = ranges.get(m.linear);
  }
  return { ...model, adapters: [...(model.adapters ?? []), adapter] };
}

export interface AddLoraPassOptions extends AddLoraOptions {
  peft: PeftAdapter;
  sources?: TransformSources;
}

/** add-lora as a {@link Pass}: the adapter appended to `model.adapters`, calibrated on `ctx.windows`. */
export function addLoraPass(options: AddLoraPassOptions): Pass<AddLoraPassOptions> {
  return { name: meta.name, requires: meta.requires, stage: 'source', options, run: (model, ctx) => addLora(model, options.peft, options, ctx.windows, ctx, options.sources) };
}
