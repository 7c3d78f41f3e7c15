/** Generated models for tests: the tiny Qwen2 fixture (GQA, q/k/v biases) and random token windows. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeCheckpoint, type FixtureOptions } from '../../fixtures/make-fixture.js';
import { loadHfModel } from '../../formats/hf.js';
import { mulberry32 } from '../../src/core/rng.js';
import { TINY_QWEN2_DIR } from './paths.js';
import type { Model } from '../../src/ir/model.js';

const TINY_QWEN2_CONFIG = path.join(TINY_QWEN2_DIR, 'config.json');

/** Writes the tiny Qwen2 fixture checkpoint to `dir` (random weights from `opts.seed`) and loads it. */
export function tinyQwen2(dir: string, opts: FixtureOptions = {}): Model {
  makeCheckpoint(JSON.parse(fs.readFileSync(TINY_QWEN2_CONFIG, 'utf8')), dir, opts);
  return loadHfModel(dir);
}

/** `count` windows of `length` token ids uniform in [0, vocab), from `seed`. */
export function randomWindows(count: number, length: number, vocab: number, seed: number): number[][] {
  const rng = mulberry32(seed);
  return Array.from({ length: count }, () => Array.from({ length }, () => Math.floor(rng() * vocab)));
}
