import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DOCUMENT_SEPARATOR, isJsonlFile, readJsonl, readTextCorpus, readTextFile } from '../../src/core/text.js';
import { FormatError, UsageError } from '../../src/core/errors.js';
import { suiteTempDir, fileWriter } from '../helpers/tmp.js';

const dir = suiteTempDir('edgellm-text-');
const write = fileWriter(dir);

describe('readTextFile', () => {
  it('returns the UTF-8 text; UsageError for a missing file, FormatError for one that cannot be read', () => {
    expect(readTextFile(write('a.txt', 'héllo\n'))).toBe('héllo\n');
    expect(() => readTextFile(path.join(dir, 'nope.txt'))).toThrow(UsageError);
    expect(() => readTextFile(dir)).toThrow(FormatError);
  });
});

describe('readJsonl', () => {
  const f = write('r.jsonl', '{"a": 1}\r\n\n  [2]  \n"three"\n{"a": oops}\n');

  it('gives each record with its 1-based line, skipping blank lines; limit stops before later lines are parsed', () => {
    expect(readJsonl(f, { limit: 3 })).toEqual([{ line: 1, value: { a: 1 } }, { line: 3, value: [2] }, { line: 4, value: 'three' }]);
    expect(readJsonl(f, { limit: 1, map: (v, line) => `${line}:${JSON.stringify(v)}` })).toEqual(['1:{"a":1}']);
  });

  it('names the file and line of a line that is not JSON, and reports the first bad line of a map', () => {
    expect(() => readJsonl(f)).toThrow(FormatError);
    expect(() => readJsonl(f)).toThrow(/r\.jsonl: line 5: not valid JSON/);
    expect(() => readJsonl(f, { map: (v, line) => { if (Array.isArray(v)) throw new Error(`bad ${line}`); return v; } })).toThrow('bad 3');
  });
});

describe('readTextCorpus', () => {
  it('joins JSONL text fields (maxDocs keeps the first ones) and returns other files as they are', () => {
    const j = write('d.JSONL', '{"text": "one"}\n{"text": "two"}\n{"txt": 3}\n');
    expect(isJsonlFile(j)).toBe(true);
    expect(readTextCorpus(j, { maxDocs: 2 })).toBe(['one', 'two'].join(DOCUMENT_SEPARATOR));
    expect(() => readTextCorpus(j)).toThrow(/line 3: expected an object with a string "text" field/);
    expect(readTextCorpus(write('p.txt', '{"text": "raw"}\n'), { maxDocs: 1 })).toBe('{"text": "raw"}\n');
  });
});
