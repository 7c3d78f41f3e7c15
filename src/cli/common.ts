/**
 * Helpers shared by the CLI commands: option parsers that throw UsageError, output checks, dataset
 * name resolution.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UsageError } from '../core/errors.js';
import { namedDataset, type DatasetName } from '../../calibration/datasets.js';

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
