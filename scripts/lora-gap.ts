/**
 * The LoRA acceptance figure of issue 4 with its uncertainty:
 *
 *   gap = ppl(HEF + adapter) / ppl(fp32 + adapter) − ppl(HEF) / ppl(fp32)      (bound: ≤ 0.03)
 *
 * on the same windows, plus what the ratios leave out: the mean KL-divergence of each quantized
 * model from its own fp32 reference, and a paired bootstrap over windows (10,000 resamples of the
 * window indices, the same indices for all four models; seeded) giving the gap's 95% interval and
 * how often a resample stays within the bound. Windows are the resampling unit because the tokens of
 * one window share their context.
 *
 *   npx vite-node scripts/lora-gap.ts -- q.hef wiki [--text wikitext2] [--max-windows 40]
 *       [--model ../shared/models/stories260K] [--lora ../shared/adapters/stories260K-lora-wiki]
 *
 * The HEF (or HAR) must hold the adapter (`edgellm add-lora … --name wiki`); the fp32 + adapter
 * reference merges the PEFT adapter into the fp32 weights (as `edgellm eval DIR --lora`).
 */
import * as path from 'node:path';
import { defaultSharedDir } from '../calibration/datasets.js';
import { slidingWindows } from '../calibration/windows.js';
import { mulberry32 } from '../src/core/rng.js';
import { TextTokenizer } from '../formats/tokenizer.js';
import { loadArtifact } from '../src/cli/load-artifact.js';
import { SimulatorBackend } from '../src/runtime/simulator.js';
import { klDivergence, type KldResult } from '../src/eval/kld.js';
import { loadEvalText } from '../src/eval/ppl.js';
import { textPath } from '../src/cli/common.js';

const argv = process.argv.slice(2).filter((a) => a !== '--');
const opt = (f: string, d: string) => (argv.includes(f) ? argv[argv.indexOf(f) + 1] : d);
const positional = argv.filter((a, i) => !a.startsWith('--') && !(i > 0 && argv[i - 1].startsWith('--')));
const BOUND = 0.03;

/** ppl ratio of a KLD run restricted to window indices `idx` (equal-length windows) */
function ratio(k: KldResult, idx: number[]): number {
  let d = 0;
  for (const i of idx) d += k.windowNll[i] - k.referenceWindowNll[i];
  return Math.exp(d / idx.length);
}

async function main(): Promise<void> {
  const [hef, adapter] = positional;
  if (!hef || !adapter) throw new Error('usage: lora-gap.ts MODEL.hef ADAPTER_NAME [--text wikitext2] [--max-windows 40] [--model DIR] [--lora DIR]');
  const shared = defaultSharedDir();
  const modelDir = opt('--model', path.join(shared, 'models/stories260K'));
  const loraDir = opt('--lora', path.join(shared, 'adapters/stories260K-lora-wiki'));
  const text = textPath(opt('--text', 'wikitext2'));
  const maxWindows = Number(opt('--max-windows', '40'));

  const q = await loadArtifact(hef, { prefillLen: 128 });
  const fp = await loadArtifact(modelDir, { prefillLen: 128 });
  const fpLora = await loadArtifact(modelDir, { prefillLen: 128, lora: loraDir });
  const tok = new TextTokenizer(q.exe.tokenizer);
  const windows = slidingWindows(await tok.encode(loadEvalText(text), true), 256, maxWindows);
  const [bq, bf, bfl] = await Promise.all([q, fp, fpLora].map((a) => SimulatorBackend.load(a.exe, { threads: 1 })));
  const base = await klDivergence(bq, bf, windows);
  bq.selectAdapter(adapter);
  const lora = await klDivergence(bq, bfl, windows);
  await Promise.all([bq, bf, bfl].map((b) => b.dispose()));

  const all = windows.map((_, i) => i);
  const gap = ratio(lora, all) - ratio(base, all);
  const rnd = mulberry32(0); // seeded, so the interval is the same on every run
  const gaps: number[] = [];
  for (let r = 0; r < 10_000; r++) {
    const idx = all.map(() => Math.floor(rnd() * all.length));
    gaps.push(ratio(lora, idx) - ratio(base, idx));
  }
  gaps.sort((a, b) => a - b);
  const within = gaps.filter((g) => g <= BOUND).length / gaps.length;

  console.log(`${path.basename(hef)}, adapter ${adapter}; ${path.basename(text)}, ${windows.length} windows of 256`);
  console.log('model            ppl        fp32 ref   ratio    ln ratio ± se        mean KLD (nats)  top-1');
  for (const [name, k] of [['base', base], [`+ ${adapter}`, lora]] as const)
    console.log(
      `${name.padEnd(16)} ${k.ppl.toFixed(4).padStart(9)}  ${k.referencePpl.toFixed(4).padStart(9)}  ${k.pplRatio.toFixed(4)}   ` +
        `${k.lnPplRatio.toFixed(4)} ± ${k.lnPplRatioStderr.toFixed(4)}     ${k.meanKld.toFixed(4)} ± ${k.kldStderr.toFixed(4)}  ${(100 * k.top1Agreement).toFixed(2)}%`,
    );
  console.log(
    `gap ${gap.toFixed(4)} (bound ${BOUND}); paired bootstrap over windows: 95% interval ` +
      `[${gaps[250].toFixed(4)}, ${gaps[9750].toFixed(4)}], ${(100 * within).toFixed(1)}% of resamples within the bound`,
  );
}

main().catch((e) => {
  console.error(`lora-gap: ${(e as Error).message}`);
  process.exit(1);
});
