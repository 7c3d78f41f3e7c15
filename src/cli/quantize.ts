/** edgellm quantize (see `edgellm quantize --help`). */
import type { Command } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UsageError } from '../core/errors.js';
import { cliContext } from './progress.js';
import { loadHfModel } from '../../formats/hf.js';
import { saveModelHar } from '../../formats/har-model.js';
import { modelSha256 } from '../core/digest.js';
import { SafetensorsCheckpoint } from '../../formats/safetensors-checkpoint.js';
import { loadPeftAdapter } from '../../formats/peft.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { quantizeModel, withPrecision, DEFAULT_QUANTIZE_OPTIONS, type QuantizeOptions } from '../../passes/pipeline.js';
import { OBSERVER_KINDS } from '../../calibration/observers.js';
import { readRecipe } from '../../formats/recipe.js';
import { resolveRecipe, refuseUnsupported } from '../ir/recipe.js';
import { nominalBitsPerWeight, precisionOf } from '../ir/quant-scheme.js';
import type { ModelConfig } from '../ir/model.js';
import { int, float, outputPathCheck, defaultCalibration, calibrationWindows } from './common.js';
import { addSensitivityFlags, analyzeModel, checkBudget, chooseForBudget, checkSensitivityFlags, writeChosenRecipe } from './analyze.js';

/** Maps and validates the command's flags. @throws UsageError */
function quantizeOptions(o: Record<string, any>): QuantizeOptions {
  if (!['gptq', 'rtn'].includes(o.method)) throw new UsageError(`--method ${o.method}: expected gptq or rtn`);
  lmHeadBits(o.lmHeadBits);
  if (!OBSERVER_KINDS.includes(o.actObserver)) throw new UsageError(`--act-observer ${o.actObserver}: expected ${OBSERVER_KINDS.join(', ')}`);
  const online = String(o.onlineHadamard ?? '')
    .split(',')
    .map((x) => x.trim().toLowerCase())
    .filter(Boolean);
  for (const r of online) if (r !== 'r3' && r !== 'r4') throw new UsageError(`--online-hadamard ${o.onlineHadamard}: expected r3, r4 or r3,r4`);
  if (o.rotationSeeds < 1) throw new UsageError(`--rotation-seeds ${o.rotationSeeds}: must be >= 1`);
  return {
    ...DEFAULT_QUANTIZE_OPTIONS,
    method: o.method,
    groupSize: o.groupSize,
    percDamp: o.damp,
    actOrder: !!o.actOrder,
    quantizeLmHead: lmHeadBits(o.lmHeadBits) === 4,
    lmHeadGroupSize: o.lmHeadGroupSize,
    observer: o.actObserver,
    activationQuant: o.actQuant,
    kvQuant: o.kvQuant,
    kCentering: o.kCentering,
    rotate: !!o.rotate || o.rotationSeeds > 1 || online.length > 0,
    rotationSeed: o.rotationSeed,
    rotationSeeds: o.rotationSeeds,
    onlineHadamard: { r3: online.includes('r3'), r4: online.includes('r4') },
  };
}

/** The precision flags a recipe replaces: option key, flag, and what the recipe sets instead. */
const PRECISION_FLAGS: [key: string, flag: string, recipeKey: string][] = [
  ['method', '--method', 'weight_method'],
  ['groupSize', '--group-size', 'group_size'],
  ['lmHeadBits', '--lm-head-bits', "lm_head's weight_bits"],
  ['lmHeadGroupSize', '--lm-head-group-size', "lm_head's group_size"],
  ['actObserver', '--act-observer', 'observer'],
  ['actQuant', '--no-act-quant', 'act_bits: 32'],
  ['kvQuant', '--no-kv-quant', 'kv_bits: 32'],
];

/**
 * Refuses the precision flags where a recipe sets the precision (`--recipe`, `--auto-precision`).
 * @throws UsageError naming the flag and the recipe key that replaces it
 */
function refusePrecisionFlags(cmd: Command, what: string, why: string): void {
  for (const [key, flag, recipeKey] of PRECISION_FLAGS)
    if (cmd.getOptionValueSource(key) === 'cli') throw new UsageError(`${flag} conflicts with ${what}: ${why} (${recipeKey} in its defaults or an override); drop the flag or edit the recipe`);
}

/**
 * The options with `--recipe`: the recipe resolved against the model (src/ir/recipe.ts) and checked
 * for what the lowering executes today, its table made the precision of `base`.
 * @throws UsageError when a precision flag was given too (the recipe sets the precision: naming both),
 *   RecipeError (a UsageError naming the file and the key) for a bad recipe
 */
