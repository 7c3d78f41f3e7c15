/**
 * Exact W8 as two 4-bit MatMulNBits on the codes' nibbles (src/runtime/w8-exact.ts): the split is
 * lossless on the codes, the rewritten graph has no 8-bit MatMulNBits left, and the simulator's
 * `exact` mode computes what the native 8-bit kernel computes. Logits are compared with activation
 * and KV quantization off (every linear W8, float points), where no QDQ rounding boundary can flip
 * and cascade, to 1e-4: the nibble products and their sum round where the single (q − 128)·s
 * product did (float reassociation, measured ~1e-5 on stories260K's logits).
 */
import { describe, expect, it } from 'vitest';
import { splitCodes, splitW8MatMuls } from '../../src/runtime/w8-exact.js';
import { unpackWeights } from '../../src/ir/quant.js';
import { loadHfModel } from '../../formats/hf.js';
import { loadTokenWindows } from '../../calibration/datasets.js';
import { compile } from '../../src/compiler/compile.js';
import { decodeModel } from '../../formats/onnx.js';
import { readExecutable, writeExecutable } from '../../formats/hef-executable.js';
import * as path from 'node:path';
import { suiteTempDir } from '../helpers/tmp.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { quantizeWithRecipe } from '../helpers/recipe-quantize.js';
import { CALIB, STORIES } from '../helpers/paths.js';
import { randomBytes } from '../helpers/random.js';

/** Float reassociation bound on stories260K's logits (see the module doc). */
const TOL = 1e-4;

describe('splitCodes', () => {
  it('16·high + low nibble gives back every 8-bit code', () => {
    const [N, nb, G] = [5, 3, 32];
    const codes = randomBytes(N * nb * G, 7);
    const { hi, lo } = splitCodes(codes, G);
    const h = unpackWeights(hi, N, nb * G, G, 4);
    const l = unpackWeights(lo, N, nb * G, G, 4);
    for (let i = 0; i < codes.length; i++) expect(16 * h[i] + l[i]).toBe(codes[i]);
  });
});

describe('exact W8 on stories260K (every linear W8)', () => {
  const base = loadHfModel(STORIES);
  const windows = loadTokenWindows(CALIB, { vocabSize: base.config.vocabSize })
    .slice(0, 8)
    .map((w) => w.slice(0, 64));

  it('the rewrite leaves no 8-bit MatMulNBits and adds one Add per W8 linear; a W4 graph is left as it is', async () => {
    const m = await quantizeWithRecipe(base, 'defaults: {weight_bits: 8}\n', windows);
    const exe = compile(m, { prefillLen: 64, maxContext: 64 });
    const graph = decodeModel(exe.prefill.onnx, 'prefill');
    const split = splitW8MatMuls(graph, (n) => exe.weights.get(n)!);
    const bits = (g: { graph?: typeof graph.graph | null }) => g.graph!.node!.filter((n) => n.opType === 'MatMulNBits').map((n) => Number(n.attribute!.find((a) => a.name === 'bits')!.i));
    const w8 = bits(graph).filter((b) => b === 8).length;
    expect(w8).toBe(36); // 5 layers × 7 linears + lm_head
    expect(bits(split.model).every((b) => b === 4)).toBe(true);
    expect(bits(split.model)).toHaveLength(2 * w8);
    expect(split.model.graph!.node!.length).toBe(graph.graph!.node!.length + 2 * w8);
    const w4 = compile(await quantizeWithRecipe(base, 'defaults: {}\n', windows), { prefillLen: 64, maxContext: 64 });
    const g4 = decodeModel(w4.prefill.onnx, 'prefill');
    expect(splitW8MatMuls(g4, (n) => w4.weights.get(n)!).model).toBe(g4);
  }, 120_000);

  it(`exact logits with the nibble pair equal the native 8-bit kernel's to ${TOL} (float points: no QDQ boundaries)`, async () => {
    const m = await quantizeWithRecipe(base, 'defaults: {weight_bits: 8, act_bits: 32, kv_bits: 32}\n', windows);
    const exe = compile(m, { prefillLen: 64, maxContext: 64 });
    const a = await SimulatorBackend.load(exe, { w8: 'nibbles' });
    const b = await SimulatorBackend.load(exe, { w8: 'native' });
    let max = 0;
    for (const w of windows.slice(0, 4)) {
      const x = await a.forward(a.newContext(), w);
      const y = await b.forward(b.newContext(), w);
      for (let i = 0; i < x.length; i++) max = Math.max(max, Math.abs(x[i] - y[i]));
    }
    await a.dispose();
    await b.dispose();
    expect(max).toBeLessThan(TOL);
  }, 120_000);

  it('from a HEF, the nibble tables are mapped beside the weights and compute exactly what the in-memory graph does', async () => {
    const m = await quantizeWithRecipe(base, 'overrides:\n  model.layers.*.mlp.down_proj: {weight_bits: 8}\n  lm_head: {weight_bits: 8}\n', windows);
    const exe = compile(m, { prefillLen: 64, maxContext: 64 });
    const file = path.join(suiteTempDir('edgellm-w8-exact-'), 'w8.hef');
    writeExecutable(file, exe);
    for (const resident of [true, false]) {
      const mapped = await SimulatorBackend.load(await readExecutable(file, { mapWeights: true }), { resident });
      const inMemory = await SimulatorBackend.load(exe);
      for (const w of windows.slice(0, 2)) expect(await mapped.forward(mapped.newContext(), w)).toEqual(await inMemory.forward(inMemory.newContext(), w));
      await mapped.dispose();
      await inMemory.dispose();
    }
  }, 120_000);
});
