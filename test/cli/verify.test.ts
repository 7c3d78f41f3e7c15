/**
 * `edgellm verify` and `--no-verify` through the built CLI on stories260K artifacts: a full check
 * passes on intact files and names the file and the broken part after one flipped byte (exit code of
 * a format error); loading a HEF with a flipped weight byte fails unless --no-verify is given.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { compile } from '../../src/compiler/compile.js';
import { readExecutable, writeExecutable } from '../../formats/hef-executable.js';
import { saveModelHar } from '../../formats/har-model.js';
import { edgellm, STORIES } from '../helpers/cli.js';
import { makeTempDir, removeDir } from '../helpers/tmp.js';

const dir = makeTempDir('edgellm-verify-');
afterAll(() => removeDir(dir));
const hef = path.join(dir, 'model.hef');
const har = path.join(dir, 'model.har');

/** A copy of `file` with byte `at` flipped. */
function flipped(file: string, at: number, name: string): string {
  const b = fs.readFileSync(file);
  b[at] ^= 0x01;
  const out = path.join(dir, name);
  fs.writeFileSync(out, b);
  return out;
}

beforeAll(async () => {
  const model = loadHfModel(STORIES);
  writeExecutable(hef, compile(model, { prefillLen: 16, maxContext: 64 }));
  await saveModelHar(har, model, { modelName: 'stories260K', sourceSha256: '' });
});

describe('edgellm verify', () => {
  it('passes intact HEF and HAR files, with --json for machines', () => {
    const r = edgellm('verify', hef);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/model\.hef: ok \(HEF, \d+ sections, [\d.]+ MiB verified in \d+ ms\)/);
    const j = edgellm('verify', har, '--json');
    expect(j.code, j.stderr).toBe(0);
    expect(JSON.parse(j.stdout)).toMatchObject({ kind: 'har', bytes: fs.statSync(har).size });
    expect(JSON.parse(j.stdout).parts).toBeGreaterThan(1);
  });

  it('names the file and the corrupt part after one flipped byte, in one line, exit 3', () => {
    const t = readExecutable(hef, { mapWeights: true }).mappedWeights!.tensors.values().next().value!;
    const bad = flipped(hef, t.offset + 7, 'bad.hef');
    const r = edgellm('verify', bad);
    expect(r.code).toBe(3);
    expect(r.stderr.trim()).toBe(`error: ${bad}: section 'weights' is corrupt: sha256 mismatch`);
    const badHar = flipped(har, fs.statSync(har).size - 2048 - 700, 'bad.har');
    const h = edgellm('verify', badHar);
    expect(h.code).toBe(3);
    expect(h.stderr.trim().split('\n')).toHaveLength(1);
    expect(h.stderr).toContain(badHar);
    expect(edgellm('verify', STORIES).code).toBe(2); // a model directory has no checksums: usage error
  });

  it('run refuses a HEF with a flipped weight byte unless --no-verify is given', () => {
    const t = readExecutable(hef, { mapWeights: true }).mappedWeights!.tensors.values().next().value!;
    const bad = flipped(hef, t.offset + 11, 'bad-run.hef');
    for (const extra of [[], ['--no-mlock']]) {
      const r = edgellm('run', bad, '-p', 'Once upon a time', '-n', '4', ...extra);
      expect(r.code).toBe(3);
      expect(r.stderr.trim()).toBe(`error: ${bad}: section 'weights' is corrupt: sha256 mismatch`);
    }
    const skipped = edgellm('run', bad, '-p', 'Once upon a time', '-n', '4', '--no-verify');
    expect(skipped.code, skipped.stderr).toBe(0);
  });
});
