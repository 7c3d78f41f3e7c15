/**
 * Bad input through the CLI: one line naming the file and the problem, a non-zero exit code, no
 * stack trace (unless --verbose), and no output file (not even a temporary one) left behind.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { edgellm, STORIES } from '../helpers/cli.js';
import { makeTempDir } from '../helpers/tmp.js';

let dir: string;
let har: string;
let hef: string;

function expectCleanFailure(r: { code: number; stderr: string }, file: string, outDir: string, output: string): void {
  expect(r.code).not.toBe(0);
  const lines = r.stderr.trim().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0].startsWith('error: ')).toBe(true);
  expect(lines[0]).toContain(path.basename(file));
  expect(r.stderr).not.toMatch(/\n\s+at /);
  expect(fs.existsSync(output)).toBe(false);
  expect(fs.readdirSync(outDir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
}

function variant(src: string, name: string, mutate: (b: Buffer) => Buffer): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, mutate(Buffer.from(fs.readFileSync(src))));
  return p;
}

const flip = (at: number) => (b: Buffer) => {
  b[at] ^= 0xff;
  return b;
};

describe('CLI error handling', () => {
  beforeAll(() => {
    dir = makeTempDir('edgellm-err-');
    har = path.join(dir, 'good.har');
    hef = path.join(dir, 'good.hef');
    expect(edgellm('quantize', STORIES, '-o', har, '--calib-samples', '8').code).toBe(0);
    expect(edgellm('compile', har, '-o', hef).code).toBe(0);
  });

  it('rejects a HAR with bad magic, wrong version, flipped bytes or a truncated tail; compile writes nothing', () => {
    const size = fs.statSync(har).size;
    const cases = [
      variant(har, 'magic.har', (b) => {
        b.write('XXXXX', 257, 'latin1');
        return b;
      }),
      variant(har, 'trunc.har', (b) => b.subarray(0, Math.floor(size * 0.7))),
      variant(har, 'tail.har', (b) => b.subarray(0, size - 700)),
      ...[0.05, 0.2, 0.4, 0.6, 0.8, 0.95].map((f) => variant(har, `flip${f}.har`, flip(Math.floor(size * f)))),
    ];
    for (const bad of cases) {
      const out = path.join(dir, 'x.hef');
      expectCleanFailure(edgellm('compile', bad, '-o', out), bad, dir, out);
    }
  });

  it('rejects a HEF with bad magic, wrong version, a flipped byte in any section or header, or a truncated tail', () => {
    const info = JSON.parse(edgellm('inspect', hef, '--json').stdout);
    const size = fs.statSync(hef).size;
    const cases = [
      variant(hef, 'magic.hef', flip(0)),
      variant(hef, 'version.hef', (b) => {
        b.writeUInt32LE(99, 8);
        return b;
      }),
      variant(hef, 'header.hef', flip(60)),
      variant(hef, 'trunc.hef', (b) => b.subarray(0, size - 10)),
      ...info.sections.map((s: { name: string; offset: number; bytes: number }) =>
        variant(hef, `flip-${s.name}.hef`, flip(s.offset + Math.floor(s.bytes / 2))),
      ),
    ];
    for (const bad of cases) {
      for (const args of [['run', bad, '-n', '2'], ['inspect', bad]]) {
        const r = edgellm(...args);
        expectCleanFailure(r, bad, dir, path.join(dir, 'none'));
      }
    }
  });

  it('inspect refuses a checksum-valid HAR with a malformed manifest field or report.json in one line', async () => {
    const { readHar, writeHar } = await import('../../formats/har.js');
    const { manifest, files } = await readHar(har);
    const { format: _f, formatVersion: _v, files: _l, ...rest } = manifest as Record<string, unknown>;
    const repack = async (name: string, m: Record<string, unknown>, fs2: Map<string, Uint8Array>) => {
      const p = path.join(dir, name);
      await writeHar(p, m, fs2);
      return p;
    };
    const badName = await repack('bad-name.har', { ...rest, modelName: { toString: 1 } }, files);
    const badReport = await repack('bad-report.har', rest, new Map([...files, ['report.json', new TextEncoder().encode('{"layers": [')]]));
    for (const bad of [badName, badReport]) {
      const r = edgellm('inspect', bad);
      expect(r.code, r.stderr).toBe(3);
      expectCleanFailure(r, bad, dir, path.join(dir, 'none'));
    }
    expect(edgellm('inspect', badReport).stderr).toMatch(/member report\.json is not valid JSON/);
  });

  it('rejects a truncated or malformed safetensors and an unsupported model_type, leaving no HAR', () => {
    const mk = (name: string, edit: (d: string) => void) => {
      const d = path.join(dir, name);
      fs.mkdirSync(d);
      for (const f of fs.readdirSync(STORIES)) if (f !== 'llama2c') fs.copyFileSync(path.join(STORIES, f), path.join(d, f));
      edit(d);
      return d;
    };
    const truncated = mk('truncated', (d) => fs.truncateSync(path.join(d, 'model.safetensors'), 500_000));
    const garbage = mk('garbage', (d) => fs.writeFileSync(path.join(d, 'model.safetensors'), Buffer.from('not a safetensors file at all')));
    const gpt2 = mk('gpt2', (d) => {
      const c = JSON.parse(fs.readFileSync(path.join(d, 'config.json'), 'utf8'));
      fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify({ ...c, model_type: 'gpt2' }));
    });
    for (const [d, file, msg] of [
      [truncated, 'model.safetensors', /past end|out of range|truncat/i],
      [garbage, 'model.safetensors', /header/i],
      [gpt2, 'config.json', /unsupported model_type 'gpt2' \(supported: llama, qwen2, mistral\)/],
    ] as const) {
      const out = path.join(dir, `${path.basename(d)}.har`);
      const r = edgellm('quantize', d, '-o', out);
      expectCleanFailure(r, file, dir, out);
      expect(r.stderr).toMatch(msg);
    }
  });

  it('shows the stack trace only with --verbose', () => {
    const bad = variant(hef, 'v.hef', flip(0));
    const r = edgellm('inspect', bad, '--verbose');
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/\n\s+at /);
  });
});