function recipeOptions(file: string, base: QuantizeOptions, cfg: ModelConfig, cmd: Command): QuantizeOptions {
  refusePrecisionFlags(cmd, `--recipe ${file}`, 'the recipe sets the precision');
  // fold-norms unties a tied head, so with --rotate the embedding does not read lm_head's table
  const resolved = resolveRecipe(readRecipe(file), cfg, { sharedEmbedding: cfg.tieWordEmbeddings && !base.rotate });
  refuseUnsupported(resolved);
  return withPrecision(base, resolved.table, cfg);
}

/** `edgellm quantize`: HF model directory -> HAR. */
export function registerQuantize(program: Command): void {
  const cmd = program
    .command('quantize')
    .description('HF model directory -> HAR: W4 group-wise weights (GPTQ or RTN, optionally on a QuaRot-rotated model; or per module from --recipe), static A8 activation and KV8 ranges')
    .argument('<model-dir>', 'HuggingFace checkpoint directory (config.json, *.safetensors, tokenizer.json)')
    .requiredOption('-o, --output <file.har>', 'output HAR archive')
    .option('--calib <file>', 'calibration data: .txt, .jsonl (text field) or pre-tokenized .tokens.json (default: ../shared c4 calibration windows)')
    .option('--calib-samples <n>', 'calibration windows', int('--calib-samples'), 128)
    .option('--seqlen <n>', 'tokens per calibration window', int('--seqlen'), 256)
    .option('--seed <n>', 'seed of the calibration window sampler', int('--seed'), 0)
    .option('--method <m>', 'weight quantizer: gptq | rtn', DEFAULT_QUANTIZE_OPTIONS.method)
    .option('--group-size <n>', 'weight group size (power of two >= 16)', int('--group-size'), DEFAULT_QUANTIZE_OPTIONS.groupSize)
    .option('--damp <f>', 'GPTQ damping, fraction of mean(diag H)', float('--damp'), DEFAULT_QUANTIZE_OPTIONS.percDamp)
    .option('--act-order', 'GPTQ act-order (static groups, so groups stay block-wise)')
    .option('--lm-head-group-size <n>', 'input columns per lm_head scale (a power of two ≥ 16)', int('--lm-head-group-size'), DEFAULT_QUANTIZE_OPTIONS.lmHeadGroupSize)
    .option('--lm-head-bits <bits>', 'lm_head precision: 4 (W4 group-wise, GPTQ/RTN like the other linears; a tied embedding shares its 4-bit table) or 32 (float)', '4')
    .option('--act-observer <kind>', 'A8/KV8 range observer: minmax | percentile | mse', DEFAULT_QUANTIZE_OPTIONS.observer)
    .option('--no-act-quant', 'skip static A8 activation quantization')
    .option('--no-kv-quant', 'skip KV8 cache quantization')
    .option('--no-k-centering', 'KV8 without K-cache centering (default: subtract a calibrated per-channel offset from K before the cache; exact for attention, narrower K range)')
    .option('--rotate', 'fold norms and apply QuaRot rotations (R1 residual, R2 per head) before quantizing')
    .option('--rotation-seed <n>', 'QuaRot seed (with --rotation-seeds: the first one tried)', int('--rotation-seed'), 0)
    .option('--rotation-seeds <n>', 'try N rotation seeds, keep the lowest calibration loss (implies --rotate)', int('--rotation-seeds'), 1)
    .option('--online-hadamard <list>', 'online rotations as graph ops: r3, r4 or r3,r4 (implies --rotate)', '')
    .option('--recipe <file>', 'per-module precision from a YAML/JSON recipe: defaults + overrides by module glob (weight_bits 4|8|32, group_size, weight_method, act_bits, kv_bits, observer; docs/quantization.md "Recipes"); replaces --method, --group-size, --lm-head-bits, --lm-head-group-size, --act-observer, --no-act-quant, --no-kv-quant')
    .option('--merge-lora <adapter-dir>', 'fold a PEFT LoRA adapter into the fp32 weights (W + s·B·A) before quantizing: one task, best accuracy')
    .option('--no-emulation-weights', 'do not keep the native/optimized fp32 weights in the HAR (smaller; no --emulate native|optimized)')
    .option('--auto-precision', 'choose promotions (W4 g32 → g16, W4 → W8, A8 → A16) by measured KLD gain per byte of device memory under --budget (quantize, analyze as `edgellm analyze` does, choose), write the recipe beside the HAR (<output>.recipe.yaml) and quantize with it: the HAR equals `quantize --recipe` of that file')
    .option('--budget <size>', 'with --auto-precision: device memory the promotions may add, +N% (of the default recipe\'s), +SIZE, or SIZE in all (e.g. +10%, +64KiB, 1.1GiB)')
    .option('--write-recipe <file>', 'with --auto-precision: where to write the chosen recipe (default: <output without .har>.recipe.yaml)')
    .option('--json', 'print a JSON summary on stdout');
  addSensitivityFlags(cmd).action(async (dir: string, o, cmd: Command) => {
      const g = program.opts();
      const ctx = cliContext(g);
      outputPathCheck(o.output);
      const t0 = performance.now();
      const model = loadHfModel(dir);
      const opts = o.recipe ? recipeOptions(o.recipe, quantizeOptions(o), model.config, cmd) : quantizeOptions(o); // before any heavy work
      if (o.autoPrecision && !o.budget) throw new UsageError('--auto-precision needs --budget (e.g. --budget +10%)');
      if (!o.autoPrecision && (o.budget || o.writeRecipe)) throw new UsageError(`${o.budget ? '--budget' : '--write-recipe'} needs --auto-precision (or use edgellm analyze --budget)`);
      if (o.autoPrecision) {
        checkBudget(o.budget); // a malformed budget or promotion list fails now, not after quantizing
        checkSensitivityFlags(o);
        if (!o.recipe) refusePrecisionFlags(cmd, '--auto-precision', 'the chosen recipe sets the precision; give a base recipe with --recipe instead');
      }
      const peft = o.mergeLora ? loadPeftAdapter(o.mergeLora, model.config, { baseName: path.basename(path.resolve(dir)) }) : undefined;
      if (peft && !g.quiet) for (const w of peft.warnings) process.stderr.write(`warning: ${w}\n`);
      const tok = new TextTokenizer(model.tokenizer);
      const calib = o.calib ?? defaultCalibration();
      if (!calib) throw new UsageError('no calibration data: pass --calib <file.txt|file.jsonl|file.tokens.json>');
      const windows = await calibrationWindows(calib, tok, { n: o.calibSamples, seqLen: o.seqlen, seed: o.seed, vocabSize: model.config.vocabSize });
      const ckpt = SafetensorsCheckpoint.open(dir);
      const files = [...new Set(ckpt.names().map((n) => ckpt.entry(n).file))];
      ckpt.close();
      let r = await quantizeModel(model, opts, windows, ctx, peft); // merge-lora first: GPTQ quantizes the merged weights
      let auto: Record<string, unknown> | undefined;
      if (o.autoPrecision) {
        // measure every promotion of the quantized model, choose under the budget, quantize again from the written recipe
        const report = await analyzeModel(r.quantized, r.optimized, windows, o, ctx);
        const choice = chooseForBudget(report, o.budget);
        const recipeFile = o.writeRecipe ?? path.join(path.dirname(o.output), `${path.basename(o.output, '.har')}.recipe.yaml`);
        writeChosenRecipe(recipeFile, choice, report, opts.precision?.recipe, o.budget);
        if (!g.quiet) process.stderr.write(`auto-precision: ${choice.chosen.length} promotions, +${choice.addedBytes} of +${choice.budgetBytes} bytes; wrote ${recipeFile}\n`);
        r = await quantizeModel(model, recipeOptions(recipeFile, quantizeOptions(o), model.config, cmd), windows, ctx, peft);
        auto = { recipe: recipeFile, budget: o.budget, addedBytes: choice.addedBytes, budgetBytes: choice.budgetBytes, estimatedGain: choice.estimatedGain, chosen: choice.chosen, sensitivity: report };
      }
      const q = r.quantized;
      await saveModelHar(
        o.output,
        q,
        { modelName: path.basename(path.resolve(dir)), sourceSha256: modelSha256(files) },
        o.emulationWeights ? { native: r.native, optimized: opts.rotate ? r.optimized : undefined } : {},
      );
      const summary = {
        output: o.output,
        bytes: fs.statSync(o.output).size,
        seconds: (performance.now() - t0) / 1000,
        calibration: { file: calib, windows: windows.length, seqLen: windows[0]?.length ?? 0 },
        passes: q.passes,
        bitsPerWeight: nominalBitsPerWeight(precisionOf(q), q.config), // codes + one float32 scale per group, over the decoder linears
        ...(o.recipe ? { recipe: o.recipe } : {}),
        seedSearch: r.seedSearch,
        ...(auto ? { autoPrecision: auto } : {}),
      };
      if (o.json) process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
      else if (!g.quiet) process.stderr.write(`wrote ${o.output} (${(summary.bytes / 1024).toFixed(1)} KiB) in ${summary.seconds.toFixed(1)} s\n`);
    });
}

/** @throws UsageError unless `v` is 4 or 32 */
function lmHeadBits(v: string): 4 | 32 {
  if (v !== '4' && v !== '32') throw new UsageError(`--lm-head-bits ${v}: expected 4 or 32`);
  return Number(v) as 4 | 32;
}
