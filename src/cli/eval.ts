/** edgellm eval (see `edgellm eval --help`). */
import type { Command } from 'commander';
import * as path from 'node:path';
import { cliContext } from './progress.js';
import { loadArtifact, type LoadedArtifact, type LoadOptions } from './load-artifact.js';
import { SimulatorBackend } from '../runtime/simulator.js';
import { perplexity, loadEvalText, sha256File, modelSha256 } from '../eval/ppl.js';
import { klDivergence } from '../eval/kld.js';
import { hellaswag, loadHellaSwag, tokenizeTask } from '../eval/hellaswag.js';
import { checkGate, readBaseline, writeReport, parsePercent, DEFAULT_GATE, GateError, type EvalReport, type GateResult } from '../eval/gate.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { slidingWindows } from '../../calibration/windows.js';
import { defaultSharedDir } from '../../calibration/datasets.js';
import { UsageError } from '../core/errors.js';
import { VERSION, artifactTimestamp } from '../core/version.js';
import { int, float, textPath, outputPathCheck } from './common.js';

const TASKS = ['ppl', 'kld', 'hellaswag'] as const;
type Task = (typeof TASKS)[number];

function parseTasks(v: string): Task[] {
  const tasks = v.split(',').map((s) => s.trim());
  for (const t of tasks) if (!(TASKS as readonly string[]).includes(t)) throw new UsageError(`--task ${t}: expected ${TASKS.join(', ')} (or a comma-separated list)`);
  return [...new Set(tasks)] as Task[];
}

const pct = (x: number) => `${(100 * x).toFixed(2)}%`;

