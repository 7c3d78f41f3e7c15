/**
 * Memory-mapped HEF weights (formats/hef-executable.ts readExecutable `mapWeights`,
 * src/engine/session.ts createMapped): the page-aligned tensors stay in the file, and a backend over
 * them computes exactly what one over weights read into memory computes (same graph, same bytes:
 * bit-identical logits), whether it maps a RAM-backed copy (resident, the default) or the file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { compile } from '../../src/compiler/compile.js';
import { readExecutable, writeExecutable, WEIGHTS_ALIGNMENT } from '../../formats/hef-executable.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { STORIES } from '../helpers/paths.js';
import { makeTempDir, removeDir } from '../helpers/tmp.js';

const dir = makeTempDir('edgellm-mapped-');
afterAll(() => removeDir(dir));

async function logits(exe: ReturnType<typeof readExecutable>, resident?: boolean): Promise<Float32Array> {
  const b = await SimulatorBackend.load(exe, { resident });
  const ctx = b.newContext();
  const a = await b.forward(ctx, [1, 300, 301, 302, 303, 304, 305]);
  const d = await b.forward(ctx, [306]);
  await b.dispose();
  return Float32Array.from([...a, ...d]);
}

describe('memory-mapped HEF weights', () => {
  it('leave the large tensors in the file at page-aligned offsets and give bit-identical logits', async () => {
    const hef = path.join(dir, 'fp32.hef');
    writeExecutable(hef, compile(loadHfModel(STORIES), { prefillLen: 4, maxContext: 64 }));
    const mapped = readExecutable(hef, { mapWeights: true });
    const m = mapped.mappedWeights!;
    // the fp32 embedding (512 × 64 × 4 B = 128 KiB) is mapped, the small tensors are read
    expect(m.tensors.has('model.embed_tokens.weight')).toBe(true);
    for (const t of m.tensors.values()) {
      expect(t.offset % WEIGHTS_ALIGNMENT.bytes).toBe(0);
      expect(t.byteLength).toBeGreaterThanOrEqual(WEIGHTS_ALIGNMENT.minTensorBytes);
    }
    for (const n of m.tensors.keys()) expect(mapped.weights.has(n)).toBe(false);
    const inMemory = await logits(readExecutable(hef));
    expect(await logits(mapped)).toEqual(inMemory);
    expect(await logits(mapped, false)).toEqual(inMemory);
    // the resident copy is gone once the session exists
    if (fs.existsSync('/dev/shm')) expect(fs.readdirSync('/dev/shm').filter((n) => n.startsWith(`.edgellm-ort-${process.pid}-`))).toEqual([]);
  });

  it("check a deferred weights sha256 (on a worker thread, while the session is created), refuse a flipped byte, and skip it only when told", async () => {
    const hef = path.join(dir, 'deferred.hef');
    writeExecutable(hef, compile(loadHfModel(STORIES), { prefillLen: 4, maxContext: 64 }));
    const good = readExecutable(hef, { mapWeights: true, verify: 'deferred' });
    expect(good.mappedWeights!.unverified).toBeDefined();
    const want = await logits(readExecutable(hef));
    expect(await logits(good)).toEqual(want);
    expect(good.mappedWeights!.unverified).toBeUndefined(); // checked in passing, once
    // one flipped byte inside a mapped tensor: readExecutable leaves it to the backend, which refuses it
    const bad = path.join(dir, 'flipped.hef');
    const bytes = fs.readFileSync(hef);
    const t = good.mappedWeights!.tensors.get('model.embed_tokens.weight')!;
    bytes[t.offset + 123] ^= 0x40;
    fs.writeFileSync(bad, bytes);
    for (const resident of [true, false]) {
      const exe = readExecutable(bad, { mapWeights: true, verify: 'deferred' });
      await expect(logits(exe, resident)).rejects.toThrow(/flipped\.hef: section 'weights' is corrupt: sha256 mismatch/);
    }
    expect(() => readExecutable(bad, { mapWeights: true })).toThrow(/sha256 mismatch/); // 'now', the default
    const skipped = await logits(readExecutable(bad, { mapWeights: true, verify: 'skip' }));
    expect(skipped).not.toEqual(want); // runs on the flipped weights: skipping really skips
    if (fs.existsSync('/dev/shm')) expect(fs.readdirSync('/dev/shm').filter((n) => n.startsWith(`.edgellm-ort-${process.pid}-`))).toEqual([]);
  });
});
