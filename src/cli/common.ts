/**
 * Helpers shared by the CLI commands: option parsers that throw UsageError, output checks, dataset
 * name resolution, calibration windows.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { UsageError } from '../core/errors.js';
import { namedDataset, loadTextFile, loadTokenWindows, isTokenWindowFile, type DatasetName } from '../../calibration/datasets.js';
import { sampleWindows } from '../../calibration/windows.js';
import type { TextTokenizer } from '../../formats/tokenizer.js';

/** commander option parser for an integer flag. */
export const int = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new UsageError(`${name} ${v}: expected an integer`);
  return n;
};

/** commander option parser for a number flag. */
export const float = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new UsageError(`${name} ${v}: expected a number`);
  return n;
};

/** Resolves `--text` (a file or a dataset name: wikitext2, c4, tinystories) to a path. */
export function textPath(spec: string): string {
  if (['wikitext2', 'c4', 'tinystories'].includes(spec) && !fs.existsSync(spec)) return namedDataset(spec as DatasetName);
  return spec;
}

/** @throws UsageError when the output's directory does not exist */
export function outputPathCheck(out: string): void {
  const dir = path.dirname(path.resolve(out));
  if (!fs.existsSync(dir)) throw new UsageError(`${out}: directory ${dir} does not exist`);
}

/** The shared pre-tokenized C4 calibration windows (`<shared>/data/calibration/c4-calib-128x256-seed0.tokens.json`), when present. */
export function defaultCalibration(): string | undefined {
  try {
    const p = path.join(path.dirname(namedDataset('c4')), '..', 'calibration', 'c4-calib-128x256-seed0.tokens.json');
    return fs.existsSync(p) ? p : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Calibration windows (token ids) of `--calib`: the first `n` windows of a pre-tokenized
 * `.tokens.json` file (ids checked against `vocabSize`), or `n` seeded windows of `seqLen` tokens
 * sampled from a tokenized `.txt` / `.jsonl` file.
 * @throws FormatError for an unreadable file or an id outside the vocabulary
 */
export async function calibrationWindows(file: string, tok: TextTokenizer, o: { n: number; seqLen: number; seed: number; vocabSize: number }): Promise<number[][]> {
  if (isTokenWindowFile(file)) return loadTokenWindows(file, { vocabSize: o.vocabSize }).slice(0, o.n);
  return sampleWindows(await tok.encode(loadTextFile(file), false), o.n, o.seqLen, o.seed);
}

/** commander option parser for --precision: exact | fast (src/runtime/simulator.ts ExecutionPrecision). */
export const precision = (name: string) => (v: string): 'exact' | 'fast' => {
  if (v !== 'exact' && v !== 'fast') throw new UsageError(`${name} ${v}: expected exact or fast`);
  return v;
};

/** --precision's help text. */
export const PRECISION_HELP = 'how 4-bit linears compute: exact (float32 on the dequantized weights: the static A8/KV8 scheme as the device runs it) or fast (int8 compute with dynamic per-block requantization, ~4e-3 relative error)';

/** How an executable is loaded and computed: the --precision, --no-mmap, --no-mlock and --no-verify flags. */
export interface LoadFlags {
  precision: 'exact' | 'fast';
  /** memory-map a HEF's large weights (false: read them into memory) */
  mmap: boolean;
  /** map a RAM-backed copy of them rather than the file (src/engine/session.ts SessionOptions.resident) */
  mlock: boolean;
  /** check the sha256 of a mapped weights section at load (false: --no-verify) */
  verify: boolean;
}

/** Adds --precision, --no-mmap, --no-mlock and --no-verify (run, chat, serve, bench). */
export function addLoadFlags(cmd: Command): Command {
  return cmd
    .option('--precision <mode>', PRECISION_HELP, precision('--precision'), 'exact')
    .option('--no-mmap', "read a HEF's weights into memory instead of memory-mapping them (more memory; faster exact decoding where the kernel reclaims mapped pages)")
    .option('--no-mlock', 'map the HEF file itself instead of a RAM-backed copy (the default keeps the weights resident: the kernel may page a mapped file out, which slows exact decoding)')
    .option('--no-verify', "skip the sha256 check of a HEF's mapped weights at load (by default it runs on a worker thread while the session is created, ~0.7 s for 1 GB on this 2-core machine, so it adds almost nothing; the header and every other section are still checked; `edgellm verify FILE` checks everything)");
}

/** The {@link LoadFlags} of parsed options. */
export function loadFlags(o: Record<string, any>): LoadFlags {
  return { precision: o.precision, mmap: o.mmap, mlock: o.mlock, verify: o.verify };
}
