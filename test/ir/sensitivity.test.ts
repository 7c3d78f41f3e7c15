/**
 * The automatic choice of promotions (src/ir/sensitivity.ts): the greedy multiple-choice knapsack by
 * gain per byte, the recipe it writes, and `--budget` parsing. Candidates are generated here (the
 * measurement itself is tested in test/passes/sensitivity.test.ts).
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { choosePromotions, parseBudget, promotionRecipe, type SensitivityCandidate } from '../../src/ir/sensitivity.js';

function cand(module: string, to: 'g16' | 'w8' | 'a16', bytes: number, gain: number): SensitivityCandidate {
  const settings = to === 'g16' ? { group_size: 16 } : to === 'w8' ? { weight_bits: 8 as const } : { act_bits: 16 as const };
  return { module, kind: to === 'a16' ? 'activation' : 'linear', settings, from: to === 'a16' ? 'A8' : 'W4 g32 gptq', to, bytes, kld: 0.2 - gain, gain };
}

describe('choosePromotions: greedy by gain per byte under a budget', () => {
  const candidates = [
    cand('a.q_proj', 'g16', 100, 0.001), // 1e-5 per byte
    cand('a.q_proj', 'w8', 400, 0.006), // 1.5e-5 per byte; from g16: 0.005/300 = 1.67e-5
    cand('a.down_proj', 'w8', 1000, 0.02), // 2e-5 per byte
    cand('lm_head', 'w8', 2000, 0.01), // 5e-6 per byte
    cand('a.attn_in', 'a16', 0, 0.002), // free
    cand('a.mlp_in', 'a16', 0, -0.001), // free but worse: never taken
    cand('a.o_proj', 'w8', 50, -0.0001), // worse: never taken
  ];

  it('takes free promotions with a positive gain first, then the best gain per byte, and stops at the budget', () => {
    const c = choosePromotions({ candidates }, 1100);
    expect(c.chosen.map((x) => `${x.module} ${x.to}`)).toEqual(['a.q_proj g16', 'a.down_proj w8', 'a.attn_in a16']);
    expect(c.addedBytes).toBe(1100);
    expect(c.budgetBytes).toBe(1100);
    expect(c.estimatedGain).toBeCloseTo(0.001 + 0.02 + 0.002, 12);
  });

  it('upgrades a module from one option to a better one, paying only the difference', () => {
    const cs = [
      cand('x.up_proj', 'g16', 100, 0.003), // 3e-5 per byte: taken first
      cand('x.up_proj', 'w8', 400, 0.006), // the upgrade from g16: 0.003 for 300 more bytes, 1e-5 per byte
      cand('x.down_proj', 'w8', 1000, 0.02), // 2e-5 per byte: taken second
    ];
    const steps = [100, 1100, 1400].map((b) => choosePromotions({ candidates: cs }, b).chosen.map((x) => `${x.module} ${x.to}`));
    expect(steps).toEqual([['x.up_proj g16'], ['x.up_proj g16', 'x.down_proj w8'], ['x.up_proj w8', 'x.down_proj w8']]);
    expect(choosePromotions({ candidates: cs }, 1400).addedBytes).toBe(1400);
  });

  it('a zero budget takes only the free promotions; negative gains are never taken', () => {
    expect(choosePromotions({ candidates }, 0).chosen.map((x) => x.module)).toEqual(['a.attn_in']);
    const all = choosePromotions({ candidates }, 1e9).chosen.map((x) => `${x.module} ${x.to}`);
    expect(all).toEqual(['a.q_proj w8', 'a.down_proj w8', 'lm_head w8', 'a.attn_in a16']);
  });

  it('on random candidates: within budget, one option per module, positive gains only, and with no limit the best option of every module', () => {
    const arb = fc.array(fc.record({ m: fc.integer({ min: 0, max: 5 }), k: fc.constantFrom('g16', 'w8', 'a16'), bytes: fc.integer({ min: 0, max: 500 }), gain: fc.double({ min: -0.01, max: 0.05, noNaN: true }) }), { maxLength: 20 });
    fc.assert(
      fc.property(arb, fc.integer({ min: 0, max: 2000 }), (raw, budget) => {
        const cs = raw.map((r) => cand(`m${r.m}`, r.k as 'g16' | 'w8' | 'a16', r.bytes, r.gain));
        const c = choosePromotions({ candidates: cs }, budget);
        const modules = c.chosen.map((x) => x.module);
        expect(new Set(modules).size).toBe(modules.length);
        expect(c.addedBytes).toBe(c.chosen.reduce((s, x) => s + x.bytes, 0));
        expect(c.addedBytes).toBeLessThanOrEqual(budget);
        for (const x of c.chosen) expect(x.gain).toBeGreaterThan(0);
        const unlimited = choosePromotions({ candidates: cs }, Infinity);
        for (const m of new Set(cs.filter((x) => x.gain > 0).map((x) => x.module))) {
          const best = Math.max(...cs.filter((x) => x.module === m).map((x) => x.gain));
          expect(unlimited.chosen.find((x) => x.module === m)?.gain).toBe(best);
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe('promotionRecipe', () => {
  it('appends one override per chosen module to the base recipe, merging a module the base already names', () => {
    const chosen = [cand('model.layers.0.mlp.down_proj', 'w8', 10, 0.01), cand('lm_head_in', 'a16', 0, 0.001)];
    expect(promotionRecipe(chosen)).toEqual({ defaults: {}, overrides: { 'model.layers.0.mlp.down_proj': { weight_bits: 8 }, lm_head_in: { act_bits: 16 } } });
    const base = { defaults: { group_size: 64 }, overrides: { 'model.layers.0.mlp.down_proj': { weight_method: 'rtn' } } };
    expect(promotionRecipe(chosen, base)).toEqual({
      defaults: { group_size: 64 },
      overrides: { 'model.layers.0.mlp.down_proj': { weight_method: 'rtn', weight_bits: 8 }, lm_head_in: { act_bits: 16 } },
    });
  });
});

describe('parseBudget', () => {
  it('+N% of the baseline, +SIZE added, SIZE in all (decimal and binary units)', () => {
    expect(parseBudget('+10%', 1000)).toBe(100);
    expect(parseBudget('+0%', 1000)).toBe(0);
    expect(parseBudget('+12.5%', 1000)).toBe(125);
    expect(parseBudget('+64KiB', 1000)).toBe(65536);
    expect(parseBudget('+2KB', 1000)).toBe(2000);
    expect(parseBudget('1.5KiB', 1000)).toBe(1536 - 1000);
    expect(parseBudget('1.1GiB', 2 ** 30)).toBe(Math.floor(1.1 * 2 ** 30) - 2 ** 30);
    expect(parseBudget('5000', 1000)).toBe(4000);
  });

  it('refuses a malformed budget, a bare percentage and a total below the baseline, naming the flag', () => {
    expect(() => parseBudget('ten', 1000)).toThrow(/^--budget ten: expected/);
    expect(() => parseBudget('10%', 1000)).toThrow(/relative: write \+10%/);
    expect(() => parseBudget('500', 1000)).toThrow(/below the default recipe's device memory \(1000 bytes\)/);
    expect(() => parseBudget('+-5%', 1000)).toThrow(/expected/);
  });
});
