import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Sha256, artifactSha256, modelSha256, sha256, sha256File, sha256FileRangeInWorker, sha256Hex, weightListingSha256 } from '../../src/core/digest.js';
import { UsageError } from '../../src/core/errors.js';
import { ROOT, STORIES, TINYSTORIES as TINY } from '../helpers/paths.js';
import { suiteTempDir, fileWriter, withTempDirSync } from '../helpers/tmp.js';

/** node:crypto directly, as the independent reference */
const ref = (...parts: (Uint8Array | string)[]): string => parts.reduce((h, p) => h.update(p), createHash('sha256')).digest('hex');

const dir = suiteTempDir('edgellm-digest-');
const write = fileWriter(dir);

describe('sha256 of bytes', () => {
  it('sha256, sha256Hex and Sha256 over any slicing agree with node:crypto', () => {
    const data = Uint8Array.from({ length: 10_000 }, (_, i) => (i * 31) & 0xff);
    expect(sha256(data).toString('hex')).toBe(ref(data));
    expect(sha256Hex(data)).toBe(ref(data));
    expect(sha256Hex(new Uint8Array(0))).toBe(ref(''));
    const h = new Sha256();
    for (const [a, b] of [[0, 1], [1, 4096], [4096, 4096], [4096, 10_000]]) h.update(data.subarray(a, b));
    expect(h.digest().equals(sha256(data))).toBe(true);
  });
});

describe('sha256 of a file range on a worker thread', () => {
  it('equals node:crypto over the slice (blocks of 1 MiB crossed), reports a short file, rejects a missing one', async () => {
    const data = Uint8Array.from({ length: (3 << 20) + 12_345 }, (_, i) => (i * 131 + (i >> 9)) & 0xff);
    const file = write('range.bin', data);
    const offset = 4096 + 7;
    const length = (2 << 20) + 999;
    const r = await sha256FileRangeInWorker(file, offset, length);
    expect(r.done).toBe(length);
    expect(r.digest.toString('hex')).toBe(ref(data.subarray(offset, offset + length)));
    const short = await sha256FileRangeInWorker(file, data.length - 10, 100);
    expect(short.done).toBe(10);
    expect(short.digest.toString('hex')).toBe(ref(data.subarray(data.length - 10)));
    await expect(sha256FileRangeInWorker(path.join(dir, 'missing.bin'), 0, 1)).rejects.toThrow(/ENOENT/);
  });
});

describe('sha256 of files and models', () => {
  it('hashes a file as sha256sum does and a model directory independently of where it lives', () => {
    // PROVENANCE.md of ../shared/data lists this file's sha256
    expect(sha256File(TINY)).toBe('3ccdd4ecfe9b52fed5931479dc95ca56ce9fe44e3347cdf0daf401b3729d761c');
    withTempDirSync('edgellm-sha-', (copy) => {
      fs.copyFileSync(path.join(STORIES, 'model.safetensors'), path.join(copy, 'model.safetensors'));
      expect(artifactSha256(copy)).toBe(artifactSha256(STORIES));
      expect(modelSha256(copy)).toBe(modelSha256(STORIES));
    });
    expect(() => sha256File(path.join(dir, 'nope'))).toThrow(UsageError);
  });

  it('modelSha256 hashes the weight files\' bytes concatenated in sorted order; a directory stands for its *.safetensors', () => {
    const sub = path.join(dir, 'model');
    fs.mkdirSync(sub);
    const b = write('model/model-00002-of-00002.safetensors', 'second');
    const a = write('model/model-00001-of-00002.safetensors', 'first');
    write('model/config.json', '{}');
    expect(modelSha256([b, a])).toBe(ref('first', 'second'));
    expect(modelSha256(sub)).toBe(ref('first', 'second'));
    // the eval reports' digest of the same directory is a different thing: names and per-file hashes
    expect(weightListingSha256(sub)).toBe(ref(`model-00001-of-00002.safetensors ${ref('first')}\nmodel-00002-of-00002.safetensors ${ref('second')}\n`));
    expect(artifactSha256(sub)).toBe(weightListingSha256(sub));
    expect(artifactSha256(a)).toBe(ref('first'));
  });

  it('keeps the digest of stories260K that the committed accuracy baseline records', () => {
    const baseline = JSON.parse(fs.readFileSync(path.join(ROOT, 'ci/baselines/stories260K.json'), 'utf8'));
    expect(artifactSha256(STORIES)).toBe(baseline.kld.referenceSha256);
  });
});
