/**
 * runtime/sampling: sampleToken against distributions computed here, independently, in float64.
 *
 * Stochastic checks draw N samples with a fixed mulberry32 seed and compare empirical frequencies
 * with the expected probabilities. Tolerance: for every token, |freq − p| < 4·sqrt(p(1−p)/N), i.e.
 * four standard errors of a binomial proportion (a false alarm per token has probability ~6e-5
 * under the model; the seed is fixed, so the outcome is deterministic anyway). Tokens with p = 0
 * get a bound of 0: they must never be drawn.
 */
import { describe, expect, it } from 'vitest';
import { applyPenalties, argmax, penaltiesOff, sampleToken, type SamplingOptions } from '../../src/runtime/sampling.js';
import { mulberry32 } from '../../src/core/rng.js';

const N = 20000;

/** softmax(logits / T) in float64. */
function softmax(logits: number[], T: number): number[] {
  const m = Math.max(...logits);
  const e = logits.map((l) => Math.exp((l - m) / T));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

/** Order of tokens by descending probability, ties broken by lower index first. */
function order(p: number[]): number[] {
  return p.map((_, i) => i).sort((a, b) => p[b] - p[a] || a - b);
}

/** Keeps the tokens in `keep`, zeroes the rest, renormalises. */
function restrict(p: number[], keep: number[]): number[] {
  const s = keep.reduce((a, i) => a + p[i], 0);
  const out = p.map(() => 0);
  for (const i of keep) out[i] = p[i] / s;
  return out;
}

/** The k most likely tokens, renormalised (k = 0: all). */
function topK(p: number[], k: number): number[] {
  return k > 0 ? restrict(p, order(p).slice(0, k)) : p;
}

/** The smallest prefix of the sorted distribution whose mass reaches (≥) `topP`, renormalised. */
function topP(p: number[], topP: number): number[] {
  if (topP >= 1) return p;
  const o = order(p);
  let acc = 0;
  const keep: number[] = [];
  for (const i of o) {
    keep.push(i);
    acc += p[i];
    if (acc >= topP) break;
  }
  return restrict(p, keep);
}

/** The expected distribution: top-k, softmax at T, top-p (the documented order). */
function expected(logits: number[], opts: SamplingOptions): number[] {
  return topP(topK(softmax(logits, opts.temperature), opts.topK), opts.topP);
}

function frequencies(logits: number[], opts: SamplingOptions, seed: number, n = N): number[] {
  const l = Float32Array.from(logits);
  const rand = mulberry32(seed);
  const counts = logits.map(() => 0);
  for (let i = 0; i < n; i++) counts[sampleToken(l, opts, rand)]++;
  return counts.map((c) => c / n);
}

/** Asserts |freq − p| < 4 standard errors for every token (exactly 0 where p = 0, exactly 1 where p = 1). */
function expectMatches(freq: number[], p: number[], n = N): void {
  for (let i = 0; i < p.length; i++) {
    const bound = 4 * Math.sqrt((p[i] * (1 - p[i])) / n);
    if (p[i] === 0) expect(freq[i], `token ${i} is outside the kept set`).toBe(0);
    else if (p[i] === 1) expect(freq[i], `token ${i} is the only kept token`).toBe(1);
    else expect(Math.abs(freq[i] - p[i]), `token ${i}: freq ${freq[i]} vs p ${p[i]}`).toBeLessThan(bound);
  }
}

function entropy(p: number[]): number {
  return -p.reduce((s, x) => (x > 0 ? s + x * Math.log(x) : s), 0);
}

// Distinct logits (no ties), deliberately not sorted, so that index order ≠ probability order;
// rounded to float32 first, as sampleToken sees them, so the expected values use the same inputs.
const LOGITS = Array.from(Float32Array.from([0.3, 2.1, -1.0, 1.4, 0.9, -0.2, 1.8, -2.5]));

describe('sampleToken', () => {
  it('is greedy (argmax, first index on ties) at temperature 0, whatever top-k / top-p say', () => {
    const rand = () => {
      throw new Error('greedy decoding must not consume randomness');
    };
    expect(sampleToken(Float32Array.from(LOGITS), { temperature: 0, topK: 3, topP: 0.5 }, rand)).toBe(1);
    expect(sampleToken(Float32Array.from([1, 5, 2, 5]), { temperature: 0, topK: 0, topP: 1 }, rand)).toBe(1);
    expect(argmax(Float32Array.from([-3, -1, -1, -2]))).toBe(1);
  });

  it('inverts the CDF of the kept distribution: a uniform draw u picks the token whose interval holds u', () => {
    // four equal logits: probabilities are exactly 1/4 in binary floating point
    const l = Float32Array.from([0, 0, 0, 0]);
    const opts = { temperature: 1, topK: 0, topP: 1 };
    expect(sampleToken(l, opts, () => 0.1)).toBe(0);
    expect(sampleToken(l, opts, () => 0.3)).toBe(1);
    expect(sampleToken(l, opts, () => 0.6)).toBe(2);
    expect(sampleToken(l, opts, () => 0.9999)).toBe(3);
  });

  it('matches softmax(logits / T) at T = 1, 0.7 and 2', () => {
    for (const [T, seed] of [
      [1, 11],
      [0.7, 12],
      [2, 13],
    ]) {
      const opts = { temperature: T, topK: 0, topP: 1 };
      expectMatches(frequencies(LOGITS, opts, seed), softmax(LOGITS, T));
    }
  });

  it('top-k keeps the k largest and renormalises; other tokens never appear', () => {
    for (const [k, seed] of [
      [1, 21],
      [3, 22],
      [5, 23],
    ]) {
      const opts = { temperature: 1.3, topK: k, topP: 1 };
      const p = expected(LOGITS, opts);
      expect(p.filter((x) => x > 0)).toHaveLength(k);
      const f = frequencies(LOGITS, opts, seed);
      expectMatches(f, p);
      expect(f.filter((x) => x > 0).length).toBe(k);
    }
  });

  it('top-k larger than the vocabulary keeps everything', () => {
    const opts = { temperature: 1, topK: 100, topP: 1 };
    expectMatches(frequencies(LOGITS, opts, 24), softmax(LOGITS, 1));
  });

  it('top-p keeps the smallest sorted prefix whose mass reaches p and renormalises', () => {
    for (const [pp, seed] of [
      [0.5, 31],
      [0.8, 32],
      [0.95, 33],
    ]) {
      const opts = { temperature: 1, topK: 0, topP: pp };
      const p = expected(LOGITS, opts);
      const f = frequencies(LOGITS, opts, seed);
      expectMatches(f, p);
      // the kept set is a prefix of the sorted order and its mass (before renormalising) reaches p
      const full = softmax(LOGITS, 1);
      const kept = order(full).filter((i) => f[i] > 0);
      expect(kept).toEqual(order(full).slice(0, kept.length));
      const mass = kept.reduce((s, i) => s + full[i], 0);
      expect(mass).toBeGreaterThanOrEqual(pp);
      expect(mass - full[kept[kept.length - 1]]).toBeLessThan(pp); // smallest such prefix
    }
  });

  it('top-p is applied to the temperature-scaled distribution, after top-k', () => {
    // At T = 0.5 the distribution is sharper, so p = 0.8 keeps fewer tokens than at T = 1.
    const sharp = { temperature: 0.5, topK: 0, topP: 0.8 };
    const flat = { temperature: 1, topK: 0, topP: 0.8 };
    const nSharp = expected(LOGITS, sharp).filter((x) => x > 0).length;
    const nFlat = expected(LOGITS, flat).filter((x) => x > 0).length;
    expect(nSharp).toBeLessThan(nFlat); // the scenario discriminates the order of the two steps
    expectMatches(frequencies(LOGITS, sharp, 41), expected(LOGITS, sharp));
    // top-k 4 then top-p 0.9 of the renormalised top-4 mass
    const both = { temperature: 1.5, topK: 4, topP: 0.9 };
    expectMatches(frequencies(LOGITS, both, 42), expected(LOGITS, both));
  });

  it('top-p boundary: mass exactly equal to p stops the prefix there (≥, not >)', () => {
    // four equal logits: each probability is exactly 0.25, so the running mass 0.25, 0.5, 0.75 is
    // exact and p = 0.5 is reached exactly by the second token. Ties keep the lower indices first.
    const l = [0, 0, 0, 0];
    const f = frequencies(l, { temperature: 1, topK: 0, topP: 0.5 }, 51);
    expectMatches(f, [0.5, 0.5, 0, 0]);
    // and just above the boundary one more token is needed
    const g = frequencies(l, { temperature: 1, topK: 0, topP: 0.5000001 }, 52);
    expectMatches(g, [1 / 3, 1 / 3, 1 / 3, 0]);
    // the boundary on a non-trivial distribution, 1e-9 either side of the 2-token mass
    const full = softmax(LOGITS, 1);
    const o = order(full);
    const two = full[o[0]] + full[o[1]];
    const below = frequencies(LOGITS, { temperature: 1, topK: 0, topP: two - 1e-9 }, 53);
    expect(below.filter((x) => x > 0).length).toBe(2);
    const above = frequencies(LOGITS, { temperature: 1, topK: 0, topP: two + 1e-9 }, 54);
    expect(above.filter((x) => x > 0).length).toBe(3);
  });

  it('top-k on ties keeps the lower token ids', () => {
    const f = frequencies([1, 2, 2, 2, 0], { temperature: 1, topK: 2, topP: 1 }, 61);
    expectMatches(f, [0, 0.5, 0.5, 0, 0]);
  });

  it('consumes exactly one uniform draw per sampled token', () => {
    let calls = 0;
    const r = mulberry32(3);
    const counted = () => (calls++, r());
    const l = Float32Array.from(LOGITS);
    for (const opts of [
      { temperature: 1, topK: 0, topP: 1 },
      { temperature: 0.8, topK: 3, topP: 0.9 },
    ])
      for (let i = 0; i < 10; i++) sampleToken(l, opts, counted);
    expect(calls).toBe(20);
  });

  it('same seed gives the same sequence; different seeds differ', () => {
    const l = Float32Array.from(LOGITS);
    const opts = { temperature: 1, topK: 0, topP: 1 };
    const seq = (seed: number) => {
      const r = mulberry32(seed);
      return Array.from({ length: 200 }, () => sampleToken(l, opts, r));
    };
    expect(seq(7)).toEqual(seq(7));
    const a = seq(7);
    const b = seq(8);
    // 200 draws from a distribution whose largest probability is < 0.5: the chance two independent
    // streams agree everywhere is < 0.5^200
    expect(b).not.toEqual(a);
    expect(a.filter((x, i) => x !== b[i]).length).toBeGreaterThan(50);
  });

  it('low temperature concentrates the mass, high temperature flattens it (empirical entropy)', () => {
    const h = (T: number, seed: number) => entropy(frequencies(LOGITS, { temperature: T, topK: 0, topP: 1 }, seed));
    const hLow = h(0.25, 71);
    const hOne = h(1, 72);
    const hHigh = h(4, 73);
    expect(hLow).toBeLessThan(hOne);
    expect(hOne).toBeLessThan(hHigh);
    // each empirical entropy is close to the analytic one: the plug-in estimator is biased low by
    // about (K−1)/(2N) ≈ 2e-4 nats and its standard deviation at N = 20000 is ~1e-2 nats; 0.03 nats
    // covers both with room
    for (const [he, T] of [
      [hLow, 0.25],
      [hOne, 1],
      [hHigh, 4],
    ])
      expect(Math.abs(he - entropy(softmax(LOGITS, T)))).toBeLessThan(0.03);
    // and the limits: near-greedy below, near-uniform (ln 8) above
    expect(h(0.05, 74)).toBeLessThan(0.05);
    expect(h(100, 75)).toBeGreaterThan(Math.log(8) - 0.01);
  });
});

describe('min-p', () => {
  it('keeps exactly the tokens with p ≥ minP · p_max after temperature, renormalised', () => {
    const T = 0.9;
    const p = softmax(LOGITS, T);
    const pmax = Math.max(...p);
    for (const [minP, seed] of [[0.3, 81], [0.05, 82]] as const) {
      const keep = p.map((_, i) => i).filter((i) => p[i] >= minP * pmax);
      const f = frequencies(LOGITS, { temperature: T, topK: 0, topP: 1, minP }, seed);
      expectMatches(f, restrict(p, keep));
    }
  });

  it('applies after top-k and top-p (on their renormalised distribution)', () => {
    const opts = { temperature: 1, topK: 5, topP: 0.9, minP: 0.4 };
    const q = topP(topK(softmax(LOGITS, 1), 5), 0.9);
    const qmax = Math.max(...q);
    const keep = q.map((_, i) => i).filter((i) => q[i] > 0 && q[i] >= 0.4 * qmax);
    expectMatches(frequencies(LOGITS, opts, 83), restrict(q, keep));
  });
});

describe('applyPenalties', () => {
  const base = Float32Array.from([2, -1, 0.5, 3, -2]);
  const off = { repeatPenalty: 1, repeatLastN: 64, frequencyPenalty: 0, presencePenalty: 0 };

  it('is the identity (same array) when off or with an empty window', () => {
    expect(penaltiesOff(off)).toBe(true);
    expect(applyPenalties(base, [0, 1, 1], off)).toBe(base);
    expect(applyPenalties(base, [0, 1], { ...off, repeatPenalty: 2, repeatLastN: 0 })).toBe(base);
    expect(applyPenalties(base, [], { ...off, repeatPenalty: 2 })).toBe(base);
  });

  it('repeat: positive logits divided, negative multiplied; frequency per occurrence; presence once (llama.cpp order)', () => {
    const got = applyPenalties(base, [3, 1, 3, 3, 4], { repeatPenalty: 2, repeatLastN: -1, frequencyPenalty: 0.25, presencePenalty: 0.5 });
    // token 3: 3/2 − 3·0.25 − 0.5; token 1: −1·2 − 0.25 − 0.5; token 4: −2·2 − 0.25 − 0.5; 0, 2 unseen
    expect(Array.from(got)).toEqual([2, -2.75, 0.5, 0.25, -4.75]);
    expect(Array.from(base)).toEqual([2, -1, 0.5, 3, -2]); // input untouched
  });

  it('looks only at the last repeatLastN tokens and ignores ids outside the vocabulary', () => {
    const got = applyPenalties(base, [0, 0, 2, 99], { ...off, presencePenalty: 1, repeatLastN: 2 });
    expect(Array.from(got)).toEqual([2, -1, -0.5, 3, -2]);
  });

  it('changes greedy decoding: a penalised argmax gives way to the runner-up', () => {
    expect(argmax(base)).toBe(3);
    expect(argmax(applyPenalties(base, [3], { ...off, repeatPenalty: 2 }))).toBe(0);
  });
});
