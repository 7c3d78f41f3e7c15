/** Temporary directories for tests, under os.tmpdir(). */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll } from 'vitest';

/** A fresh directory `<os.tmpdir()>/<prefix>XXXXXX`; the caller removes it (removeDir). */
export function makeTempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Removes `dir` and everything below it; nothing if it is already gone. */
export function removeDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

/**
 * A fresh temp directory made now, removed by an afterAll hook of the suite this is called in
 * (at a file's top level: after all of the file's tests).
 */
export function suiteTempDir(prefix: string): string {
  const dir = makeTempDir(prefix);
  afterAll(() => removeDir(dir));
  return dir;
}

/** Runs `fn` on a fresh temp directory and removes it afterwards, whether `fn` returns or throws. */
export function withTempDirSync<T>(prefix: string, fn: (dir: string) => T): T {
  const dir = makeTempDir(prefix);
  try {
    return fn(dir);
  } finally {
    removeDir(dir);
  }
}

/** Runs `fn` on a fresh temp directory and removes it once its promise settles (resolved or rejected). */
export async function withTempDir<T>(prefix: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = makeTempDir(prefix);
  try {
    return await fn(dir);
  } finally {
    removeDir(dir);
  }
}

/** A writer of files below `dir`: `write(name, data)` writes `<dir>/<name>` (text or bytes) and returns that path. */
export function fileWriter(dir: string): (name: string, data: string | Uint8Array) => string {
  return (name, data) => {
    const file = path.join(dir, name);
    fs.writeFileSync(file, data);
    return file;
  };
}
