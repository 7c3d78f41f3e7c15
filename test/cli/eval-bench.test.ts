/** `edgellm bench` through the built CLI on a compiled stories260K HEF (figures present and sane; no timing assertions). */
import { describe, it, expect } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { edgellm, STORIES } from '../helpers/cli.js';
import { makeTempDir } from '../helpers/tmp.js';
import { loadHfModel } from '../../formats/hf.js';
import { compile } from '../../src/compiler/compile.js';
import { writeExecutable } from '../../formats/hef-executable.js';

describe('edgellm bench', () => {
  it('reports TTFT, decode tokens/s, peak RSS and file size for a HEF, as a table and as JSON', () => {
    const dir = makeTempDir('edgellm-bench-');
    const hef = path.join(dir, 'm.hef');
    writeExecutable(hef, compile(loadHfModel(STORIES), { prefillLen: 128 }));
    const out = path.join(dir, 'bench.json');
    const r = edgellm('bench', hef, '--runs', '2', '--warmup', '0', '--decode-tokens', '32', '--json', out);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^TTFT +\d+\.\d ms +\(96 prompt tokens; median of 2/m);
    expect(r.stdout).toMatch(/^decode +\d+\.\d\d tokens\/s/m);
    expect(r.stdout).toMatch(/^peak RSS +\d+\.\d MiB/m);
    const j = JSON.parse(fs.readFileSync(out, 'utf8'));
    expect(j.kind).toBe('hef');
    expect(j.fileBytes).toBe(fs.statSync(hef).size);
    expect(j.promptTokens).toBe(96);
    expect(j.decodeTokens).toBe(32);
    expect(j.runs.length).toBe(2);
    expect(j.ttftMs).toBeGreaterThan(0);
    expect(j.decodeTokensPerSecond).toBeGreaterThan(0);
    expect(j.peakRssBytes).toBeGreaterThan(10 * 2 ** 20); // a Node process with onnxruntime loaded
    expect(j.peakRssBytes).toBeGreaterThanOrEqual(j.rssAfterLoadBytes * 0.99);
    // --json with no file prints JSON on stdout
    const s = edgellm('bench', hef, '--runs', '1', '--warmup', '0', '--decode-tokens', '8', '--json');
    expect(s.code, s.stderr).toBe(0);
    expect(JSON.parse(s.stdout).runs.length).toBe(1);
  });
});
