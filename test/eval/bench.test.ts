/** runtime/bench: medians, the benchmark prompt, and a short benchmark run on stories260K (no timing assertions). */
import { describe, expect, it } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { compile } from '../../src/compiler/compile.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { benchmark, benchPrompt, median } from '../../src/eval/bench.js';
import { UsageError } from '../../src/core/errors.js';
import { STORIES } from '../helpers/paths.js';

describe('bench', () => {
  it('median of odd and even counts', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([7])).toBe(7);
  });

  it('the prompt is deterministic for a seed, starts with BOS and stays in the vocabulary', () => {
    const p = benchPrompt(512, 96, 0, 1);
    expect(p.length).toBe(96);
    expect(p[0]).toBe(1);
    expect(p.every((t) => Number.isInteger(t) && t >= 0 && t < 512)).toBe(true);
    expect(benchPrompt(512, 96, 0, 1)).toEqual(p);
    expect(benchPrompt(512, 96, 1, 1)).not.toEqual(p);
  });

  it('measures TTFT and decode speed as medians over the counted runs, warm-up excluded', async () => {
    const backend = await SimulatorBackend.load(compile(loadHfModel(STORIES), { prefillLen: 128 }));
    let ticks = 0;
    const r = await benchmark(backend, { promptTokens: 96, decodeTokens: 16, runs: 3, warmup: 1, seed: 0, bosTokenId: 1 }, { tick: () => void ticks++, done: () => {} });
    expect(ticks).toBe(4);
    expect(r.runs.length).toBe(3);
    expect(r.ttftMs).toBe(median(r.runs.map((x) => x.ttftMs)));
    expect(r.decodeTokensPerSecond).toBe(median(r.runs.map((x) => x.decodeTokensPerSecond)));
    expect(r.decodeMsPerToken).toBeCloseTo(1000 / r.decodeTokensPerSecond, 9);
    expect(r.ttftMs).toBeGreaterThan(0);
    expect(r.ttftMsRange[0]).toBeLessThanOrEqual(r.ttftMs);
    expect(r.ttftMsRange[1]).toBeGreaterThanOrEqual(r.ttftMs);
    await expect(benchmark(backend, { promptTokens: 500, decodeTokens: 128, runs: 1, warmup: 0, seed: 0 })).rejects.toThrow(UsageError);
    await expect(benchmark(backend, { promptTokens: 96, decodeTokens: 128, runs: 0, warmup: 0, seed: 0 })).rejects.toThrow(UsageError);
    await backend.dispose();
  });
});
