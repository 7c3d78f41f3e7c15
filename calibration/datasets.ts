/**
 * Text and token-window sources for calibration and evaluation: plain text, JSONL documents
 * (`{"text": ...}` a line, as C4 ships), pre-tokenized windows (`*.tokens.json`), and the named
 * datasets kept under `../shared/data` (see its PROVENANCE.md).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FormatError, UsageError } from '../src/core/errors.js';
import { readTextCorpus, readTextFile } from '../src/core/text.js';

/** Datasets known by name; each maps to one file under `<sharedDir>/data`. */
export type DatasetName = 'wikitext2' | 'c4' | 'tinystories';

const NAMED_DATASETS: Readonly<Record<DatasetName, string>> = {
  // WikiText-2 raw test split, HF rows joined with "\n\n": the text the GPTQ/QuaRot papers evaluate on
  wikitext2: 'data/wikitext-2-raw/wiki.test.joined.txt',
  // 2,000 C4 documents, one JSON object a line (not the full validation shard)
  c4: 'data/c4/c4-validation-2k.jsonl',
  // 18 TinyStories-style stories, one a line (in-domain for stories260K)
  tinystories: 'data/tinystories/TinyStories-valid.txt',
};

/**
 * Reads a text corpus as one string ({@link readTextCorpus}, src/core/text.ts):
 * - `.jsonl`: one JSON object a line; the `text` field of each is kept and the documents are joined
 *   with "\n\n". Blank lines are skipped.
 * - anything else: the file's UTF-8 text as is.
 * @throws UsageError when the file does not exist; FormatError (naming the file and the 1-based line
 *   number) for a JSONL line that is not JSON or has no string `text` field
 */
export function loadTextFile(file: string): string {
  return readTextCorpus(file);
}

/**
 * Reads pre-tokenized windows: a JSON array of non-empty arrays of integer token ids, e.g.
 * `data/calibration/c4-calib-128x256-seed0.tokens.json` (128 windows × 256 ids).
 * @param options.vocabSize when given, every id must be < vocabSize
 * @returns the windows, number[][] (token ids)
 * @throws UsageError when the file does not exist; FormatError naming the window and position of
 *   the first bad entry (not JSON, not an array of arrays, empty, or an id that is not a
 *   non-negative integer below vocabSize)
 */
export function loadTokenWindows(file: string, options: { vocabSize?: number } = {}): number[][] {
  const text = readTextFile(file);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new FormatError(file, `not valid JSON: ${(e as Error).message}`);
  }
  if (!Array.isArray(v)) throw new FormatError(file, 'expected a JSON array of token-id windows (arrays of integers)');
  if (v.length === 0) throw new FormatError(file, 'holds no windows');
  const { vocabSize } = options;
  v.forEach((w: unknown, i: number) => {
    if (!Array.isArray(w)) throw new FormatError(file, `window ${i} is not an array of token ids`);
    if (w.length === 0) throw new FormatError(file, `window ${i} is empty`);
    w.forEach((id: unknown, j: number) => {
      if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0)
        throw new FormatError(file, `window ${i}, position ${j}: token id ${JSON.stringify(id)} is not a non-negative integer`);
      if (vocabSize !== undefined && id >= vocabSize)
        throw new FormatError(file, `window ${i}, position ${j}: token id ${id} is outside the vocabulary [0, ${vocabSize})`);
    });
  });
  return v as number[][];
}

/**
 * Whether a file holds pre-tokenized windows rather than text: true for a `.tokens.json` name, false
 * for `.txt`/`.jsonl`, and for any other `.json` file decided by content (it starts with `[[` and a
 * number, whitespace allowed).
 * @throws UsageError when the content must be read and the file does not exist
 */
export function isTokenWindowFile(file: string): boolean {
  const lower = file.toLowerCase();
  if (lower.endsWith('.tokens.json')) return true;
  if (!lower.endsWith('.json')) return false;
  if (!fs.existsSync(file)) throw new UsageError(`${file}: no such file`);
  const fd = fs.openSync(file, 'r');
  try {
    const head = Buffer.alloc(256);
    const n = fs.readSync(fd, head, 0, head.length, 0);
    return /^\s*\[\s*\[\s*\d/.test(head.subarray(0, n).toString('utf8'));
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The shared data directory: env `EDGELLM_SHARED_DIR` if set, else `<cwd>/../shared` (the project
 * is checked out beside `shared/`).
 */
export function defaultSharedDir(): string {
  return process.env.EDGELLM_SHARED_DIR ?? path.resolve(process.cwd(), '..', 'shared');
}

/**
 * The file path of a named evaluation dataset under `<sharedDir>/data`:
 * wikitext2 → wikitext-2-raw/wiki.test.joined.txt, c4 → c4/c4-validation-2k.jsonl,
 * tinystories → tinystories/TinyStories-valid.txt. Read it with {@link loadTextFile}.
 * @param sharedDir defaults to {@link defaultSharedDir}
 * @throws UsageError for an unknown name or when the file is not there
 */
export function namedDataset(name: DatasetName, sharedDir: string = defaultSharedDir()): string {
  if (!Object.prototype.hasOwnProperty.call(NAMED_DATASETS, name))
    throw new UsageError(`unknown dataset '${name}' (known: ${Object.keys(NAMED_DATASETS).join(', ')})`);
  const file = path.join(sharedDir, NAMED_DATASETS[name]);
  if (!fs.existsSync(file))
    throw new UsageError(`dataset '${name}' not found at ${file} (set EDGELLM_SHARED_DIR to the directory that holds data/)`);
  return file;
}