/** The human table printed on stdout. */
function table(r: EvalReport, gate?: { baseline: string; result: GateResult }): string {
  const rows: [string, string, string][] = [];
  if (r.ppl !== undefined)
    rows.push(['ppl', 'perplexity', `${r.ppl.toFixed(4)}  (mean NLL ${r.meanNll!.toFixed(5)} nats; ${r.windows} windows x ${r.seqLen} tokens of ${path.basename(r.text!)})`]);
  if (r.kld) {
    const k = r.kld;
    rows.push(['kld', 'mean KLD', `${k.meanKld.toFixed(5)} ± ${k.kldStderr.toFixed(5)} nats  (median ${k.medianKld.toFixed(5)}, p99 ${k.p99Kld.toFixed(4)}, max ${k.maxKld.toFixed(3)})`]);
    rows.push(['', 'top-1 agreement', pct(k.top1Agreement)]);
    rows.push(['', 'ppl ratio', `${k.pplRatio.toFixed(4)}  (${k.ppl.toFixed(4)} / reference ${k.referencePpl.toFixed(4)}, ${path.basename(k.reference)}; ${k.predictions} predictions)`]);
    rows.push(['', 'ln ppl ratio', `${k.lnPplRatio.toFixed(5)} ± ${k.lnPplRatioStderr.toFixed(5)}  (paired over ${k.windows} windows)`]);
  }
  if (r.hellaswag) {
    const h = r.hellaswag;
    rows.push(['hellaswag', 'acc', `${pct(h.acc)} ± ${pct(h.accStderr)}`]);
    rows.push(['', 'acc_norm', `${pct(h.accNorm)} ± ${pct(h.accNormStderr)}  (${h.tasks} tasks, ${h.seconds.toFixed(1)} s)`]);
  }
  const extra = ['adapter', 'lora', 'emulate'].filter((k) => r.settings[k] != null).map((k) => `, ${k} ${r.settings[k]}`).join('');
  const lines = [`model ${r.model} (${r.kind}${extra}, sha256 ${r.modelSha256.slice(0, 16)}…)`, ...rows.map(([a, b, c]) => `${a.padEnd(10)} ${b.padEnd(16)} ${c}`)];
  if (gate) {
    lines.push(`gate vs ${gate.baseline}: ${gate.result.violations.length ? `FAILED (${gate.result.violations.length})` : 'passed'}`);
    for (const c of gate.result.checks) lines.push(`  ${gate.result.violations.includes(c) ? 'FAIL' : 'ok  '} ${c}`);
    for (const s of gate.result.skipped) lines.push(`  skip ${s} (in only one of the two reports)`);
  }
  lines.push(`${r.seconds.toFixed(1)} s`);
  return lines.join('\n') + '\n';
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
    .option('--threads <n>', 'onnxruntime intra-op threads (default: all cores; 1 is faster for tiny models on a busy machine)', int('--threads'))
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
      if (tasks.includes('kld') && !o.reference) throw new UsageError('--task kld needs --reference <model-dir|har|hef>');
      if (o.emulate !== undefined && !['native', 'optimized', 'quantized'].includes(o.emulate))
        throw new UsageError(`--emulate ${o.emulate}: expected native, optimized or quantized`);

      const warn = (w: string) => {
        if (!program.opts().quiet) process.stderr.write(`warning: ${w}\n`);
      };
      const loadOpts: LoadOptions = { prefillLen: o.prefillLen, emulate: o.emulate, lora: o.lora, onWarning: warn };
      const art: LoadedArtifact = await loadArtifact(file, loadOpts);
      const tok = new TextTokenizer(art.exe.tokenizer);
      const backend = await SimulatorBackend.load(art.exe, { threads: o.threads });
      if (o.adapter !== undefined) backend.selectAdapter(o.adapter);
      const report: EvalReport = {
        edgellmVersion: VERSION,
        createdAt: artifactTimestamp(),
        model: file,
        kind: art.kind,
        modelSha256: modelSha256(file),
        settings: { tasks, seqLen: o.seqlen, maxWindows: o.maxWindows ?? null, maxDocs: o.maxDocs ?? null, prefillLen: backend.prefillLen, emulate: o.emulate ?? null, adapter: o.adapter ?? null, lora: o.lora ?? null, threads: o.threads ?? null, backend: backend.name },
        quantScheme: art.exe.quant,
        seconds: 0,
      };
      try {
        if (needText) {
          const text = textPath(o.text);
          // One BOS at the start of the whole text (the tokenizer's special tokens), none per window.
          const ids = await tok.encode(loadEvalText(text, { maxDocs: o.maxDocs }), true);
          const windows = slidingWindows(ids, o.seqlen, o.maxWindows);
          Object.assign(report, { text, textSha256: sha256File(text), seqLen: o.seqlen });
          if (tasks.includes('kld')) {
            const ref = await loadArtifact(o.reference, { prefillLen: o.prefillLen, lora: o.referenceLora, onWarning: warn });
            const refBackend = await SimulatorBackend.load(ref.exe, { threads: o.threads });
            if (o.referenceAdapter !== undefined) refBackend.selectAdapter(o.referenceAdapter);
            const t1 = performance.now();
            try {
              const k = await klDivergence(backend, refBackend, windows, ctx.progress('kld', windows.length));
              report.kld = {
                reference: o.reference,
                referenceKind: ref.kind,
                referenceSha256: modelSha256(o.reference),
                referenceAdapter: o.referenceAdapter ?? null,
                referenceLora: o.referenceLora ?? null,
                ...k,
                seconds: (performance.now() - t1) / 1000,
              };
            } finally {
              await refBackend.dispose();
            }
          }
          if (tasks.includes('ppl')) {
            const t1 = performance.now();
            // the KLD pass already scored these windows with this model: same forward, same NLLs
            const r = report.kld
              ? { ppl: report.kld.ppl, meanNll: Math.log(report.kld.ppl), predictions: report.kld.predictions, windows: report.kld.windows }
              : await perplexity(backend, windows, ctx.progress('ppl', windows.length));
            const seconds = report.kld ? report.kld.seconds : (performance.now() - t1) / 1000;
            Object.assign(report, r, { tokensPerSecond: (windows.length * o.seqlen) / seconds });
          }
        }
        if (tasks.includes('hellaswag')) {
          const hsFile: string = o.hellaswag ?? path.join(defaultSharedDir(), 'data/hellaswag/hellaswag_val_full.txt');
          const t1 = performance.now();
          const hsTasks = loadHellaSwag(hsFile, o.limit);
          const tokenized = [];
          for (const t of hsTasks) tokenized.push(await tokenizeTask(t, (s) => tok.encode(s, true)));
          const h = await hellaswag(backend, tokenized, ctx.progress('hellaswag', tokenized.length));
          report.hellaswag = { file: hsFile, sha256: sha256File(hsFile), ...h, seconds: (performance.now() - t1) / 1000 };
        }
      } finally {
        await backend.dispose();
      }
      delete (report as Partial<EvalReport>).seconds; // re-added last, to sit at the end of the JSON
      report.seconds = (performance.now() - t0) / 1000;

      if (o.writeBaseline) writeReport(o.writeBaseline, report);
      if (typeof o.json === 'string') writeReport(o.json, report);
      const gate = baseline ? { baseline: o.baseline as string, result: checkGate(report, baseline, thresholds) } : undefined;
      if (o.json === true) process.stdout.write(JSON.stringify(gate ? { ...report, gate: { baseline: gate.baseline, thresholds, ...gate.result } } : report, null, 2) + '\n');
      else process.stdout.write(table(report, gate));
      if (gate && gate.result.violations.length) {
        for (const v of gate.result.violations) process.stderr.write(`gate: ${v}\n`);
        throw new GateError(`accuracy gate failed: ${gate.result.violations.length} threshold(s) violated against ${gate.baseline}`);
      }
    });
}
