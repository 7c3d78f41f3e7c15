#!/usr/bin/env node
/**
 * edgellm command line: the only module that reads argv. Every command maps its flags to typed
 * options and calls library code; errors become one line `error: ...` and a meaningful exit code
 * (see src/errors.ts), with the stack trace only under --verbose.
 */
import { Command, CommanderError } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { EdgeLLMError, UsageError } from './errors.js';
import { VERSION } from './version.js';
import { cliContext } from './cli-context.js';
import { loadHfModel } from '../formats/hf.js';
import { sourceWeightsSha256, saveModelHar, loadModelHar } from '../formats/har-model.js';
import { quantizeModel, DEFAULT_QUANTIZE_OPTIONS } from './pipeline.js';
import { compile } from './compiler/compile.js';
import { writeExecutable } from './compiler/hef-io.js';
import { loadArtifact } from './runtime/load.js';
import { SimulatorBackend } from './runtime/simulator.js';
import { generate } from './runtime/generate.js';
import { perplexity } from './runtime/eval.js';
import { TextTokenizer, StreamDecoder } from '../formats/tokenizer.js';
import { loadTextFile, loadTokenWindows, isTokenWindowFile, namedDataset, type DatasetName } from '../calibration/datasets.js';
import { sampleWindows, slidingWindows } from '../calibration/sampler.js';
import { inspectArtifact, formatInspect } from './inspect.js';
import { SafetensorsCheckpoint } from '../formats/safetensors.js';

const int = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new UsageError(`${name} ${v}: expected an integer`);
  return n;
};
const float = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new UsageError(`${name} ${v}: expected a number`);
  return n;
};

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

/** Resolves `--text` (a file or a dataset name) to a path. */
function textPath(spec: string): string {
  if (['wikitext2', 'c4', 'tinystories'].includes(spec) && !fs.existsSync(spec)) return namedDataset(spec as DatasetName);
  return spec;
}

