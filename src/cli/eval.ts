/** edgellm eval (see `edgellm eval --help`). */
import type { Command } from 'commander';
import * as path from 'node:path';
import { cliContext } from './progress.js';
import { loadArtifact, type LoadedArtifact, type LoadOptions } from './load-artifact.js';
import { SimulatorBackend } from '../runtime/simulator.js';
import { loadEvalText } from '../eval/ppl.js';
import { sha256File, artifactSha256 } from '../core/digest.js';
import { loadHellaSwag, tokenizeTask } from '../eval/hellaswag.js';
import { evaluate, formatEvalTable, EVAL_TASKS, type EvalTask, type EvalRequest } from '../eval/evaluate.js';
import { checkGate, readBaseline, writeReport, parsePercent, DEFAULT_GATE, GateError, type EvalReport } from '../eval/gate.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { slidingWindows } from '../../calibration/windows.js';
import { defaultSharedDir } from '../../calibration/datasets.js';
import { UsageError } from '../core/errors.js';
import { VERSION, reportTimestamp } from '../core/version.js';
import { int, float, precision, PRECISION_HELP, textPath, outputPathCheck } from './common.js';

const TASKS = EVAL_TASKS;
type Task = EvalTask;

function parseTasks(v: string): Task[] {
  const tasks = v.split(',').map((s) => s.trim());
  for (const t of tasks) if (!(TASKS as readonly string[]).includes(t)) throw new UsageError(`--task ${t}: expected ${TASKS.join(', ')} (or a comma-separated list)`);
  return [...new Set(tasks)] as Task[];
}

