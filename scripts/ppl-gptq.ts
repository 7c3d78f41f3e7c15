/**
 * GPTQ perplexity on stories260K (issue 3 acceptance, item "GPTQ W4 g64 within ±2% of 6.854"):
 * quantizes with true-sequential GPTQ on the fixed calibration windows, compiles, and evaluates
 * TinyStories perplexity (whole file tokenized once with BOS, non-overlapping windows of 256).
 *
 *   npx vite-node scripts/ppl-gptq.ts -- [--group 64] [--windows 128] [--act-order] [--dynamic-groups] [--rtn] [--fp32]
 *
 * Prints one line per configuration: ppl, wall time of the quantization, and the mean relative
 * layer-wise error of GPTQ and RTN.
 */
import * as path from 'node:path';
import { loadHfModel } from '../formats/hf.js';
import { TextTokenizer } from '../formats/tokenizer.js';
import { loadTextFile, loadTokenWindows, defaultSharedDir } from '../calibration/datasets.js';
import { slidingWindows } from '../calibration/windows.js';
import { compile } from '../src/compiler/compile.js';
import { SimulatorBackend } from '../src/runtime/simulator.js';
import { perplexity } from '../src/eval/ppl.js';
import { silentContext } from '../src/core/context.js';
import { rtn } from '../passes/rtn.js';
import { gptqModel, gptqReport } from '../passes/gptq-sequential.js';
import type { Model } from '../src/ir/model.js';

const argv = process.argv.slice(2);
const flag = (f: string) => argv.includes(f);
const num = (f: string, d: number) => (argv.includes(f) ? Number(argv[argv.indexOf(f) + 1]) : d);

async function ppl(model: Model, windows: number[][]): Promise<number> {
  const backend = await SimulatorBackend.load(compile(model, { prefillLen: 256, maxContext: 256 }));
  const r = await perplexity(backend, windows);
  await backend.dispose();
  return r.ppl;
}

async function main(): Promise<void> {
  const shared = defaultSharedDir();
  const model = loadHfModel(path.join(shared, 'models/stories260K'));
  const tok = new TextTokenizer(model.tokenizer);
  const ids = await tok.encode(loadTextFile(path.join(shared, 'data/tinystories/TinyStories-valid.txt')), true);
  const evalWindows = slidingWindows(ids, 256);
  const calib = loadTokenWindows(path.join(shared, 'data/calibration/c4-calib-128x256-seed0.tokens.json')).slice(0, num('--windows', 128));
  const groupSize = num('--group', 64);
  console.log(`TinyStories: ${ids.length} tokens, ${evalWindows.length} windows of 256; calibration: ${calib.length} windows`);
  if (flag('--fp32')) console.log(`fp32: ppl ${(await ppl(model, evalWindows)).toFixed(4)}`);
  if (flag('--rtn')) console.log(`RTN W4 g${groupSize}: ppl ${(await ppl(rtn(model, { groupSize, quantizeLmHead: false }, silentContext), evalWindows)).toFixed(4)}`);
  const t0 = performance.now();
  const opts = { groupSize, actOrder: flag('--act-order'), staticGroups: !flag('--dynamic-groups') };
  const q = await gptqModel(model, calib, opts, silentContext);
  const secs = (performance.now() - t0) / 1000;
  const rep = gptqReport(q)!;
  const mean = (f: (r: (typeof rep)[number]) => number) => rep.reduce((s, r) => s + f(r), 0) / rep.length;
  console.log(
    `GPTQ W4 g${groupSize} ${JSON.stringify(opts)}: ppl ${(await ppl(q, evalWindows)).toFixed(4)}; quantized in ${secs.toFixed(1)} s; ` +
      `mean rel. layer error gptq ${mean((r) => r.gptq / r.reference).toExponential(3)} vs rtn ${mean((r) => r.rtn / r.reference).toExponential(3)}; ` +
      `damp retries ${rep.reduce((s, r) => s + r.retries, 0)}`,
  );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
