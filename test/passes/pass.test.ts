/**
 * The pass contract (passes/pass.ts) and the one pass list of `quantize` (passes/pipeline.ts
 * quantizePlan): the order is written once, checked once before anything runs, and every pass
 * records itself on the model it returns.
 */
import { describe, expect, it } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { checkOrder, passContext, runPasses, type Pass } from '../../passes/pass.js';
import { quantizePlan, DEFAULT_QUANTIZE_OPTIONS } from '../../passes/pipeline.js';
import { foldNormsPass } from '../../passes/fold-norms.js';
import { quarotPass } from '../../passes/quarot.js';
import { rtnPass } from '../../passes/rtn.js';
import { PassOrderError } from '../../src/core/errors.js';
import { silentContext } from '../../src/core/context.js';
import type { Model } from '../../src/ir/model.js';
import { STORIES } from '../helpers/paths.js';

const NO_ONLINE = { r3: false, r4: false };

describe('quantizePlan', () => {
  it('lists the passes in pipeline order for each recipe', () => {
    const names = (o: Partial<typeof DEFAULT_QUANTIZE_OPTIONS>) => quantizePlan({ ...DEFAULT_QUANTIZE_OPTIONS, ...o }).map((p) => p.name);
    expect(names({})).toEqual(['gptq', 'k-centering', 'calibrate']);
    expect(names({ rotate: true, method: 'rtn' })).toEqual(['fold-norms', 'quarot', 'rtn', 'k-centering', 'calibrate']);
    expect(names({ kCentering: false })).toEqual(['gptq', 'calibrate']);
    expect(names({ activationQuant: false, kvQuant: false })).toEqual(['gptq']);
    expect(names({ activationQuant: false })).toEqual(['gptq', 'k-centering', 'calibrate']); // KV8 alone still calibrates
  });

  it('passes the options through to each pass', () => {
    const plan = quantizePlan({ ...DEFAULT_QUANTIZE_OPTIONS, groupSize: 64, observer: 'minmax', percDamp: 0.05 });
    expect(plan[0].options).toMatchObject({ groupSize: 64, percDamp: 0.05, quantizeLmHead: true, lmHeadGroupSize: 16 });
    expect(plan[2].options).toEqual({ observer: 'minmax', activations: true, kvCache: true });
    expect(plan.map((p) => p.stage)).toEqual(['quantize', 'calibrate', 'calibrate']);
  });
});

describe('checkOrder / runPasses', () => {
  it('refuses quarot before fold-norms with PassOrderError before running any pass', async () => {
    const model = loadHfModel(STORIES);
    let ran = 0;
    const spy = (p: Pass): Pass => ({ ...p, run: async (m, c) => (ran++, p.run(m, c)) });
    const plan = [spy(rtnPass({ groupSize: 32, quantizeLmHead: false })), spy(quarotPass({ seed: 0, online: NO_ONLINE }))];
    expect(() => checkOrder(plan)).toThrow(PassOrderError);
    await expect(runPasses(model, plan, passContext(silentContext, []))).rejects.toThrow(/pass 'quarot' requires 'fold-norms'/);
    expect(ran).toBe(0);
  });

  it("counts the passes already recorded on the model ('fold-norms' run earlier satisfies quarot)", async () => {
    const model = loadHfModel(STORIES);
    const ctx = passContext(silentContext, []);
    const folded = await foldNormsPass().run(model, ctx);
    expect(() => checkOrder([quarotPass({ seed: 0, online: NO_ONLINE })], folded.passes)).not.toThrow();
    expect(() => checkOrder([quarotPass({ seed: 0, online: NO_ONLINE })], model.passes)).toThrow(PassOrderError);
  });

  it('runs every pass in order, each recording itself, and never modifies its input', async () => {
    const model = loadHfModel(STORIES);
    const seen: string[] = [];
    const plan = [foldNormsPass(), quarotPass({ seed: 3, online: NO_ONLINE }), rtnPass({ groupSize: 32, quantizeLmHead: false })];
    const out: Model = await runPasses(model, plan, passContext(silentContext, []), (p, m) => seen.push(`${p.name}:${m.passes.length}`));
    expect(seen).toEqual(['fold-norms:1', 'quarot:2', 'rtn:3']);
    expect(out.passes.map((p) => p.name)).toEqual(['fold-norms', 'quarot', 'rtn']);
    expect(model.passes).toEqual([]);
    expect(Object.keys(model.quant.linears)).toHaveLength(0);
    expect(Object.keys(out.quant.linears).length).toBeGreaterThan(0);
  });
});
