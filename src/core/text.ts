/**
 * Reading text and JSONL files, the one implementation for calibration (calibration/datasets.ts)
 * and evaluation (src/eval/): a file's UTF-8 text, the records of a JSONL file, and a text corpus
 * (a plain text file as is, or the `text` fields of a JSONL file — `{"text": ...}` a line, as C4
 * ships — joined with {@link DOCUMENT_SEPARATOR}).
 */
import * as fs from 'node:fs';
import { FormatError, UsageError } from './errors.js';

/** Separator between JSONL documents when they are joined into one text. */
export const DOCUMENT_SEPARATOR = '\n\n';

/**
 * A file's UTF-8 text.
 * @throws UsageError when the file does not exist; FormatError naming the file when it cannot be
 *   read (e.g. a directory, no permission)
 */
export function readTextFile(file: string): string {
  if (!fs.existsSync(file)) throw new UsageError(`${file}: no such file`);
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new FormatError(file, `cannot read: ${(e as Error).message}`);
  }
}

/** One JSONL record: the parsed value and its 1-based line number. */
export interface JsonlRecord {
  line: number;
  value: unknown;
}

export interface ReadJsonlOptions<T> {
  /** stop after this many records: the lines after them are neither parsed nor checked */
  limit?: number;
  /**
   * checks and converts each record as it is read (so the first bad line is the one reported);
   * default: `{ line, value }`
   */
  map?: (value: unknown, line: number) => T;
}

/**
 * The records of a JSONL file: one JSON value a line (lines split at "\n", each trimmed first, so
 * "\r\n" endings are fine); blank lines are skipped and do not count as records.
 * @throws UsageError when the file does not exist; FormatError naming the file and the 1-based line
 *   number of a line that is not valid JSON ("line N: not valid JSON (…)"); whatever `opts.map` throws
 */
export function readJsonl<T = JsonlRecord>(file: string, opts: ReadJsonlOptions<T> = {}): T[] {
  const limit = opts.limit ?? Infinity;
  const map = opts.map ?? ((value: unknown, line: number) => ({ line, value }) as T);
  const records: T[] = [];
  const lines = readTextFile(file).split('\n');
  for (let i = 0; i < lines.length && records.length < limit; i++) {
    const line = lines[i].trim();
    if (line === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (e) {
      throw new FormatError(file, `line ${i + 1}: not valid JSON (${(e as Error).message})`);
    }
    records.push(map(value, i + 1));
  }
  return records;
}

/** Whether `file` is read as JSONL: its name ends in `.jsonl` (any case). */
export function isJsonlFile(file: string): boolean {
  return file.toLowerCase().endsWith('.jsonl');
}

/**
 * A text corpus as one string.
 * - `.jsonl` ({@link isJsonlFile}): one JSON object a line ({@link readJsonl}); the string `text`
 *   field of each is kept and the documents are joined with {@link DOCUMENT_SEPARATOR} ("\n\n").
 * - anything else: the file's UTF-8 text as is ({@link readTextFile}).
 * @param opts.maxDocs JSONL only: keep the first `maxDocs` documents (later lines are not read);
 *   ignored for plain text
 * @throws UsageError when the file does not exist; FormatError (naming the file and the 1-based line
 *   number) for a JSONL line that is not JSON or has no string `text` field
 */
export function readTextCorpus(file: string, opts: { maxDocs?: number } = {}): string {
  if (!isJsonlFile(file)) return readTextFile(file);
  const docs = readJsonl(file, {
    limit: opts.maxDocs,
    map: (value, line) => {
      const t = value && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>).text : undefined;
      if (typeof t !== 'string') throw new FormatError(file, `line ${line}: expected an object with a string "text" field`);
      return t;
    },
  });
  return docs.join(DOCUMENT_SEPARATOR);
}