/** `edgellm eval`: perplexity, KL-divergence from a reference, HellaSwag; optional baseline gate. */
export function registerEval(program: Command): void {
  program
    .command('eval')
    .description(
      'evaluate a model: perplexity (GPTQ-paper windows: tokenize once, non-overlapping windows, tail dropped), ' +
        'KL-divergence from a reference model over the same windows, HellaSwag acc/acc_norm; compare with a baseline (CI gate)',
    )
    .argument('<model>', 'model.hef, model.har or a HuggingFace model directory')
    .option('--task <tasks>', 'ppl, kld, hellaswag, or a comma-separated list (ppl,kld,hellaswag)', parseTasks, ['ppl'] as Task[])
    .option('--text <file|name>', 'ppl/kld text: .txt, .jsonl (text field; documents joined with "\\n\\n") or wikitext2, c4, tinystories')
    .option('--max-docs <n>', 'JSONL: keep only the first n documents (e.g. 200 for C4 documents 0-199)', int('--max-docs'))
    .option('--seqlen <n>', 'window length in tokens', int('--seqlen'), 256)
    .option('--max-windows <n>', 'evaluate only the first n windows', int('--max-windows'))
    .option('--reference <model>', 'kld: the reference model (model directory, HAR or HEF), e.g. the fp32 checkpoint')
    .option('--hellaswag <file>', "hellaswag: llama.cpp's 6-line file (default: <shared>/data/hellaswag/hellaswag_val_full.txt)")
    .option('--limit <n>', 'hellaswag: only the first n tasks', int('--limit'))
    .option('--adapter <name>', 'evaluate with this LoRA adapter of the HEF/HAR (see `edgellm inspect`)')
    .option('--reference-adapter <name>', 'kld: run the reference with this LoRA adapter')
    .option('--lora <adapter-dir>', 'for a model directory: merge this PEFT LoRA adapter into the fp32 weights (W + s·B·A) first')
    .option('--reference-lora <adapter-dir>', 'kld: the same for a reference model directory (fp32 + adapter, the reference of a HEF + adapter)')
    .option('--emulate <level>', 'for a HAR: native (source fp32), optimized (fp32 after folding/rotation) or quantized (default)')
    .option('--prefill-len <n>', 'prefill chunk length when compiling a directory or HAR in memory', int('--prefill-len'), 128)
    .option('--threads <n>', 'onnxruntime intra-op threads (default: one per CPU this process may use; 1 is faster for tiny models on a busy machine)', int('--threads'))
    .option('--precision <mode>', `${PRECISION_HELP}; with fast, kld's default reference is the same model at exact`, precision('--precision'), 'exact')
    .option('--reference-precision <mode>', 'kld: the reference\'s precision (default exact)', precision('--reference-precision'), 'exact')
    .option('--json [file]', 'write every figure as JSON to file (table still on stdout), or print JSON on stdout with no file')
    .option('--baseline <file>', 'compare with a stored report (a --json or --write-baseline file); exit 1 listing each violated threshold')
    .option('--max-ppl-increase <pct>', `gate: allowed perplexity increase over the baseline (default ${100 * DEFAULT_GATE.maxPplIncrease}%)`)
    .option('--max-kld <nats>', `gate: allowed increase of the mean KLD over the baseline's, nats (default ${DEFAULT_GATE.maxKld})`, float('--max-kld'))
    .option('--max-hellaswag-drop <points>', `gate: allowed drop of HellaSwag acc_norm, percentage points (default ${DEFAULT_GATE.maxHellaswagDrop})`, float('--max-hellaswag-drop'))
    .option('--min-hellaswag-drop <points>', 'same as --max-hellaswag-drop', float('--min-hellaswag-drop'))
    .option('--write-baseline <file>', 'record this run as a baseline (the same JSON as --json)')
    .action(async (file: string, o) => {
      const ctx = cliContext(program.opts());
      const tasks: Task[] = o.task;
      const t0 = performance.now();
      for (const out of [o.writeBaseline, typeof o.json === 'string' ? o.json : undefined]) if (out) outputPathCheck(out);
      const thresholds = {
        maxPplIncrease: o.maxPplIncrease !== undefined ? parsePercent('--max-ppl-increase', o.maxPplIncrease) : DEFAULT_GATE.maxPplIncrease,
        maxKld: o.maxKld ?? DEFAULT_GATE.maxKld,
        maxHellaswagDrop: o.maxHellaswagDrop ?? o.minHellaswagDrop ?? DEFAULT_GATE.maxHellaswagDrop,
      };
      const baseline = o.baseline ? readBaseline(o.baseline) : undefined;
      const needText = tasks.includes('ppl') || tasks.includes('kld');
      if (needText && !o.text) throw new UsageError(`--task ${tasks.join(',')} needs --text FILE|wikitext2|c4|tinystories`);
      if (tasks.includes('kld') && !o.reference && o.precision === 'fast') o.reference = file; // fast vs exact
      if (tasks.includes('kld') && !o.reference) throw new UsageError('--task kld needs --reference <model-dir|har|hef>');
      if (o.emulate !== undefined && !['native', 'optimized', 'quantized'].includes(o.emulate))
        throw new UsageError(`--emulate ${o.emulate}: expected native, optimized or quantized`);

      const warn = (w: string) => {
        if (!program.opts().quiet) process.stderr.write(`warning: ${w}\n`);
      };
      const loadOpts: LoadOptions = { prefillLen: o.prefillLen, emulate: o.emulate, lora: o.lora, onWarning: warn };
      const art: LoadedArtifact = await loadArtifact(file, loadOpts);
      const tok = new TextTokenizer(art.exe.tokenizer);
      const backend = await SimulatorBackend.load(art.exe, { threads: o.threads, precision: o.precision });
      if (o.adapter !== undefined) backend.selectAdapter(o.adapter);
      const identity: EvalRequest['identity'] = {
        edgellmVersion: VERSION,
        createdAt: reportTimestamp(),
        model: file,
        kind: art.kind,
        modelSha256: artifactSha256(file),
        settings: { tasks, seqLen: o.seqlen, maxWindows: o.maxWindows ?? null, maxDocs: o.maxDocs ?? null, prefillLen: backend.prefillLen, emulate: o.emulate ?? null, adapter: o.adapter ?? null, lora: o.lora ?? null, threads: o.threads ?? null, backend: backend.name },
        quantScheme: art.exe.quant,
      };
      const req: EvalRequest = { tasks, identity };
      let refBackend: SimulatorBackend | undefined;
      let report: EvalReport;
      try {
        if (needText) {
          const text = textPath(o.text);
          // One BOS at the start of the whole text (the tokenizer's special tokens), none per window.
          const ids = await tok.encode(loadEvalText(text, { maxDocs: o.maxDocs }), true);
          req.text = { file: text, sha256: sha256File(text), seqLen: o.seqlen, windows: slidingWindows(ids, o.seqlen, o.maxWindows) };
          if (tasks.includes('kld')) {
            const ref = await loadArtifact(o.reference, { prefillLen: o.prefillLen, lora: o.referenceLora, onWarning: warn });
            refBackend = await SimulatorBackend.load(ref.exe, { threads: o.threads, precision: o.referencePrecision });
            if (o.referenceAdapter !== undefined) refBackend.selectAdapter(o.referenceAdapter);
            req.reference = { backend: refBackend, file: o.reference, kind: ref.kind, sha256: artifactSha256(o.reference), adapter: o.referenceAdapter ?? null, lora: o.referenceLora ?? null };
          }
        }
        if (tasks.includes('hellaswag')) {
          const hsFile: string = o.hellaswag ?? path.join(defaultSharedDir(), 'data/hellaswag/hellaswag_val_full.txt');
          const tokenized = [];
          for (const t of loadHellaSwag(hsFile, o.limit)) tokenized.push(await tokenizeTask(t, (s) => tok.encode(s, true)));
          req.hellaswag = { file: hsFile, sha256: sha256File(hsFile), tasks: tokenized };
        }
        report = await evaluate(backend, req, ctx);
      } finally {
        await refBackend?.dispose();
        await backend.dispose();
      }
      delete (report as Partial<EvalReport>).seconds; // the whole command's wall time, loading included, last in the JSON
      report.seconds = (performance.now() - t0) / 1000;

      if (o.writeBaseline) writeReport(o.writeBaseline, report);
      if (typeof o.json === 'string') writeReport(o.json, report);
      const gate = baseline ? { baseline: o.baseline as string, result: checkGate(report, baseline, thresholds) } : undefined;
      if (o.json === true) process.stdout.write(JSON.stringify(gate ? { ...report, gate: { baseline: gate.baseline, thresholds, ...gate.result } } : report, null, 2) + '\n');
      else process.stdout.write(formatEvalTable(report, gate));
      if (gate && gate.result.violations.length) {
        for (const v of gate.result.violations) process.stderr.write(`gate: ${v}\n`);
        throw new GateError(`accuracy gate failed: ${gate.result.violations.length} threshold(s) violated against ${gate.baseline}`);
      }
    });
}
