/**
 * edgellm analyze (see `edgellm analyze --help`): the sensitivity of a HAR to each quantization
 * choice (passes/sensitivity.ts), written into the HAR's report (shown by `inspect --report` and
 * `--report-html`), and, with `--budget`, the promotions that fit it as a recipe for
 * `quantize --recipe`. The sensitivity flags and the budget's choice are shared with
 * `quantize --auto-precision` (src/cli/quantize.ts).
 */
import type { Command } from 'commander';
import * as path from 'node:path';
import { FormatError, UsageError } from '../core/errors.js';
import type { RunContext } from '../core/context.js';
import { writeFileAtomicSync } from '../core/atomic.js';
import { cliContext } from './progress.js';
import { formatSensitivity, sensitivityProblem } from './sensitivity-report.js';
import { loadModelHar, setHarReport } from '../../formats/har-model.js';
import { stringifyRecipe } from '../../formats/recipe.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { measureSensitivity } from '../../passes/sensitivity.js';
import { choosePromotions, parseBudget, promotionRecipe, type PromotionChoice, type SensitivityReport } from '../ir/sensitivity.js';
import type { Model } from '../ir/model.js';
import type { RecipeText } from '../ir/precision.js';
import { int, outputPathCheck, defaultCalibration, calibrationWindows } from './common.js';

/** The flags `analyze` and `quantize --auto-precision` share. */
export function addSensitivityFlags(cmd: Command): Command {
  return cmd
    .option('--analyze-windows <n>', 'calibration windows the KLD of every candidate is measured on (the first N)', int('--analyze-windows'), 16)
    .option('--promotions <list>', 'candidates to measure: g16 (W4 g32 → W4 g16), w8 (W4 → W8), a16 (A8 → A16), kv16 (a layer\'s KV8 cache → KV16), comma-separated', 'g16,w8,a16,kv16');
}

const KINDS = ['g16', 'w8', 'a16', 'kv16'];
type PromotionKinds = { g16: boolean; w8: boolean; a16: boolean; kv16: boolean };

/** The promotion kinds of `--promotions`. @throws UsageError for an unknown one */
export function promotionKinds(list: string): PromotionKinds {
  const kinds = String(list)
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);
  for (const k of kinds) if (!KINDS.includes(k)) throw new UsageError(`--promotions ${list}: unknown kind '${k}' (expected ${KINDS.join(', ')})`);
  if (!kinds.length) throw new UsageError(`--promotions: name at least one of ${KINDS.join(', ')}`);
  return { g16: kinds.includes('g16'), w8: kinds.includes('w8'), a16: kinds.includes('a16'), kv16: kinds.includes('kv16') };
}

/** Checks the flags of {@link addSensitivityFlags} (before any heavy work). @throws UsageError */
export function checkSensitivityFlags(o: { analyzeWindows: number; promotions: string }): PromotionKinds {
  if (o.analyzeWindows < 1) throw new UsageError(`--analyze-windows ${o.analyzeWindows}: must be >= 1`);
  return promotionKinds(o.promotions);
}

/** Runs the analysis of `q` against its fp32 model `ref` on calibration windows, as the flags say. */
export async function analyzeModel(
  q: Model,
  ref: Model,
  windows: number[][],
  o: { analyzeWindows: number; promotions: string; adapter?: string; threads?: number },
  ctx: RunContext,
): Promise<SensitivityReport> {
  const promotions = checkSensitivityFlags(o);
  return measureSensitivity(q, ref, { calibration: windows, measure: windows.slice(0, o.analyzeWindows), adapter: o.adapter ?? null, promotions, threads: o.threads }, ctx);
}

/** Checks a budget's syntax (before any heavy work). @throws UsageError */
export function checkBudget(budget: string): void {
  parseBudget(budget, 0);
}

/** The choice under `budget` (`+10%`, `+64KiB`, `1.1GiB`). @throws UsageError for a bad budget */
export function chooseForBudget(report: SensitivityReport, budget: string): PromotionChoice {
  return choosePromotions(report, parseBudget(budget, report.baselineBytes));
}

const kib = (b: number) => `${(b / 1024).toFixed(1)} KiB`;

/**
 * Writes the chosen recipe (atomically) with comments giving what each promotion measured, and returns
 * the recipe as written (for `quantize --recipe`).
 */
export function writeChosenRecipe(file: string, choice: PromotionChoice, report: SensitivityReport, base: RecipeText | undefined, budget: string): RecipeText {
  const text = promotionRecipe(choice.chosen, base);
  const header = [
    `edgellm quantize --auto-precision --budget ${budget}: ${choice.chosen.length} promotions, +${kib(choice.addedBytes)} of a +${kib(choice.budgetBytes)} budget`,
    `over ${kib(report.baselineBytes)} of device memory (weights + KV cache at ${report.maxContext} tokens); measured KLD from fp32`,
    `${report.baselineKld.toFixed(5)} nats/token on ${report.windows} calibration windows of ${report.seqLen}; gains are of each promotion alone.`,
    'Edit and re-run with: edgellm quantize MODEL --recipe THIS_FILE -o MODEL.har',
  ].join('\n');
  const notes = Object.fromEntries(choice.chosen.map((c) => [c.module, `${c.from} → ${c.to}: KLD −${c.gain.toFixed(5)}, +${c.bytes} bytes`]));
  writeFileAtomicSync(file, stringifyRecipe(text, { header, overrides: notes }));
  return text;
}

