import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { isTokenWindowFile, loadTextFile, loadTokenWindows, namedDataset } from '../../calibration/datasets.js';
import { FormatError, UsageError } from '../../src/core/errors.js';
import { CALIB, SHARED } from '../helpers/paths.js';
import { suiteTempDir, fileWriter } from '../helpers/tmp.js';
import { expectOneLineFormatError, thrownBy } from '../helpers/errors.js';

const dir = suiteTempDir('edgellm-datasets-');
const write = fileWriter(dir);

describe('loadTextFile', () => {
  it('returns a .txt file as is', () => {
    const f = write('a.txt', 'hello\n\nworld \n');
    expect(loadTextFile(f)).toBe('hello\n\nworld \n');
  });

  it('joins the text fields of a .jsonl file with blank lines, skipping empty lines', () => {
    const f = write('a.jsonl', '{"text": "first doc", "url": "x"}\n\n{"text": "second\\ndoc"}\n');
    expect(loadTextFile(f)).toBe('first doc\n\nsecond\ndoc');
  });

  it('names the file and the line number of a bad .jsonl line', () => {
    const f = write('bad.jsonl', '{"text": "ok"}\n{"text": oops}\n');
    expect(() => loadTextFile(f)).toThrow(FormatError);
    expect(() => loadTextFile(f)).toThrow(new RegExp(`${f.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: line 2`));
  });

  it('rejects a .jsonl line without a string text field', () => {
    const f = write('notext.jsonl', '{"text": "ok"}\n{"body": "x"}\n');
    expect(() => loadTextFile(f)).toThrow(/line 2: expected an object with a string "text" field/);
  });

  it('throws UsageError for a missing file', () => {
    expect(() => loadTextFile(path.join(dir, 'nope.txt'))).toThrow(UsageError);
  });
});

describe('loadTokenWindows', () => {
  it('loads the shared calibration windows: 128 windows of 256 ids', () => {
    const w = loadTokenWindows(CALIB, { vocabSize: 512 });
    expect(w.length).toBe(128);
    for (const win of w) expect(win.length).toBe(256);
    expect(w[0].slice(0, 5)).toEqual([13, 437, 417, 411, 356]);
  });

  it('rejects non-integer ids, naming window and position', () => {
    const f = write('frac.tokens.json', '[[1, 2, 3], [4, 5.5]]');
    expect(() => loadTokenWindows(f)).toThrow(FormatError);
    expect(() => loadTokenWindows(f)).toThrow(/window 1, position 1/);
  });

  it('rejects negative ids, ids outside the vocabulary, non-arrays and empty windows', () => {
    expect(() => loadTokenWindows(write('neg.tokens.json', '[[1, -2]]'))).toThrow(/position 1/);
    expect(() => loadTokenWindows(write('big.tokens.json', '[[1, 600]]'), { vocabSize: 512 })).toThrow(/outside the vocabulary/);
    expect(() => loadTokenWindows(write('flat.tokens.json', '[1, 2]'))).toThrow(/window 0 is not an array/);
    expect(() => loadTokenWindows(write('empty.tokens.json', '[[1], []]'))).toThrow(/window 1 is empty/);
    expect(() => loadTokenWindows(write('str.tokens.json', '[["a"]]'))).toThrow(FormatError);
    expect(() => loadTokenWindows(write('bad.tokens.json', '[[1,'))).toThrow(/not valid JSON/);
  });

  it('keeps a JSON.parse message that quotes a newline on one line, naming the file', () => {
    const f = write('nl.tokens.json', 'z\n  [1, 2],\n  [3]');
    const e = thrownBy(() => loadTokenWindows(f));
    expectOneLineFormatError(e, f, /not valid JSON: .*\\n/);
  });
});

describe('isTokenWindowFile', () => {
  it('decides by extension, and by content for other .json files', () => {
    expect(isTokenWindowFile(CALIB)).toBe(true);
    expect(isTokenWindowFile('corpus.txt')).toBe(false);
    expect(isTokenWindowFile('corpus.jsonl')).toBe(false);
    expect(isTokenWindowFile(write('w.json', ' [ [1, 2], [3, 4] ]'))).toBe(true);
    expect(isTokenWindowFile(write('o.json', '{"text": "x"}'))).toBe(false);
  });
});

describe('namedDataset', () => {
  it('resolves the shared data files', () => {
    expect(namedDataset('wikitext2', SHARED)).toBe(path.join(SHARED, 'data/wikitext-2-raw/wiki.test.joined.txt'));
    expect(namedDataset('c4', SHARED)).toBe(path.join(SHARED, 'data/c4/c4-validation-2k.jsonl'));
    expect(namedDataset('tinystories', SHARED)).toBe(path.join(SHARED, 'data/tinystories/TinyStories-valid.txt'));
  });

  it('honours EDGELLM_SHARED_DIR', () => {
    const old = process.env.EDGELLM_SHARED_DIR;
    process.env.EDGELLM_SHARED_DIR = SHARED;
    try {
      expect(namedDataset('c4')).toBe(path.join(SHARED, 'data/c4/c4-validation-2k.jsonl'));
    } finally {
      if (old === undefined) delete process.env.EDGELLM_SHARED_DIR;
      else process.env.EDGELLM_SHARED_DIR = old;
    }
  });

  it('throws UsageError for an unknown name or a missing directory', () => {
    expect(() => namedDataset('ptb' as never, SHARED)).toThrow(/unknown dataset 'ptb'/);
    expect(() => namedDataset('c4', dir)).toThrow(UsageError);
  });

  it('c4 joins its 2,000 documents', () => {
    const text = loadTextFile(namedDataset('c4', SHARED));
    expect(text.split('\n\n').length).toBeGreaterThanOrEqual(2000);
  });
});
