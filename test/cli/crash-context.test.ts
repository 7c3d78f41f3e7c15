/**
 * Crash safety of context saves (formats/context-file.ts writeContextFile, what `chat /save` and the
 * server's slot save call): a child process saves a ~8 MiB context to the same file over and over
 * and is killed with SIGKILL at seeded random moments. Afterwards the file is either absent (killed
 * before the first save finished) or a complete context that verifies; the next save removes the
 * temporary files the killed writers left.
 *
 * EDGELLM_CRASH_RUNS kills (default 6 in `npm test`; `npm run test:crash` runs 50).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readContextFile, writeContextFile } from '../../formats/context-file.js';
import { mulberry32 } from '../../src/core/rng.js';
import { ROOT } from '../helpers/paths.js';
import { makeTempDir, removeDir } from '../helpers/tmp.js';

const RUNS = Number(process.env.EDGELLM_CRASH_RUNS ?? 6);
const dir = makeTempDir('edgellm-crash-ctx-');
afterAll(() => removeDir(dir));

// The writer: the built library (dist/, built by the test global setup), one save per loop turn.
const WRITER = `
import { writeContextFile } from ${JSON.stringify(path.join(ROOT, 'dist/formats/context-file.js'))};
const [target] = process.argv.slice(2);
const kv = { numLayers: 8, numKvHeads: 4, headDim: 64, dtype: 'uint8' };
const n = 2048;
const layer = () => ({ key: new Uint8Array(kv.numKvHeads * n * kv.headDim).fill(7), value: new Uint8Array(kv.numKvHeads * n * kv.headDim).fill(9) });
const snapshot = { length: n, adapter: null, layers: Array.from({ length: kv.numLayers }, layer) };
const tokens = Array.from({ length: n }, (_, i) => i % 500);
for (let i = 0; ; i++) {
  writeContextFile(target, { model: 'ab'.repeat(32), tokens, kv, snapshot, edgellm: 'test', meta: { turn: i } });
  process.stdout.write('saved\\n');
}
`;

/** Runs the writer until `ms` have passed, then kills it with SIGKILL. @returns saves it reported */
function saveAndKill(script: string, target: string, ms: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, target], { stdio: ['ignore', 'pipe', 'pipe'] });
    let saves = 0;
    let err = '';
    child.stdout.on('data', (d: Buffer) => (saves += d.toString().split('saved').length - 1));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), ms);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (signal !== 'SIGKILL') reject(new Error(`writer exited with ${code}: ${err}`));
      else resolve(saves);
    });
  });
}

describe('kill -9 during context saves', () => {
  it(`leaves no file or a complete one, ${RUNS} seeded kills; the next save cleans up`, async () => {
    const script = path.join(dir, 'writer.mjs');
    fs.writeFileSync(script, WRITER);
    const target = path.join(dir, 'conv.ctx');
    const rand = mulberry32(11);
    let complete = 0;
    let midWrite = 0;
    for (let i = 0; i < RUNS; i++) {
      // node start-up takes ~100-300 ms here, one save ~20-60 ms: kill anywhere in the first 0.8 s
      await saveAndKill(script, target, 50 + Math.floor(rand() * 750));
      // a temporary file left behind: this kill landed inside a save
      if (fs.readdirSync(dir).some((n) => n.endsWith('.tmp'))) midWrite++;
      if (fs.existsSync(target)) {
        const c = readContextFile(target); // throws on a torn or partial file
        expect(c.tokens.length).toBe(2048);
        complete++;
      }
    }
    // the kills must have landed inside saves, and after complete ones, for the test to mean something
    if (RUNS >= 6) expect([complete > 0, midWrite > 0]).toEqual([true, true]);
    // a save in this process removes the killed writers' temporaries of the same target
    writeContextFile(target, readContextFile(target));
    expect(fs.readdirSync(dir).filter((n) => n.endsWith('.tmp'))).toEqual([]);
    expect(readContextFile(target).tokens.length).toBe(2048);
    console.log(`[crash] context save: ${RUNS} kills, ${midWrite} inside a save, ${complete} with a complete file in place`);
  });
});
