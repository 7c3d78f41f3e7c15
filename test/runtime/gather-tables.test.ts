/**
 * A tied, 4-bit embedding on the mapped load (src/runtime/gather-tables.ts): the gather reads its own
 * aliases of lm_head's table and scales (the same file bytes, the gather's shape) instead of the
 * initializers MatMulNBits prepacks, and the backend's logits are bit-identical to the unmapped
 * load's, which runs the graph as compiled.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { makeCheckpoint } from '../../fixtures/make-fixture.js';
import { loadHfModel } from '../../formats/hf.js';
import { rtn } from '../../passes/rtn.js';
import { compile } from '../../src/compiler/compile.js';
import { readExecutable, writeExecutable } from '../../formats/hef-executable.js';
import { decodeModel } from '../../formats/onnx.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { ownGatherTables } from '../../src/runtime/gather-tables.js';
import { silentContext } from '../../src/core/context.js';
import { TINY_QWEN2_DIR } from '../helpers/paths.js';
import { suiteTempDir } from '../helpers/tmp.js';

const dir = suiteTempDir('edgellm-gather-');

/** The tiny Qwen2 fixture (tied embeddings) with a vocabulary large enough for lm_head's 4-bit table (256 KiB) and scales (128 KiB at group 16) to be mapped. */
function tiedHef(): string {
  const config = { ...JSON.parse(fs.readFileSync(path.join(TINY_QWEN2_DIR, 'config.json'), 'utf8')), vocab_size: 16384 };
  makeCheckpoint(config, path.join(dir, 'ckpt'));
  const q = rtn(loadHfModel(path.join(dir, 'ckpt')), { groupSize: 16, quantizeLmHead: true }, silentContext);
  const hef = path.join(dir, 'tied.hef');
  writeExecutable(hef, compile(q, { prefillLen: 8, maxContext: 64 }));
  return hef;
}

async function logits(exe: ReturnType<typeof readExecutable>, resident?: boolean): Promise<Float32Array> {
  const b = await SimulatorBackend.load(exe, { resident });
  const ctx = b.newContext();
  const a = await b.forward(ctx, [1, 300, 9001, 16383, 42, 7]);
  const d = await b.forward(ctx, [12000]);
  await b.dispose();
  return Float32Array.from([...a, ...d]);
}

describe('a tied 4-bit embedding on the mapped load', () => {
  const hef = tiedHef();

  it('gathers from its own aliases of the table and the scales, and drops the scales Reshape', () => {
    const exe = readExecutable(hef, { mapWeights: true });
    const mapped = exe.mappedWeights!;
    const graph = decodeModel(exe.prefill.onnx, 'graph.prefill');
    const { model, aliases } = ownGatherTables(graph, mapped);
    const table = mapped.tensors.get('lm_head.qweight')!;
    const scales = mapped.tensors.get('lm_head.scales')!;
    expect(aliases.get('lm_head.qweight.gather')).toEqual(table);
    expect(aliases.get('lm_head.scales.gather')).toEqual({ ...scales, shape: [16384, 2, 1] });
    const gather = model.graph!.node!.find((n) => n.opType === 'GatherBlockQuantized')!;
    expect([gather.input![0], gather.input![2]]).toEqual(['lm_head.qweight.gather', 'lm_head.scales.gather']);
    // lm_head's MatMulNBits still reads the originals; the Reshape feeding the gather is gone
    const head = model.graph!.node!.find((n) => n.opType === 'MatMulNBits' && n.input![1] === 'lm_head.qweight')!;
    expect(head.input![2]).toBe('lm_head.scales');
    expect(graph.graph!.node!.some((n) => n.name === '/model/embed_tokens/scales')).toBe(true);
    expect(model.graph!.node!.some((n) => n.name === '/model/embed_tokens/scales')).toBe(false);
    // nothing to do without mapped tables: the same graph back
    expect(ownGatherTables(graph, { file: hef, tensors: new Map() }).model).toBe(graph);
  });

  it('gives logits bit-identical to the unmapped load (resident copy and file mapping)', async () => {
    const want = await logits(readExecutable(hef));
    expect(await logits(readExecutable(hef, { mapWeights: true }))).toEqual(want);
    expect(await logits(readExecutable(hef, { mapWeights: true }), false)).toEqual(want);
  });
});
