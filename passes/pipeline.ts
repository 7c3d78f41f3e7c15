/**
 * The ordered pass list of `edgellm quantize`, built from options in one place ({@link quantizePlan},
 * as TypeScript's `getScriptTransformers` does), every pass under the one contract of passes/pass.ts.
 * Order constraints are checked once, through each pass's `requires`, before the first pass runs.
 *
 *   HF model ─ [merge-lora] ─ fold-norms ─ quarot (R1, R2 [+ online R3/R4]) ─ gptq | rtn (W4, or per linear)
 *                             └──────── only with `rotate` ────────┘
 *            ─ [k-centering] ─ calibrate (A8 + KV8) ─> HAR
 *
 * - fold-norms before quarot: R1 commutes with RMSNorm only once γ is folded into the linears.
 * - Weights are quantized after rotation (GPTQ/RTN see the rotated weights, QuaRot §4).
 * - Ranges are calibrated last, on the model as it will execute (rotated, W4 weights).
 *
 * The model after fold/rotate (fp32, the "optimized" emulation level) is returned beside the
 * quantized one so the HAR can keep it for `eval --emulate optimized`.
 *
 * Precision: uniform from the options (the CLI flags), or per module from a recipe's resolved
 * {@link PrecisionTable} ({@link withPrecision}; `quantize --recipe`): the weight passes then quantize
 * every linear at its own bits, group size and method (gptq runs when any linear asks for GPTQ; its
 * 'rtn' linears are rounded in sequence), and the quantized Model carries the table (`precision`,
 * recorded in the HAR manifest).
 */
import type { Model, ModelConfig } from '../src/ir/model.js';
import type { RunContext } from '../src/core/context.js';
import type { PeftAdapter } from '../formats/peft.js';
import { rtn, rtnPass, type RtnOptions } from './rtn.js';
import { gptqPass } from './gptq-sequential.js';
import { foldNormsPass } from './fold-norms.js';
import { quarot, quarotPass, meta as quarotMeta, type QuarotOptions } from './quarot.js';
import { calibrateRangesPass } from './calibrate-ranges.js';
import { kCenteringPass } from './k-centering.js';
import { mergeLoraPass } from './lora/merge.js';
import { passContext, runPasses, type Pass, type PassContext } from './pass.js';
import type { ObserverKind } from '../calibration/observers.js';
import type { PrecisionTable } from '../src/ir/precision.js';
import { lmHead } from '../src/ir/architectures.js';
import { DEFAULT_SETTINGS, BUILTIN_OVERRIDES } from '../src/ir/recipe.js';
import { compile } from '../src/compiler/compile.js';
import { SimulatorBackend } from '../src/runtime/simulator.js';
import { perplexity } from '../src/eval/ppl.js';

export interface QuantizeOptions {
  /** weight group size (MatMulNBits block size) */
  groupSize: number;
  /** weight quantizer: GPTQ (default) or round-to-nearest */
  method: 'gptq' | 'rtn';
  /** quantize lm_head to W4 too (default true; a tied embedding then shares its table) */
  quantizeLmHead: boolean;
  /**
   * lm_head's group size (default 16): the head is the most sensitive linear to W4 (stories260K,
   * TinyStories ppl: float head 6.737, W4 g32 6.912, W4 g16 6.800; scripts/accuracy-gate.sh)
   */
  lmHeadGroupSize: number;
  /** static 8-bit activation quantization at every linear input (default true) */
  activationQuant: boolean;
  /** static 8-bit KV-cache quantization (default true) */
  kvQuant: boolean;
  /** range observer of A8/KV8 */
  observer: ObserverKind;
  /** K-cache centering before the KV8 ranges (passes/k-centering.ts; default true, only with kvQuant) */
  kCentering: boolean;
  /** apply fold-norms + QuaRot before quantizing */
  rotate: boolean;
  /** first QuaRot seed */
  rotationSeed: number;
  /** try this many seeds (rotationSeed, +1, …) and keep the one with the lowest calibration loss */
  rotationSeeds: number;
  /** online Hadamards emitted as graph ops */
  onlineHadamard: { r3: boolean; r4: boolean };
  /** GPTQ: damping fraction of mean(diag H) */
  percDamp: number;
  /** GPTQ: act-order with static groups */
  actOrder: boolean;
  /**
   * the resolved recipe (src/ir/recipe.ts): every linear's bits/group size/method is read from it;
   * set it with {@link withPrecision}, which makes the uniform fields above agree with it
   */
  precision?: PrecisionTable;
}

