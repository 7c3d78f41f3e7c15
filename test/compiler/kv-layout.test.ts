/**
 * The KV layout is the one source of the KV8 parameters and K-cache offsets: the compiler keeps
 * them out of the weights, the HEF states them once (header KV layout), and the runtime builds the
 * graphs' KV initializers from the layout it loads, so changing the layout changes the computation.
 */
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { compile } from '../../src/compiler/compile.js';
import { kvLayoutInitializers } from '../../src/compiler/kv-layout.js';
import { kvQuantNames } from '../../src/compiler/io-contract.js';
import { readExecutable, writeExecutable } from '../../formats/hef-executable.js';
import { openHef } from '../../formats/hef.js';
import { decodeSafetensors } from '../../formats/safetensors.js';
import { rtn } from '../../passes/rtn.js';
import { calibrateRanges } from '../../passes/calibrate-ranges.js';
import { centerKCache } from '../../passes/k-centering.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { silentContext } from '../../src/core/context.js';
import type { Executable } from '../../src/ir/executable.js';
import { STORIES } from '../helpers/paths.js';
import { withTempDirSync } from '../helpers/tmp.js';

const windows = [Array.from({ length: 24 }, (_, i) => (i * 37 + 1) % 512), Array.from({ length: 24 }, (_, i) => (i * 11 + 5) % 512)];
const prompt = [1, 40, 7, 300, 12, 99, 4];

async function lastLogits(exe: Executable): Promise<Float32Array> {
  const b = await SimulatorBackend.load(exe);
  const ctx = b.newContext();
  const out = await b.forward(ctx, prompt, { lastOnly: true });
  await b.dispose();
  return out;
}

describe('KV layout as the one source of KV8 parameters', () => {
  let exe: Executable;
  beforeAll(async () => {
    let m = rtn(loadHfModel(STORIES), { groupSize: 32, quantizeLmHead: false }, silentContext);
    m = await centerKCache(m, windows, silentContext);
    m = await calibrateRanges(m, windows, { observer: 'minmax', activations: true, kvCache: true }, silentContext);
    exe = compile(m, { prefillLen: 8 });
  });

  it('keeps the KV8 scales, zero points and K offsets out of the weights; the layout defines all of them', () => {
    const fromLayout = kvLayoutInitializers(exe.kvLayout);
    expect(fromLayout.size).toBe(5 * exe.config.numLayers); // k/v scale + zero point + K offset per layer
    for (const n of fromLayout.keys()) expect(exe.weights.has(n)).toBe(false);
    const n0 = kvQuantNames(0);
    expect(fromLayout.get(n0.kScale)!.data[0]).toBe(exe.kvLayout.layers[0]!.k.scale);
    expect(fromLayout.get(n0.vZeroPoint)!.data[0]).toBe(exe.kvLayout.layers[0]!.v.zeroPoint);
  });

  it('a HEF holds them once: in the header KV layout, not in the weights section', () => {
    withTempDirSync('edgellm-kv-', (dir) => {
      const file = path.join(dir, 'm.hef');
      writeExecutable(file, exe);
      const hef = openHef(file);
      const { tensors } = decodeSafetensors(hef.readSection('weights'), 'weights');
      expect(hef.header.kvCache.layers).toHaveLength(exe.config.numLayers);
      hef.close();
      for (const n of kvLayoutInitializers(exe.kvLayout).keys()) expect(tensors.has(n)).toBe(false);
      expect(readExecutable(file).kvLayout).toEqual(exe.kvLayout);
    });
  });

  it('the runtime computes with the layout it loads: changing a layer K scale or K offset changes the logits', async () => {
    const base = await lastLogits(exe);
    const again = await lastLogits(exe);
    expect(again).toEqual(base); // same layout, same graph: bit-exact
    const scaled = structuredClone(exe.kvLayout);
    scaled.layers[0]!.k.scale *= 3;
    const shifted = structuredClone(exe.kvLayout);
    shifted.layers[1]!.kOffset = shifted.layers[1]!.kOffset!.map((c) => c + 0.5);
    for (const kvLayout of [scaled, shifted]) {
      const other = await lastLogits({ ...exe, kvLayout });
      // a coarser K grid (3x the step) or a K offset that no longer matches the calibrated range moves
      // the logits far beyond float32 noise (~1e-6); 1e-3 separates "changed" from "same computation"
      let d = 0;
      for (let i = 0; i < base.length; i++) d = Math.max(d, Math.abs(other[i] - base[i]));
      expect(d).toBeGreaterThan(1e-3);
    }
  });
});
