/** Catching what a call throws, and the assertions on the FormatError a reader must raise for a bad file. */
import { expect } from 'vitest';
import { FormatError } from '../../src/core/errors.js';

/** What `fn` throws (undefined if it returns). */
export function thrownBy(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

/** What `promise` rejects with (undefined if it resolves). */
export function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => undefined,
    (e: unknown) => e,
  );
}

/** Asserts `error` is a FormatError whose message names `file` and matches every one of `patterns`. */
export function expectFormatErrorNaming(error: unknown, file: string, ...patterns: RegExp[]): FormatError {
  expect(error, `${file} should be rejected`).toBeInstanceOf(FormatError);
  const fe = error as FormatError;
  expect(fe.message).toContain(file);
  for (const p of patterns) expect(fe.message).toMatch(p);
  return fe;
}

/** Asserts `error` is a one-line FormatError whose message names `file` (and matches `pattern`, if given). */
export function expectOneLineFormatError(error: unknown, file: string, pattern?: RegExp): FormatError {
  const fe = expectFormatErrorNaming(error, file);
  expect(fe.message).not.toContain('\n');
  if (pattern) expect(fe.message).toMatch(pattern);
  return fe;
}