/**
 * The default recipe. On stories260K (TinyStories ppl, fp32 6.237): GPTQ W4 g32 + K-cache centering +
 * MSE-clipped A8/KV8 6.737, against 6.785 without K-centering, 6.832 with min/max ranges and 6.913
 * with g64 (see docs/quantization.md).
 */
export const DEFAULT_QUANTIZE_OPTIONS: QuantizeOptions = {
  // the default recipe's (src/ir/recipe.ts DEFAULT_SETTINGS and BUILTIN_OVERRIDES: lm_head group 16)
  groupSize: DEFAULT_SETTINGS.group_size,
  method: DEFAULT_SETTINGS.weight_method,
  quantizeLmHead: true,
  lmHeadGroupSize: BUILTIN_OVERRIDES[0].settings.group_size!,
  activationQuant: true,
  kvQuant: true,
  observer: DEFAULT_SETTINGS.observer,
  kCentering: true,
  rotate: false,
  rotationSeed: 0,
  rotationSeeds: 1,
  onlineHadamard: { r3: false, r4: false },
  percDamp: 0.01,
  actOrder: false,
};

export interface QuantizeResult {
  /** the quantized model (W4 + ranges) */
  quantized: Model;
  /** the fp32 model the quantization approximates: the input after the source passes (merge-lora), before any transform */
  native: Model;
  /** the fp32 model after fold-norms/QuaRot (`native` when not rotating) */
  optimized: Model;
  /** rotation seed search: seed -> calibration NLL (nats/token) of its RTN proxy */
  seedSearch?: { seed: number; meanNll: number }[];
}

/**
 * Calibration loss of a rotation: NLL (nats/token) of the W4-RTN-quantized rotated model on
 * `windows`. A cheap proxy of the final recipe used to rank seeds; never looks at evaluation text.
 */
async function rotationLoss(rotated: Model, opts: RtnOptions, windows: number[][], ctx: RunContext): Promise<number> {
  const w4 = rtn(rotated, opts, ctx);
  const backend = await SimulatorBackend.load(compile(w4, { prefillLen: Math.max(...windows.map((w) => w.length)) }));
  const r = await perplexity(backend, windows);
  await backend.dispose();
  return r.meanNll;
}

/**
 * QuaRot choosing its seed: with `seeds` > 1 every seed `seed`, `seed + 1`, … is tried and the one
 * whose W4-RTN proxy has the lowest calibration loss on (up to 32 of) `ctx.windows` is kept.
 * The search result is left in {@link QuarotSearchPass.seedSearch}.
 */
interface QuarotSearchPass extends Pass<QuarotOptions & { seeds: number }> {
  seedSearch?: { seed: number; meanNll: number }[];
}

function quarotSearchPass(options: QuarotOptions & { seeds: number }, proxy: RtnOptions): QuarotSearchPass {
  const base = quarotPass(options);
  if (options.seeds <= 1) return { ...base, options };
  const pass: QuarotSearchPass = {
    ...base,
    options,
    async run(folded: Model, ctx: PassContext): Promise<Model> {
      const probe = ctx.windows.slice(0, Math.min(ctx.windows.length, 32)) as number[][];
      const search: { seed: number; meanNll: number }[] = [];
      const bar = ctx.progress('seeds', options.seeds);
      for (let s = options.seed; s < options.seed + options.seeds; s++) {
        search.push({ seed: s, meanNll: await rotationLoss(quarot(folded, { seed: s, online: options.online }, ctx), proxy, probe, ctx) });
        bar.tick();
      }
      bar.done();
      const best = search.reduce((a, b) => (b.meanNll < a.meanNll ? b : a));
      ctx.log(`rotation seed ${best.seed} (calibration NLL ${best.meanNll.toFixed(4)})`);
      pass.seedSearch = search;
      return quarot(folded, { seed: best.seed, online: options.online }, ctx);
    },
  };
  return pass;
}