/** `edgellm analyze`: HAR -> sensitivity in its report (+ a recipe with --budget). */
export function registerAnalyze(program: Command): void {
  const cmd = program
    .command('analyze')
    .description(
      'Sensitivity of a HAR to each quantization choice: the KL-divergence from the fp32 model when one module alone is promoted (W4 g32 → g16, W4 → W8, A8 → A16), measured on calibration windows; written into the HAR report (inspect --report / --report-html); with --budget, the promotions that fit as a recipe',
    )
    .argument('<model.har>', 'a HAR written by quantize (with its fp32 emulation weights)')
    .option('-o, --output <file.har>', 'write the HAR with the analysis here (default: update <model.har> in place, atomically)')
    .option('--calib <file>', 'calibration data, as given to quantize (default: ../shared c4 calibration windows)')
    .option('--calib-samples <n>', 'calibration windows, as given to quantize', int('--calib-samples'), 128)
    .option('--seqlen <n>', 'tokens per calibration window, as given to quantize', int('--seqlen'), 256)
    .option('--seed <n>', 'seed of the calibration window sampler, as given to quantize', int('--seed'), 0)
    .option('--adapter <name>', 'analyze the model with this LoRA adapter selected, against the fp32 model with the same adapter')
    .option('--budget <size>', 'also choose the promotions that fit: +N% of device memory, +SIZE added, or SIZE in all (e.g. +10%, +64KiB, 1.1GiB)')
    .option('--write-recipe <file>', 'with --budget: write the chosen recipe here (default: <model>.recipe.yaml beside the HAR)')
    .option('--reuse', 'with --budget: choose from the analysis already in the HAR\'s report instead of measuring again (try several budgets quickly)')
    .option('--threads <n>', 'onnxruntime intra-op threads', int('--threads'))
    .option('--json', 'print the sensitivity report (and the choice) as JSON on stdout');
  addSensitivityFlags(cmd).action(async (file: string, o) => {
    const g = program.opts();
    const ctx = cliContext(g);
    const out = o.output ?? file;
    if (o.output) outputPathCheck(o.output);
    if (o.reuse && !o.budget) throw new UsageError('--reuse needs --budget (it chooses from a stored analysis)');
    if (o.budget) checkBudget(o.budget);
    checkSensitivityFlags(o);
    const har = await loadModelHar(file, { emulation: !o.reuse, lazy: !!o.reuse });
    const q = har.model;
    let report: SensitivityReport;
    if (o.reuse) {
      if (!q.report?.sensitivity) throw new UsageError(`${file}: its report holds no sensitivity analysis to reuse; run edgellm analyze ${file} first`);
      const problem = sensitivityProblem(q.report.sensitivity);
      if (problem) throw new FormatError(file, `member report.json: ${problem}`);
      report = q.report.sensitivity;
      if ((o.adapter ?? null) !== report.adapter) throw new UsageError(`--adapter ${o.adapter ?? '(none)'}: the stored analysis was measured with adapter ${report.adapter ?? '(none)'}`);
    } else {
      const ref = har.emulation.optimized ?? har.emulation.native;
      if (!ref) throw new UsageError(`${file}: holds no fp32 emulation weights (quantized with --no-emulation-weights): analyze needs the fp32 model to measure against`);
      const calib = o.calib ?? defaultCalibration();
      if (!calib) throw new UsageError('no calibration data: pass --calib <file.txt|file.jsonl|file.tokens.json>');
      const windows = await calibrationWindows(calib, new TextTokenizer(q.tokenizer), { n: o.calibSamples, seqLen: o.seqlen, seed: o.seed, vocabSize: q.config.vocabSize });
      report = await analyzeModel(q, ref, windows, o, ctx);
    }
    const choice = o.budget ? chooseForBudget(report, o.budget) : undefined;
    if (!o.reuse || out !== file) await setHarReport(file, out, { linears: q.report?.linears ?? {}, points: q.report?.points ?? {}, sensitivity: report });
    let recipeFile: string | undefined;
    if (choice) {
      const file = o.writeRecipe ?? path.join(path.dirname(out), `${path.basename(out, '.har')}.recipe.yaml`);
      writeChosenRecipe(file, choice, report, q.precision?.recipe, o.budget);
      recipeFile = file;
    }
    if (o.json) process.stdout.write(JSON.stringify({ output: out, sensitivity: report, ...(choice ? { choice, recipe: recipeFile } : {}) }, null, 2) + '\n');
    else if (!g.quiet) {
      process.stderr.write(formatSensitivity(report));
      if (!o.reuse || out !== file) process.stderr.write(`wrote the analysis into ${out}\n`);
      if (choice) process.stderr.write(`budget ${o.budget}: ${choice.chosen.length} promotions, +${kib(choice.addedBytes)} of +${kib(choice.budgetBytes)}; recipe ${recipeFile} (edgellm quantize MODEL --recipe ${recipeFile})\n`);
    }
  });
}