function outputPathCheck(out: string): void {
  const dir = path.dirname(path.resolve(out));
  if (!fs.existsSync(dir)) throw new UsageError(`${out}: directory ${dir} does not exist`);
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('edgellm')
    .description('Quantize a HuggingFace LLM (W4 group-wise, static A8, KV8), compile it to a HEF executable and run it on the simulator backend.')
    .version(VERSION)
    .option('-v, --verbose', 'log pass details and show stack traces on errors')
    .option('-q, --quiet', 'no progress bars or logs')
    .showHelpAfterError();

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

  program
    .command('compile')
    .description('HAR -> HEF: prefill and decode graphs over one copy of the weights, tokenizer, KV-cache layout')
    .argument('<model.har>', 'HAR written by `edgellm quantize`')
    .requiredOption('-o, --output <file.hef>', 'output HEF')
    .option('--prefill-len <n>', 'static prompt chunk length of the prefill graph (tokens)', int('--prefill-len'), 128)
    .option('--max-context <n>', 'KV-cache capacity in tokens (default: max_position_embeddings)', int('--max-context'))
    .action(async (har: string, o) => {
      outputPathCheck(o.output);
      const { model, info } = await loadModelHar(har);
      const exe = compile(model, { prefillLen: o.prefillLen, maxContext: o.maxContext, modelName: info.modelName, sourceSha256: info.sourceSha256 });
      writeExecutable(o.output, exe);
      if (!program.opts().quiet) process.stderr.write(`wrote ${o.output} (${(fs.statSync(o.output).size / 1024).toFixed(1)} KiB)\n`);
    });

  program
    .command('inspect')
    .description('print format version, sections with sizes, quantization scheme and device-memory estimate of a HAR or HEF')
    .argument('<file>', 'model.har or model.hef')
    .option('--json', 'machine-readable output')
    .action(async (file: string, o) => {
      const info = await inspectArtifact(file);
      process.stdout.write(o.json ? JSON.stringify(info, null, 2) + '\n' : formatInspect(info));
    });

  program
    .command('run')
    .description('generate text on the simulator backend (a model directory runs the fp32 reference)')
    .argument('<model>', 'model.hef, model.har or a HuggingFace model directory')
    .option('-p, --prompt <text>', 'prompt text ("" = start from BOS)', '')
    .option('-n, --max-tokens <n>', 'tokens to generate', int('--max-tokens'), 128)
    .option('-t, --temperature <t>', 'sampling temperature (0 = greedy)', float('--temperature'), 0.8)
    .option('--top-p <p>', 'nucleus sampling mass', float('--top-p'), 0.95)
    .option('--top-k <k>', 'keep the k most likely tokens (0 = all)', int('--top-k'), 40)
    .option('--seed <n>', 'sampling seed', int('--seed'), 0)
    .option('--prefill-len <n>', 'prefill chunk length when compiling a directory or HAR in memory', int('--prefill-len'), 128)
    .option('--json', 'print a JSON result on stdout instead of streaming text')
    .action(async (file: string, o) => {
      const { exe } = await loadArtifact(file, { prefillLen: o.prefillLen });
      const backend = await SimulatorBackend.load(exe);
      const tok = new TextTokenizer(exe.tokenizer);
      const prompt = await tok.encode(o.prompt, true);
      if (prompt.length === 0) throw new UsageError('the prompt encodes to no tokens and the tokenizer adds no BOS');
      const stream = await StreamDecoder.create(tok, prompt);
      if (!o.json) process.stdout.write(await tok.decode(prompt));
      const res = await generate(
        backend,
        prompt,
        { maxTokens: o.maxTokens, temperature: o.temperature, topP: o.topP, topK: o.topK, seed: o.seed, stopTokens: exe.config.eosTokenIds },
        o.json ? undefined : async (id) => void process.stdout.write(await stream.push(id)),
      );
      await backend.dispose();
      const stats = {
        promptTokens: res.promptTokens,
        generatedTokens: res.tokens.length,
        ttftMs: res.ttftMs,
        decodeTokensPerSecond: res.decodeTokensPerSecond,
        stopReason: res.stopReason,
      };
      if (o.json) process.stdout.write(JSON.stringify({ text: await tok.decode(res.tokens), tokens: res.tokens, ...stats }, null, 2) + '\n');
      else {
        process.stdout.write('\n');
        process.stderr.write(
          `TTFT ${res.ttftMs.toFixed(1)} ms (${res.promptTokens} prompt tokens) | decode ${res.decodeTokensPerSecond.toFixed(1)} tokens/s (${res.tokens.length} tokens, ${res.stopReason})\n`,
        );
      }
    });

  program
    .command('eval')
    .description('perplexity on a text (GPTQ-paper windows: tokenize once, non-overlapping windows, tail dropped)')
    .argument('<model>', 'model.hef, model.har or a HuggingFace model directory')
    .requiredOption('--text <file|name>', 'text file (.txt or .jsonl) or a dataset name: wikitext2, c4, tinystories')
    .option('--seqlen <n>', 'window length in tokens', int('--seqlen'), 256)
    .option('--max-windows <n>', 'evaluate only the first n windows', int('--max-windows'))
    .option('--prefill-len <n>', 'prefill chunk length when compiling a directory or HAR in memory', int('--prefill-len'), 128)
    .option('--json', 'print the result as JSON')
    .action(async (file: string, o) => {
      const ctx = cliContext(program.opts());
      const { exe, kind } = await loadArtifact(file, { prefillLen: o.prefillLen });
      const tok = new TextTokenizer(exe.tokenizer);
      const text = textPath(o.text);
      // One BOS at the start of the whole text (the tokenizer's special tokens), none per window.
      const ids = await tok.encode(loadTextFile(text), true);
      const windows = slidingWindows(ids, o.seqlen, o.maxWindows);
      const backend = await SimulatorBackend.load(exe);
      const t0 = performance.now();
      const r = await perplexity(backend, windows, ctx.progress('eval', windows.length));
      const seconds = (performance.now() - t0) / 1000;
      await backend.dispose();
      const result = { model: file, kind, text, seqLen: o.seqlen, ...r, seconds, tokensPerSecond: (windows.length * o.seqlen) / seconds };
      if (o.json) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
      else
        process.stdout.write(
          `perplexity ${r.ppl.toFixed(4)} (mean NLL ${r.meanNll.toFixed(5)} nats) over ${r.windows} windows x ${o.seqlen} tokens of ${path.basename(text)} | ${result.tokensPerSecond.toFixed(0)} tokens/s\n`,
        );
    });

  return program;
}

/** Runs the CLI; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  program.exitOverride();
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2; // commander already printed the message
    const verbose = argv.includes('--verbose') || argv.includes('-v');
    const msg = e instanceof Error ? e.message.split('\n')[0] : String(e);
    process.stderr.write(`error: ${msg}\n`);
    if (verbose && e instanceof Error && e.stack) process.stderr.write(e.stack + '\n');
    return e instanceof EdgeLLMError ? e.exitCode : 1;
  }
}

const isMain = process.argv[1] && fs.realpathSync(process.argv[1]) === fs.realpathSync(new URL(import.meta.url).pathname);
if (isMain) main(process.argv).then((code) => process.exit(code));