/**
 * The pass list of `quantize` for `opts`, in order: the one place the order is written.
 * @param mergeLora a PEFT adapter merged into the fp32 weights first (`quantize --merge-lora`)
 */
export function quantizePlan(opts: QuantizeOptions, mergeLora?: PeftAdapter): Pass[] {
  const lin: RtnOptions = { groupSize: opts.groupSize, quantizeLmHead: opts.quantizeLmHead, lmHeadGroupSize: opts.lmHeadGroupSize };
  if (opts.precision) lin.linears = opts.precision.linears; // per linear; the fields above are then only their summary
  return [
    ...(mergeLora ? [mergeLoraPass({ peft: mergeLora })] : []),
    ...(opts.rotate ? [foldNormsPass(), quarotSearchPass({ seed: opts.rotationSeed, online: opts.onlineHadamard, seeds: opts.rotationSeeds }, lin)] : []),
    opts.method === 'gptq' ? gptqPass({ ...lin, percDamp: opts.percDamp, actOrder: opts.actOrder }) : rtnPass(lin),
    ...(opts.kvQuant && opts.kCentering ? [kCenteringPass()] : []),
    // a recipe's table gives every point its own width (8, 16, 32) and observer; the flags are then its summary
    ...(opts.activationQuant || opts.kvQuant
      ? [calibrateRangesPass({ observer: opts.observer, activations: opts.activationQuant, kvCache: opts.kvQuant, ...(opts.precision ? { precision: opts.precision } : {}) })]
      : []),
  ];
}

/**
 * Runs the quantization pipeline ({@link quantizePlan}) on `model` with calibration `windows`
 * (token ids); the order is checked once, before the first pass runs.
 * @throws PassOrderError, UsageError (bad options), FormatError (unreadable weights)
 */
export async function quantizeModel(model: Model, opts: QuantizeOptions, windows: number[][], ctx: RunContext, mergeLora?: PeftAdapter): Promise<QuantizeResult> {
  const plan = quantizePlan(opts, mergeLora);
  let native = model;
  let optimized = model;
  const quantized = await runPasses(model, plan, passContext(ctx, windows), (p, m) => {
    if (p.stage === 'source') native = optimized = m;
    if (p.stage === 'transform') optimized = m;
  });
  const search = plan.find((p): p is QuarotSearchPass => p.name === quarotMeta.name) as QuarotSearchPass | undefined;
  return { quantized: opts.precision ? { ...quantized, precision: opts.precision } : quantized, native, optimized, seedSearch: search?.seedSearch };
}

/**
 * `base` with its precision taken from a resolved recipe: `precision` = the table, and the uniform
 * fields made to agree with it — method gptq when any linear asks for GPTQ (else rtn), groupSize the
 * most common group size of the quantized decoder linears, quantizeLmHead / lmHeadGroupSize from
 * lm_head's entry, activationQuant / kvQuant when those points are quantized (not 32), observer that
 * of the first quantized point (a summary: the calibrate pass reads each point's own from the table).
 */
export function withPrecision(base: QuantizeOptions, table: PrecisionTable, cfg: ModelConfig): QuantizeOptions {
  const headName = lmHead(cfg).name;
  const head = table.linears[headName];
  const entries = Object.entries(table.linears).filter(([, p]) => p.bits !== 32);
  const counts = new Map<number, number>();
  for (const [n, p] of entries) if (n !== headName) counts.set(p.groupSize, (counts.get(p.groupSize) ?? 0) + 1);
  const common = [...counts].sort((a, b) => b[1] - a[1] || a[0] - b[0])[0]?.[0];
  const points = [...Object.values(table.activations), ...table.kvCache.flatMap((kv) => [kv.k, kv.v])].filter((p) => p.bits !== 32);
  return {
    ...base,
    method: entries.some(([, p]) => p.method === 'gptq') ? 'gptq' : 'rtn',
    groupSize: common ?? base.groupSize,
    quantizeLmHead: head.bits !== 32,
    lmHeadGroupSize: head.bits !== 32 ? head.groupSize : base.lmHeadGroupSize,
    activationQuant: Object.values(table.activations).some((p) => p.bits !== 32),
    kvQuant: table.kvCache.some((kv) => kv.k.bits !== 32),
    observer: points[0]?.observer ?? base.observer,
    precision: table,
  };
}
