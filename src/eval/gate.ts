/**
 * The accuracy gate: compares an evaluation report with a stored one (a baseline, any report
 * written by `edgellm eval --json FILE` or `--write-baseline FILE`) and lists every threshold the
 * new figures violate, one line each — what a CI job needs to fail a change that costs accuracy,
 * in the spirit of llm-compressor's recovery thresholds.
 *
 * Checks (each only when both reports hold the metric, measured on the same data):
 *   ppl        ppl ≤ baseline.ppl · (1 + maxPplIncrease)
 *   kld        kld.meanKld ≤ baseline.kld.meanKld + maxKld       (nats; same reference model)
 *   hellaswag  100 · (baseline.accNorm − accNorm) ≤ maxHellaswagDrop   (percentage points)
 * "Same data" means the same dataset bytes (sha256), window length and number of windows (or
 * HellaSwag tasks); a mismatch is itself a violation, since the figures cannot be compared.
 */
import * as fs from 'node:fs';
import { EdgeLLMError, FormatError, UsageError } from '../core/errors.js';
import { writeFileAtomicSync } from '../core/atomic.js';
import type { KldResult } from './kld.js';
import type { HellaSwagResult } from './hellaswag.js';
import type { QuantSchemeSummary } from '../ir/quant-scheme.js';

/** What `edgellm eval` reports (its `--json` output); every field but the identity is optional. */
export interface EvalReport {
  edgellmVersion: string;
  createdAt: string;
  /**
   * the evaluated model's path, kind and digest: src/core/digest.ts artifactSha256 (a HAR/HEF file's sha256;
   * for a model directory its weight listing digest, weightListingSha256, which the committed baseline records)
   */
  model: string;
  kind: string;
  modelSha256: string;
  /** settings: tasks run, window length, prefill chunk, emulation level, ... */
  settings: Record<string, unknown>;
  /** the executable's quantization scheme (weight bits, group size, method, A8/KV8) */
  quantScheme?: Record<string, unknown> | QuantSchemeSummary;
  /** perplexity / KLD text: path, sha256 of its bytes, JSONL documents kept */
  text?: string;
  textSha256?: string;
  seqLen?: number;
  /** perplexity (task ppl) */
  ppl?: number;
  meanNll?: number;
  predictions?: number;
  windows?: number;
  tokensPerSecond?: number;
  kld?: KldResult & { reference: string; referenceKind: string; referenceSha256: string; referenceAdapter?: string | null; referenceLora?: string | null; seconds: number };
  hellaswag?: HellaSwagResult & { file: string; sha256: string; seconds: number };
  /** wall time of the whole evaluation, s */
  seconds: number;
}

export interface GateThresholds {
  /** allowed relative perplexity increase (0.01 = 1%) */
  maxPplIncrease: number;
  /** allowed increase of the mean KL-divergence, nats */
  maxKld: number;
  /** allowed drop of HellaSwag acc_norm, percentage points */
  maxHellaswagDrop: number;
}

export const DEFAULT_GATE: GateThresholds = { maxPplIncrease: 0.01, maxKld: 0.01, maxHellaswagDrop: 1 };

export interface GateResult {
  /** one line per violated threshold (or incomparable metric) */
  violations: string[];
  /** one line per comparison made, passed or not */
  checks: string[];
  /** metrics present in only one of the two reports */
  skipped: string[];
}

/** Exit code 1 with a summary; the command prints the violation lines before throwing it. */
export class GateError extends EdgeLLMError {}

/**
 * Parses a percentage: "1%", "1" and "0.5%" mean 1%, 1%, 0.5%.
 * @returns the fraction (0.01 for "1%")
 * @throws UsageError for anything else or a negative value
 */
export function parsePercent(flag: string, v: string): number {
  const n = Number(v.trim().replace(/%$/, ''));
  if (!Number.isFinite(n) || n < 0) throw new UsageError(`${flag} ${v}: expected a non-negative percentage such as 1%`);
  return n / 100;
}

const f = (x: number, d = 4) => x.toFixed(d);
const short = (sha?: string) => (sha ? sha.slice(0, 12) : '?');

