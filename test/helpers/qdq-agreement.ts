/**
 * The reference forward's static mode against the graph's QDQ codes and the HEF's logits, with the
 * boundary-flip bookkeeping of test/ir/reference-static.test.ts (its header explains it): per width,
 * how many codes differ, how many of those lie on a rounding boundary, and the logits before each
 * window's first flip. Shared by test/ir/reference-a16.test.ts and test/ir/reference-kv16.test.ts.
 */
import * as path from 'node:path';
import { expect } from 'vitest';
import { readExecutable, writeExecutable } from '../../formats/hef-executable.js';
import { compile } from '../../src/compiler/compile.js';
import { referenceForward } from '../../src/ir/reference.js';
import type { Model } from '../../src/ir/model.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import type { QdqRun } from './recipe-quantize.js';

/**
 * A value within this many code units of a rounding boundary k + ½ is "on the boundary": 1e-3 at 8
 * bits (test/ir/reference-static.test.ts's), the same distance in x at 16 bits, 1e-3·65535/255 =
 * 0.257 code units. The reference's values differ from ORT's by an absolute amount (float64 against
 * float32 arithmetic, the same at both widths), measured here: at most 4.3e-4 8-bit or 0.11 16-bit
 * code units, and every code that differs once the reference follows ORT lies within 2e-5 (8 bits)
 * or 0.014 (16 bits) of a boundary.
 */
export const BOUNDARY = { 8: 1e-3, 16: (1e-3 * 65535) / 255 } as const;
const REPORT = process.env.EDGELLM_REPORT_FLIPS === '1';

/** Distance of fl32(fl32(x)/s) from the nearest half-integer, in code units. */
export const boundaryDistance = (x: number, scale: number) => {
  const u = Math.fround(Math.fround(x) / Math.fround(scale));
  return Math.abs(u - (Math.floor(u) + 0.5));
};

let hefCount = 0;

/**
 * The HEF's logits of each window (from position 0, one call) on the simulator at 'exact', its W8
 * linears on the native 8-bit kernel: the graph the probe runs (runQdqGraph), so the codes the probe
 * exposes are the HEF's. (The default exact path runs W8 as a pair of 4-bit kernels,
 * src/runtime/w8-exact.ts, equal to the native one up to float reassociation:
 * test/runtime/w8-exact.test.ts.)
 */
export async function hefLogits(model: Model, windows: number[][], dir: string): Promise<Float32Array[]> {
  const file = path.join(dir, `qdq-agreement-${hefCount++}.hef`);
  writeExecutable(file, compile(model, { prefillLen: Math.max(...windows.map((w) => w.length)) }));
  const b = await SimulatorBackend.load(readExecutable(file), { precision: 'exact', w8: 'native' });
  const out: Float32Array[] = [];
  for (const w of windows) out.push(await b.forward(b.newContext(), w));
  await b.dispose();
  return out;
}

export interface Agreement {
  maxAbs: number;
  maxAbsBeforeFlip: number;
  flippedWindows: number;
  /**
   * per width: codes compared, codes that differ, of them those on a boundary (the reference's value)
   * and those not ORT's code ± 1, and the largest |x/s| difference between the two inputs
   */
  codes: Record<8 | 16, { compared: number; flips: number; boundaryFlips: number; nonAdjacent: number; maxInputDiff: number }>;
  /** per window with a flip: the first one (position, point, both distances to a boundary) */
  firstFlips: { window: number; point: string; bits: 8 | 16; t: number; ortDistance: number; refDistance: number }[];
}

/** The reference's static forward on every window against ORT's codes and the HEF's logits (see the header). */
export function agreement(model: Model, windows: number[][], runs: QdqRun[], logits: Float32Array[], followBoundary: boolean): Agreement {
  const V = model.config.vocabSize;
  const a: Agreement = { maxAbs: 0, maxAbsBeforeFlip: 0, flippedWindows: 0, codes: { 8: { compared: 0, flips: 0, boundaryFlips: 0, nonAdjacent: 0, maxInputDiff: 0 }, 16: { compared: 0, flips: 0, boundaryFlips: 0, nonAdjacent: 0, maxInputDiff: 0 } }, firstFlips: [] };
  windows.forEach((w, wi) => {
    let firstT = w.length;
    const seen = new Set<string>();
    const ref = referenceForward(model, w, {
      quantization: 'static',
      onQdq: (r) => {
        const ort = runs[wi].points.get(r.point);
        expect(ort, `${r.point}: a QDQ point of the reference the graph does not have`).toBeDefined();
        expect([r.bits, r.codes.length], r.point).toEqual([ort!.bits, ort!.codes.length]);
        seen.add(r.point);
        const F = r.codes.length / w.length;
        const c = a.codes[r.bits];
        for (let i = 0; i < r.codes.length; i++) {
          c.compared++;
          c.maxInputDiff = Math.max(c.maxInputDiff, Math.abs(r.input[i] - ort!.input[i]) / r.params.scale);
          if (r.codes[i] === ort!.codes[i]) continue;
          const refDistance = boundaryDistance(r.input[i], r.params.scale);
          const onBoundary = refDistance < BOUNDARY[r.bits];
          c.flips++;
          if (Math.abs(r.codes[i] - ort!.codes[i]) !== 1) c.nonAdjacent++;
          if (onBoundary) c.boundaryFlips++;
          const t = Math.floor(i / F);
          if (t < firstT) {
            firstT = t;
            a.firstFlips.push({ window: wi, point: r.point, bits: r.bits, t, ortDistance: boundaryDistance(ort!.input[i], r.params.scale), refDistance });
          }
          if (followBoundary && onBoundary) r.codes[i] = ort!.codes[i];
        }
      },
    });
    // the reference quantizes exactly the graph's QDQ points (float points: neither)
    expect([...seen].sort()).toEqual([...runs[wi].points.keys()].sort());
    if (firstT < w.length) a.flippedWindows++;
    for (let i = 0; i < ref.length; i++) {
      const d = Math.abs(ref[i] - logits[wi][i]);
      a.maxAbs = Math.max(a.maxAbs, d);
      if (i < firstT * V) a.maxAbsBeforeFlip = Math.max(a.maxAbsBeforeFlip, d);
    }
  });
  if (REPORT) console.log(JSON.stringify({ windows: windows.length, tokens: windows[0].length, followBoundary, ...a, firstFlips: a.firstFlips.map((f) => `window ${f.window}: ${f.point} t=${f.t}`) }, null, 1));
  return a;
}

