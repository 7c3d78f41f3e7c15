/** `edgellm eval --adapter`: the LoRA adapter of a HAR is evaluated, and recorded in the report. */
import { describe, it, expect } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { edgellm, STORIES, SHARED } from '../helpers/cli.js';
import { loadHfModel } from '../../formats/hf.js';
import { saveModelHar } from '../../formats/har-model.js';
import { rtn } from '../../passes/rtn.js';
import { silentContext } from '../../src/pipeline-context.js';

describe('edgellm eval / bench --adapter', () => {
  it('evaluates the WikiText-trained adapter (lower WikiText-2 ppl than the base) and records it', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'edgellm-eval-lora-'));
    const har = path.join(dir, 'm.har');
    await saveModelHar(har, rtn(loadHfModel(STORIES), { groupSize: 64, quantizeLmHead: false }, silentContext), { modelName: 'stories260K', sourceSha256: '' });
    const add = edgellm('-q', 'add-lora', path.join(SHARED, 'adapters/stories260K-lora-wiki'), '--har', har, '--name', 'wiki', '--lora-bits', '32');
    expect(add.code, add.stderr).toBe(0);
    const args = ['eval', har, '--text', 'wikitext2', '--max-windows', '4', '--json'];
    const base = JSON.parse(edgellm(...args).stdout);
    const lora = JSON.parse(edgellm(...args, '--adapter', 'wiki').stdout);
    expect(base.settings.adapter).toBeNull();
    expect(lora.settings.adapter).toBe('wiki');
    // the adapter's README: fp32 base ~100.9, with the adapter ~24 on the first 40 windows
    expect(lora.ppl).toBeLessThan(0.5 * base.ppl);
    const bad = edgellm('eval', har, '--text', 'wikitext2', '--max-windows', '1', '--adapter', 'nope');
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/no LoRA adapter 'nope'.*it has: wiki/);
    // bench runs the same executable with the adapter selected, and names it
    const b = JSON.parse(edgellm('bench', har, '--runs', '1', '--warmup', '0', '--decode-tokens', '4', '--adapter', 'wiki', '--json').stdout);
    expect(b.adapter).toBe('wiki');
    expect(b.adapters).toBe(1);
    expect(b.decodeTokensPerSecond).toBeGreaterThan(0);
    const bb = edgellm('bench', har, '--runs', '1', '--adapter', 'nope');
    expect(bb.code).toBe(1);
    expect(bb.stderr.trim().split('\n')).toEqual([expect.stringMatching(/no LoRA adapter 'nope'/)]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