/** Compares `current` with `baseline` (see the file header). */
export function checkGate(current: EvalReport, baseline: EvalReport, t: GateThresholds = DEFAULT_GATE): GateResult {
  const violations: string[] = [];
  const checks: string[] = [];
  const skipped: string[] = [];
  const sameText = (what: string, b: EvalReport, windows: [number | undefined, number | undefined]): boolean => {
    const diffs: string[] = [];
    if (b.textSha256 !== current.textSha256) diffs.push(`text sha256 ${short(b.textSha256)} vs ${short(current.textSha256)}`);
    if (b.seqLen !== current.seqLen) diffs.push(`seqlen ${b.seqLen} vs ${current.seqLen}`);
    if (windows[0] !== windows[1]) diffs.push(`${windows[0]} vs ${windows[1]} windows`);
    if (diffs.length) violations.push(`${what}: not comparable with the baseline (${diffs.join(', ')})`);
    return diffs.length === 0;
  };

  if (baseline.ppl !== undefined && current.ppl !== undefined) {
    if (sameText('ppl', baseline, [baseline.windows, current.windows])) {
      const limit = baseline.ppl * (1 + t.maxPplIncrease);
      const rel = current.ppl / baseline.ppl - 1;
      const line = `ppl ${f(current.ppl)} vs baseline ${f(baseline.ppl)} (${rel >= 0 ? '+' : ''}${(100 * rel).toFixed(2)}%, max +${(100 * t.maxPplIncrease).toFixed(2)}%)`;
      checks.push(line);
      if (current.ppl > limit) violations.push(line);
    }
  } else if (baseline.ppl !== undefined || current.ppl !== undefined) skipped.push('ppl');

  if (baseline.kld && current.kld) {
    const ok = sameText('kld', baseline, [baseline.kld.windows, current.kld.windows]);
    if (ok && baseline.kld.referenceSha256 !== current.kld.referenceSha256)
      violations.push(`kld: not comparable with the baseline (reference sha256 ${short(baseline.kld.referenceSha256)} vs ${short(current.kld.referenceSha256)})`);
    else if (ok) {
      const d = current.kld.meanKld - baseline.kld.meanKld;
      const line = `kld ${f(current.kld.meanKld, 5)} vs baseline ${f(baseline.kld.meanKld, 5)} nats (${d >= 0 ? '+' : ''}${f(d, 5)}, max +${t.maxKld})`;
      checks.push(line);
      if (d > t.maxKld) violations.push(line);
    }
  } else if (baseline.kld || current.kld) skipped.push('kld');

  if (baseline.hellaswag && current.hellaswag) {
    const b = baseline.hellaswag;
    const c = current.hellaswag;
    if (b.sha256 !== c.sha256 || b.tasks !== c.tasks)
      violations.push(`hellaswag: not comparable with the baseline (sha256 ${short(b.sha256)}, ${b.tasks} tasks vs sha256 ${short(c.sha256)}, ${c.tasks} tasks)`);
    else {
      const drop = 100 * (b.accNorm - c.accNorm);
      const line = `hellaswag acc_norm ${(100 * c.accNorm).toFixed(2)}% vs baseline ${(100 * b.accNorm).toFixed(2)}% (drop ${drop.toFixed(2)} points, max ${t.maxHellaswagDrop})`;
      checks.push(line);
      if (drop > t.maxHellaswagDrop) violations.push(line);
    }
  } else if (baseline.hellaswag || current.hellaswag) skipped.push('hellaswag');

  if (checks.length === 0 && violations.length === 0)
    violations.push('nothing to compare: the baseline and this run share no task (ppl, kld, hellaswag)');
  return { violations, checks, skipped };
}

/**
 * Reads a baseline (an eval report).
 * @throws UsageError when the file does not exist; FormatError when it is not a report
 */
export function readBaseline(file: string): EvalReport {
  if (!fs.existsSync(file)) throw new UsageError(`${file}: no such baseline file (write one with --write-baseline)`);
  let r: unknown;
  try {
    r = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new FormatError(file, `not valid JSON: ${(e as Error).message}`);
  }
  if (!r || typeof r !== 'object' || typeof (r as EvalReport).edgellmVersion !== 'string')
    throw new FormatError(file, 'not an edgellm eval report (no edgellmVersion field)');
  const rep = r as EvalReport;
  if (rep.ppl === undefined && !rep.kld && !rep.hellaswag) throw new FormatError(file, 'the report holds no ppl, kld or hellaswag figure');
  return rep;
}

/** Writes a report as JSON (atomically). */
export function writeReport(file: string, report: EvalReport): void {
  writeFileAtomicSync(file, JSON.stringify(report, null, 2) + '\n');
}
