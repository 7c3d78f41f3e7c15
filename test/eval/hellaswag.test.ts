/**
 * runtime/hellaswag: the 6-line format, tokenization of context/endings, and ending scores checked
 * against the independent TypeScript reference forward on the real stories260K, through both
 * execution paths (shared prefix forked, and each ending run whole).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, afterAll, describe, expect, it } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { compile } from '../../src/compiler/compile.js';
import { referenceForward } from '../../src/ir/reference.js';
import type { Model } from '../../src/ir/model.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { hellaswag, loadHellaSwag, parseHellaSwag, scoreTask, tokenizeTask, type TokenizedTask } from '../../src/eval/hellaswag.js';
import { FormatError, UsageError } from '../../src/core/errors.js';
import { SHARED, STORIES } from '../helpers/paths.js';

const HS = path.join(SHARED, 'data/hellaswag/hellaswag_val_full.txt');

/** Σ log-softmax of the scored tokens, from the reference forward of the whole sequence (float64). */
function referenceScore(model: Model, seq: number[], from: number): number {
  const V = model.config.vocabSize;
  const logits = referenceForward(model, seq);
  let lp = 0;
  for (let j = from; j < seq.length; j++) {
    const row = logits.subarray((j - 1) * V, j * V);
    let max = -Infinity;
    for (const x of row) max = Math.max(max, x);
    let s = 0;
    for (const x of row) s += Math.exp(x - max);
    lp += row[seq[j]] - max - Math.log(s);
  }
  return lp;
}

describe('parseHellaSwag', () => {
  it('reads all 10,042 tasks of the shared validation file', () => {
    const tasks = loadHellaSwag(HS);
    expect(tasks.length).toBe(10042);
    expect(tasks[0]).toEqual({
      context: 'Roof shingle removal: A man is sitting on a roof. he',
      gold: 3,
      endings: ['is using wrap to wrap a pair of skis.', 'is ripping level tiles off.', "is holding a rubik's cube.", 'starts pulling up roofing on a roof.'],
    });
    expect(loadHellaSwag(HS, 3).length).toBe(3);
  });

  it('names the line of a bad gold index and rejects a truncated file', () => {
    expect(() => parseHellaSwag('ctx\n4\na\nb\nc\nd\n', 'x.txt')).toThrow(/x.txt: line 2: gold ending index '4'/);
    expect(() => parseHellaSwag('ctx\n1\na\nb\nc\n', 'x.txt')).toThrow(FormatError);
    expect(() => loadHellaSwag(HS, 0)).toThrow(UsageError);
  });
});

describe('HellaSwag scoring on stories260K fp32', () => {
  let model: Model;
  let tok: TextTokenizer;
  let tasks: TokenizedTask[];
  const backends: SimulatorBackend[] = [];
  beforeAll(async () => {
    model = loadHfModel(STORIES);
    tok = new TextTokenizer(model.tokenizer);
    tasks = [];
    for (const t of loadHellaSwag(HS, 6)) tasks.push(await tokenizeTask(t, (s) => tok.encode(s, true)));
  });
  afterAll(async () => {
    for (const b of backends) await b.dispose();
  });

  it('scores exactly the ending tokens: those after the context tokens, BOS first', async () => {
    const t = tasks[0];
    const ctx = await tok.encode('Roof shingle removal: A man is sitting on a roof. he', true);
    expect(ctx[0]).toBe(1); // BOS
    expect(t.scoreFrom).toEqual([ctx.length, ctx.length, ctx.length, ctx.length]);
    for (const s of t.sequences) expect(s.slice(0, ctx.length)).toEqual(ctx);
    expect(await tok.decode(t.sequences[3].slice(t.scoreFrom[3]))).toBe('starts pulling up roofing on a roof.');
    expect(t.bytes).toEqual([37, 27, 26, 36]);
  });

  // Prefill chunks of 128 hold most tasks' context + ending whole, so each ending runs whole from an
  // empty cache; chunks of 16 make the forked shared prefix cheaper (prefilled once, endings forked).
  for (const [prefillLen, mode] of [
    [128, 'some tasks run whole'],
    [16, 'every task forks its prefix'],
  ] as const) {
    it(`matches the reference forward's log-probabilities with prefill chunks of ${prefillLen} (${mode})`, async () => {
      const backend = await SimulatorBackend.load(compile(model, { prefillLen }));
      backends.push(backend);
      let nForks = 0;
      const fork = backend.fork.bind(backend);
      backend.fork = (c) => (nForks++, fork(c));
      const forksPerTask: number[] = [];
      for (const t of tasks) {
        const before = nForks;
        const r = await scoreTask(backend, t);
        forksPerTask.push(nForks - before);
        for (let s = 0; s < 4; s++) {
          expect(r.tokens[s]).toBe(t.sequences[s].length - t.scoreFrom[s]);
          // float32 logits vs float64 reference, summed over ~10-40 tokens
          expect(Math.abs(r.logProbs[s] - referenceScore(model, t.sequences[s], t.scoreFrom[s]))).toBeLessThan(1e-3);
        }
      }
      if (prefillLen === 16) expect(forksPerTask).toEqual(tasks.map(() => 4));
      else expect(forksPerTask).toContain(0);
    });
  }

  it('acc and acc_norm are the fractions of tasks whose best (per-byte) score is the gold ending', async () => {
    const backend = await SimulatorBackend.load(compile(model, { prefillLen: 128 }));
    backends.push(backend);
    const r = await hellaswag(backend, tasks);
    let acc = 0;
    let accNorm = 0;
    for (const t of tasks) {
      const sc = (await scoreTask(backend, t)).logProbs;
      const best = (xs: number[]) => xs.indexOf(Math.max(...xs));
      if (best(sc) === t.gold) acc++;
      if (best(sc.map((x, s) => x / t.bytes[s])) === t.gold) accNorm++;
    }
    expect(r.tasks).toBe(6);
    expect(r.acc).toBe(acc / 6);
    expect(r.accNorm).toBe(accNorm / 6);
    expect(r.accStderr).toBeCloseTo(Math.sqrt((r.acc * (1 - r.acc)) / 6), 12);
    expect(r.scoredTokens).toBe(tasks.reduce((n, t) => n + t.sequences.reduce((m, s, i) => m + s.length - t.scoreFrom[i], 0), 0));
  });
});
