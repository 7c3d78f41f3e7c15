/**
 * The one contract every pass follows: a name, the names of the passes it needs before it, a typed
 * options object, and `run(model, ctx) → model` (the input is never modified). `ctx` carries the
 * calibration windows, progress and logging. A Model records every pass that ran on it
 * (`model.passes`), which is what {@link checkOrder} checks `requires` against.
 *
 *   const plan = [foldNormsPass(), quarotPass({ seed: 0 }), gptqPass({ groupSize: 32, ... })];
 *   checkOrder(plan, model.passes);
 *   for (const p of plan) model = await p.run(model, ctx);
 *
 * `stage` says what a pass does to the fp32 function: 'source' passes change it (merge a LoRA
 * adapter), 'transform' passes keep it (fold-norms, QuaRot: the "optimized" emulation level),
 * 'quantize' and 'calibrate' passes approximate it (weights; activation and KV ranges).
 */
import type { Model } from '../src/ir/model.js';
import type { RunContext } from '../src/core/context.js';
import { PassOrderError } from '../src/core/errors.js';

/** What a pass gets besides the model. */
export interface PassContext extends RunContext {
  /** calibration token windows (token ids, each evaluated from position 0); empty when none are needed */
  readonly windows: readonly number[][];
}

export type PassStage = 'source' | 'transform' | 'quantize' | 'calibrate';

export interface Pass<O = unknown> {
  readonly name: string;
  /** passes that must have run before this one (by name) */
  readonly requires: readonly string[];
  readonly stage: PassStage;
  readonly options: O;
  /**
   * @returns a new Model with this pass recorded in `passes`; the input is not modified
   * @throws the errors of the pass (UsageError for bad options, UnsupportedModelError, ...)
   */
  run(model: Model, ctx: PassContext): Promise<Model>;
}

/** A RunContext with calibration windows. */
export function passContext(ctx: RunContext, windows: readonly number[][]): PassContext {
  return { log: (m) => ctx.log(m), progress: (l, t) => ctx.progress(l, t), windows };
}

/**
 * Checks that every pass's `requires` ran before it, counting the passes already recorded on the
 * model (`already`).
 * @throws PassOrderError naming the pass and the missing one
 */
export function checkOrder(plan: readonly Pick<Pass, 'name' | 'requires'>[], already: readonly { name: string }[] = []): void {
  const seen = new Set(already.map((p) => p.name));
  for (const s of plan) {
    for (const r of s.requires) if (!seen.has(r)) throw new PassOrderError(`pass '${s.name}' requires '${r}' to run before it`);
    seen.add(s.name);
  }
}

/**
 * Runs `plan` in order after {@link checkOrder}, logging each pass.
 * @param after called with each pass and the model it returned
 */
export async function runPasses(model: Model, plan: readonly Pass[], ctx: PassContext, after?: (p: Pass, m: Model) => void): Promise<Model> {
  checkOrder(plan, model.passes);
  let m = model;
  for (const p of plan) {
    ctx.log(`pass ${p.name}`);
    m = await p.run(m, ctx);
    after?.(p, m);
  }
  return m;
}
