/**
 * One evaluation run, as `edgellm eval` performs it, over already loaded backends: perplexity
 * (GPTQ paper, §4: the whole text tokenized once, non-overlapping windows, tail dropped,
 * ppl = exp(mean NLL)), KL-divergence from a reference backend over the same windows, and HellaSwag
 * (Zellers et al. 2019; llama.cpp's acc / acc_norm scoring); the result is the report the CI gate
 * compares (src/eval/gate.ts). Loading artifacts and reading argv stay in the CLI.
 */
import * as path from 'node:path';
import type { ExecutionBackend } from '../runtime/backend.js';
import type { RunContext } from '../core/context.js';
import { perplexity } from './ppl.js';
import { klDivergence } from './kld.js';
import { hellaswag, type TokenizedTask } from './hellaswag.js';
import type { EvalReport, GateResult } from './gate.js';

export const EVAL_TASKS = ['ppl', 'kld', 'hellaswag'] as const;
export type EvalTask = (typeof EVAL_TASKS)[number];

/** What to evaluate: the report's identity, and the inputs of each task asked for. */
export interface EvalRequest {
  tasks: readonly EvalTask[];
  /** the report's identity fields (version, time stamp, model path/kind/sha256, settings, scheme) */
  identity: Omit<EvalReport, 'seconds'>;
  /** ppl / kld: the text (path, sha256), window length (tokens) and its windows (token ids) */
  text?: { file: string; sha256: string; seqLen: number; windows: number[][] };
  /** kld: the reference backend and how it was made */
  reference?: { backend: ExecutionBackend; file: string; kind: string; sha256: string; adapter: string | null; lora: string | null };
  /** hellaswag: the task file (path, sha256) and its tokenized tasks */
  hellaswag?: { file: string; sha256: string; tasks: TokenizedTask[] };
}

/**
 * Runs the tasks of `req` on `backend`. With both ppl and kld the perplexity is taken from the KLD
 * run (the same forward over the same windows gives the same NLLs).
 * @returns the report; `seconds` is the wall time of this call (s), the last field of the JSON
 * @throws EdgeLLMError when a task's inputs are missing (ppl/kld without text, kld without reference)
 *   and the errors of the backends
 */
export async function evaluate(backend: ExecutionBackend, req: EvalRequest, ctx: RunContext): Promise<EvalReport> {
  const t0 = performance.now();
  const report = { ...req.identity } as EvalReport;
  const { text, reference } = req;
  if (req.tasks.includes('ppl') || req.tasks.includes('kld')) {
    if (!text) throw new Error('evaluate: ppl/kld need text windows');
    Object.assign(report, { text: text.file, textSha256: text.sha256, seqLen: text.seqLen });
    const windows = text.windows;
    if (req.tasks.includes('kld')) {
      if (!reference) throw new Error('evaluate: kld needs a reference backend');
      const t1 = performance.now();
      const k = await klDivergence(backend, reference.backend, windows, ctx.progress('kld', windows.length));
      report.kld = {
        reference: reference.file,
        referenceKind: reference.kind,
        referenceSha256: reference.sha256,
        referenceAdapter: reference.adapter,
        referenceLora: reference.lora,
        ...k,
        seconds: (performance.now() - t1) / 1000,
      };
    }
    if (req.tasks.includes('ppl')) {
      const t1 = performance.now();
      const r = report.kld
        ? { ppl: report.kld.ppl, meanNll: Math.log(report.kld.ppl), predictions: report.kld.predictions, windows: report.kld.windows }
        : await perplexity(backend, windows, ctx.progress('ppl', windows.length));
      const seconds = report.kld ? report.kld.seconds : (performance.now() - t1) / 1000;
      Object.assign(report, r, { tokensPerSecond: (windows.length * text.seqLen) / seconds });
    }
  }
  if (req.tasks.includes('hellaswag')) {
    if (!req.hellaswag) throw new Error('evaluate: hellaswag needs its tasks');
    const t1 = performance.now();
    const h = await hellaswag(backend, req.hellaswag.tasks, ctx.progress('hellaswag', req.hellaswag.tasks.length));
    report.hellaswag = { file: req.hellaswag.file, sha256: req.hellaswag.sha256, ...h, seconds: (performance.now() - t1) / 1000 };
  }
  report.seconds = (performance.now() - t0) / 1000;
  return report;
}

const pct = (x: number) => `${(100 * x).toFixed(2)}%`;

/** The human table `edgellm eval` prints on stdout, with the gate's checks when there is a baseline. */
export function formatEvalTable(r: EvalReport, gate?: { baseline: string; result: GateResult }): string {
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
