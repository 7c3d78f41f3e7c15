/** edgellm quantize (see `edgellm quantize --help`). */
import type { Command } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UsageError } from '../errors.js';
import { cliContext } from '../cli-context.js';
import { loadHfModel } from '../../formats/hf.js';
import { sourceWeightsSha256, saveModelHar } from '../../formats/har-model.js';
import { SafetensorsCheckpoint } from '../../formats/safetensors.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { quantizeModel, DEFAULT_QUANTIZE_OPTIONS } from '../pipeline.js';
import { loadTextFile, loadTokenWindows, isTokenWindowFile, namedDataset } from '../../calibration/datasets.js';
import { sampleWindows } from '../../calibration/sampler.js';
import { int, outputPathCheck } from './common.js';

function defaultCalibration(): string | undefined {
  try {
    const p = path.join(path.dirname(namedDataset('c4')), '..', 'calibration', 'c4-calib-128x256-seed0.tokens.json');
    return fs.existsSync(p) ? p : undefined;
  } catch {
    return undefined;
  }
}

/** Calibration windows from a text/JSONL file (tokenized, sampled) or a pre-tokenized file. */
async function calibrationWindows(file: string, tok: TextTokenizer, n: number, seqLen: number, seed: number): Promise<number[][]> {
  if (isTokenWindowFile(file)) return loadTokenWindows(file).slice(0, n);
  const ids = await tok.encode(loadTextFile(file), false);
  return sampleWindows(ids, n, seqLen, seed);
}

/** `edgellm quantize`: HF model directory -> HAR. */
export function registerQuantize(program: Command): void {
  program
    .command('quantize')
    .description('HF model directory -> HAR: W4 RTN weights, static A8 activation and KV8 ranges calibrated by min/max')
    .argument('<model-dir>', 'HuggingFace checkpoint directory (config.json, *.safetensors, tokenizer.json)')
    .requiredOption('-o, --output <file.har>', 'output HAR archive')
    .option('--calib <file>', 'calibration data: .txt, .jsonl (text field) or pre-tokenized .tokens.json (default: ../shared c4 calibration windows)')
    .option('--calib-samples <n>', 'calibration windows', int('--calib-samples'), 128)
    .option('--seqlen <n>', 'tokens per calibration window', int('--seqlen'), 256)
    .option('--group-size <n>', 'weight group size (power of two >= 16)', int('--group-size'), DEFAULT_QUANTIZE_OPTIONS.groupSize)
    .option('--seed <n>', 'seed of the calibration window sampler', int('--seed'), 0)
    .option('--quantize-lm-head', 'quantize lm_head to W4 too (default: kept float)')
    .option('--no-act-quant', 'skip static A8 activation quantization')
    .option('--no-kv-quant', 'skip KV8 cache quantization')
    .option('--json', 'print a JSON summary on stdout')
    .action(async (dir: string, o) => {
      const g = program.opts();
      const ctx = cliContext(g);
      outputPathCheck(o.output);
      const t0 = performance.now();
      const model = loadHfModel(dir);
      const tok = new TextTokenizer(model.tokenizer);
      const calib = o.calib ?? defaultCalibration();
      if (!calib) throw new UsageError('no calibration data: pass --calib <file.txt|file.jsonl|file.tokens.json>');
      const windows = await calibrationWindows(calib, tok, o.calibSamples, o.seqlen, o.seed);
      const ckpt = SafetensorsCheckpoint.open(dir);
      const files = [...new Set(ckpt.names().map((n) => ckpt.entry(n).file))];
      ckpt.close();
      const q = await quantizeModel(
        model,
        { ...DEFAULT_QUANTIZE_OPTIONS, groupSize: o.groupSize, quantizeLmHead: !!o.quantizeLmHead, activationQuant: o.actQuant, kvQuant: o.kvQuant },
        windows,
        ctx,
      );
      await saveModelHar(o.output, q, { modelName: path.basename(path.resolve(dir)), sourceSha256: sourceWeightsSha256(files) });
      const summary = {
        output: o.output,
        bytes: fs.statSync(o.output).size,
        seconds: (performance.now() - t0) / 1000,
        calibration: { file: calib, windows: windows.length, seqLen: windows[0]?.length ?? 0 },
        passes: q.passes,
      };
      if (o.json) process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
      else process.stderr.write(`wrote ${o.output} (${(summary.bytes / 1024).toFixed(1)} KiB) in ${summary.seconds.toFixed(1)} s\n`);
    });
}
