/**
 * Sensitivity of a quantized model to each of its quantization choices, and the automatic choice of
 * promotions under a device-memory budget (`edgellm analyze`, `quantize --auto-precision`).
 *
 * A *candidate* promotes one module alone from the recipe it was quantized with: a linear from W4 g32
 * to W4 g16 (finer scales) or to W8 (same group size), an activation point from A8 to A16, a layer's
 * KV cache (K and V, module `model.layers.N.{k,v}_cache`) from KV8 to KV16. Its
 * sensitivity is measured (passes/sensitivity.ts) as the mean KL-divergence from the fp32 model, in
 * nats per token, on calibration windows with that candidate alone applied; its *gain* is the
 * baseline's KLD minus that, its *cost* the device bytes it adds (weights; a KV cache's second byte
 * per value at the compiled context; activation points cost no device memory: their QDQ parameters
 * are two numbers).
 *
 * The choice ({@link choosePromotions}) is a multiple-choice knapsack solved greedily by gain per
 * byte, as AutoRound's AutoScheme and TensorRT Model Optimizer's AutoQuantize rank per-layer formats
 * by a sensitivity score under a size constraint (here measured without gradients): every module
 * holds one option (its current one, or a candidate of it); repeatedly the upgrade with the highest
 * Δgain/Δbytes that still fits the budget is taken (a free upgrade with a positive gain first), until
 * none is left. Gains are taken as additive, which they are only approximately; the chosen recipe is
 * then quantized from scratch (GPTQ and calibration re-run), so the figure to trust is the one
 * measured on the result.
 *
 * This module holds the data and the choice only (no I/O, no measurement).
 */
import type { PointBits, RecipeText, RecipeWeightBits } from './precision.js';
import { UsageError } from '../core/errors.js';

/** What a promotion sets on its module: a subset of a recipe entry's keys (src/ir/recipe.ts RecipeSettings). */
export interface PromotionSettings {
  weight_bits?: RecipeWeightBits;
  group_size?: number;
  act_bits?: PointBits;
  kv_bits?: PointBits;
}

/** One measured promotion of one module. */
export interface SensitivityCandidate {
  /** the module (a recipe glob that matches exactly it), e.g. `model.layers.3.mlp.down_proj` */
  module: string;
  kind: 'linear' | 'activation' | 'kv';
  /** what the promotion sets in a recipe override, e.g. {weight_bits: 8}, {group_size: 16}, {act_bits: 16} or {kv_bits: 16} */
  settings: PromotionSettings;
  /** the precision before and after, as inspect prints it ("W4 g32 gptq" → "W8 g32 gptq", "A8" → "A16") */
  from: string;
  to: string;
  /** device bytes the promotion adds (≥ 0) */
  bytes: number;
  /** mean KL(fp32 ‖ model) with this promotion alone, nats per token */
  kld: number;
  /** baseline KLD − kld (nats per token; positive = the promotion helps) */
  gain: number;
}

/** Sensitivity of one model (Model.report.sensitivity, report.json in the HAR). */
export interface SensitivityReport {
  metric: 'kld';
  /** the adapter selected in both the measured model and the fp32 reference, or null */
  adapter: string | null;
  /** calibration windows measured, and tokens per window */
  windows: number;
  seqLen: number;
  /** mean KLD of the model as quantized (no promotion), nats per token, and its standard error */
  baselineKld: number;
  baselineKldStderr: number;
  /** device memory of the model as quantized: weights + KV cache at `maxContext` tokens, bytes */
  baselineBytes: number;
  maxContext: number;
  /** one per module and promotion, in model order */
  candidates: SensitivityCandidate[];
}

/** The result of {@link choosePromotions}. */
export interface PromotionChoice {
  /** the chosen candidate of each promoted module, in model order */
  chosen: SensitivityCandidate[];
  /** bytes they add, and the budget they had (bytes over the baseline) */
  addedBytes: number;
  budgetBytes: number;
  /** sum of the chosen gains (the additive estimate), nats per token */
  estimatedGain: number;
}

