/** `edgellm eval --adapter`: the LoRA adapter of a HAR is evaluated, and recorded in the report. */
import { describe, it, expect } from 'vitest';
import * as path from 'node:path';
import { edgellm, STORIES } from '../helpers/cli.js';
import { WIKI_ADAPTER } from '../helpers/paths.js';
import { makeTempDir, removeDir } from '../helpers/tmp.js';
import { loadHfModel } from '../../formats/hf.js';
import { saveModelHar } from '../../formats/har-model.js';
import { rtn } from '../../passes/rtn.js';
import { silentContext } from '../../src/core/context.js';

describe('edgellm eval / bench --adapter', () => {
  it('evaluates the WikiText-trained adapter (lower WikiText-2 ppl than the base) and records it', async () => {
    const dir = makeTempDir('edgellm-eval-lora-');
    const har = path.join(dir, 'm.har');
    await saveModelHar(har, rtn(loadHfModel(STORIES), { groupSize: 64, quantizeLmHead: false }, silentContext), { modelName: 'stories260K', sourceSha256: '' });
    const add = edgellm('-q', 'add-lora', WIKI_ADAPTER, '--har', har, '--name', 'wiki', '--lora-bits', '32');
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
    // --lora is for fp32 model directories; a HAR's adapters are selected with --adapter
    const wrongLora = edgellm('eval', har, '--lora', WIKI_ADAPTER, '--text', 'wikitext2', '--max-windows', '1');
    expect(wrongLora.code).toBe(2);
    expect(wrongLora.stderr.trim().split('\n')).toEqual([expect.stringMatching(/--lora applies a PEFT adapter to an fp32 model directory; .*m\.har is a har/)]);
    const bb = edgellm('bench', har, '--runs', '1', '--adapter', 'nope');
    expect(bb.code).toBe(1);
    expect(bb.stderr.trim().split('\n')).toEqual([expect.stringMatching(/no LoRA adapter 'nope'/)]);
    removeDir(dir);
  });

  it('--lora merges a PEFT adapter into an fp32 model directory: the adapter README\'s 24.083 on 40 WikiText-2 windows', () => {
    const adapter = WIKI_ADAPTER;
    const r = edgellm('eval', STORIES, '--lora', adapter, '--text', 'wikitext2', '--max-windows', '40', '--threads', '1', '--json');
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.settings.lora).toBe(adapter);
    // the README's figure comes from torch (fp32, merged weights); float32 logits differ by ~1e-5,
    // which moves a perplexity of 24 by far less than 0.001
    expect(Math.abs(j.ppl - 24.083)).toBeLessThan(1e-3);
    // kld against the fp32 + adapter reference: the same model, so zero
    const k = JSON.parse(
      edgellm('eval', STORIES, '--lora', adapter, '--task', 'kld', '--reference', STORIES, '--reference-lora', adapter, '--text', 'wikitext2', '--max-windows', '2', '--json').stdout,
    );
    expect(k.kld.meanKld).toBeLessThan(1e-9);
    expect(k.kld.referenceLora).toBe(adapter);
    const dir = makeTempDir('edgellm-eval-lora-');
    const bad2 = edgellm('eval', STORIES, '--lora', path.join(dir, 'missing'), '--text', 'wikitext2', '--max-windows', '1');
    expect(bad2.code).toBe(2);
    expect(bad2.stderr.trim().split('\n')).toEqual([expect.stringMatching(/missing: no such adapter directory/)]);
    removeDir(dir);
  });
});