/**
 * Chooses at most one promotion per module so that the added bytes stay within `budgetBytes`,
 * greedily by gain per byte (see the module doc). Candidates with a gain ≤ `minGain` are never taken
 * (default 0: a promotion must measure better than the baseline). Ties go to the earlier candidate,
 * so the choice is deterministic.
 * @param budgetBytes bytes the promotions may add over the baseline (≥ 0)
 */
export function choosePromotions(report: Pick<SensitivityReport, 'candidates'>, budgetBytes: number, opts: { minGain?: number } = {}): PromotionChoice {
  const minGain = opts.minGain ?? 0;
  const byModule = new Map<string, SensitivityCandidate[]>();
  for (const c of report.candidates) if (c.gain > minGain) byModule.set(c.module, [...(byModule.get(c.module) ?? []), c]);
  const current = new Map<string, SensitivityCandidate>();
  let used = 0;
  for (;;) {
    let best: { c: SensitivityCandidate; ratio: number; dBytes: number } | null = null;
    for (const [module, options] of byModule) {
      const now = current.get(module);
      for (const c of options) {
        const dGain = c.gain - (now?.gain ?? 0);
        const dBytes = c.bytes - (now?.bytes ?? 0);
        if (dGain <= 0 || used + dBytes > budgetBytes) continue;
        const ratio = dBytes <= 0 ? Infinity : dGain / dBytes;
        // a free upgrade first, the largest gain among free ones; else the best gain per byte
        const better = !best || ratio > best.ratio || (ratio === Infinity && best.ratio === Infinity && dGain > best.c.gain - (current.get(best.c.module)?.gain ?? 0));
        if (better) best = { c, ratio, dBytes };
      }
    }
    if (!best) break;
    current.set(best.c.module, best.c);
    used += best.dBytes;
  }
  const order = new Map(report.candidates.map((c, i) => [c, i]));
  const chosen = [...current.values()].sort((a, b) => order.get(a)! - order.get(b)!);
  return { chosen, addedBytes: used, budgetBytes, estimatedGain: chosen.reduce((s, c) => s + c.gain, 0) };
}

/**
 * The recipe of a choice: `base` (the recipe the model was quantized with, as written; empty for the
 * default) with one override per chosen module appended, in model order. Quantizing it gives the
 * same HAR as writing it by hand and passing it to `quantize --recipe`.
 */
export function promotionRecipe(chosen: readonly SensitivityCandidate[], base: RecipeText = { defaults: {}, overrides: {} }): RecipeText {
  const overrides: RecipeText['overrides'] = { ...base.overrides };
  for (const c of chosen) overrides[c.module] = { ...(overrides[c.module] ?? {}), ...c.settings };
  return { defaults: { ...base.defaults }, overrides };
}

/**
 * A budget from the command line: `+10%` (relative to `baselineBytes`), `+64KiB` (added bytes) or an
 * absolute device memory (`1.1GiB`, `400KiB`, `123456`); units B, KB/MB/GB (10^3) and KiB/MiB/GiB (2^10).
 * @returns the bytes the promotions may add over the baseline
 * @throws UsageError (one line, exit code 2) for a malformed budget or one below the baseline
 */
export function parseBudget(text: string, baselineBytes: number): number {
  const m = /^\s*(\+)?\s*(\d+(?:\.\d+)?)\s*(%|B|KB|MB|GB|KiB|MiB|GiB)?\s*$/i.exec(text);
  if (!m) throw new UsageError(`--budget ${text}: expected +N% (over the default recipe), +SIZE (added bytes) or SIZE (total device memory), e.g. +10%, +64KiB, 1.1GiB`);
  const [, plus, num, unitRaw] = m;
  const v = Number(num);
  const unit = (unitRaw ?? 'B').toLowerCase();
  if (unit === '%') {
    if (!plus) throw new UsageError(`--budget ${text}: a percentage is relative: write +${num}%`);
    return Math.floor((baselineBytes * v) / 100);
  }
  const mult: Record<string, number> = { b: 1, kb: 1e3, mb: 1e6, gb: 1e9, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30 };
  const bytes = Math.floor(v * mult[unit]);
  if (plus) return bytes;
  if (bytes < baselineBytes) throw new UsageError(`--budget ${text}: ${bytes} bytes is below the default recipe's device memory (${baselineBytes} bytes)`);
  return bytes - baselineBytes;
}
