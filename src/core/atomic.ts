/**
 * Crash-safe output: every file edgellm writes goes to a temporary name beside the target and is
 * renamed over it only once complete, so a failure never leaves a half-written output.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** A temporary path in the same directory as `target` (same filesystem, so rename is atomic). */
export function tempPathFor(target: string): string {
  const dir = path.dirname(target);
  const rand = Math.random().toString(36).slice(2, 10);
  return path.join(dir, `.${path.basename(target)}.${process.pid}.${rand}.tmp`);
}

/**
 * Writes `target` atomically. `write` receives a temporary path to fill (sync or async); on success
 * it is renamed to `target`, on any error it is removed and the error rethrown.
 */
export async function writeAtomic(target: string, write: (tmpPath: string) => void | Promise<void>): Promise<void> {
  const tmp = tempPathFor(target);
  try {
    await write(tmp);
    fs.renameSync(tmp, target);
  } catch (e) {
    removeQuietly(tmp);
    throw e;
  }
}

/** Synchronous variant of {@link writeAtomic}. */
export function writeAtomicSync(target: string, write: (tmpPath: string) => void): void {
  const tmp = tempPathFor(target);
  try {
    write(tmp);
    fs.renameSync(tmp, target);
  } catch (e) {
    removeQuietly(tmp);
    throw e;
  }
}

/**
 * Removes a failed write's temporary file, never throwing: a cleanup error (e.g. ENOTDIR when the
 * target's "directory" is a regular file) must not replace the error that made the write fail.
 */
function removeQuietly(tmp: string): void {
  try {
    fs.rmSync(tmp, { force: true });
  } catch {
    // nothing to remove, or nothing we can do: the original error is the one to report
  }
}

/** Writes bytes to `target` atomically. */
export function writeFileAtomicSync(target: string, data: Uint8Array | string): void {
  writeAtomicSync(target, (tmp) => fs.writeFileSync(tmp, data));
}

/**
 * Writes all of `data` to `fd` at its current position, or from `position` on: one write call
 * takes at most 2³¹ − 1 bytes, and weights sections and HAR members can be several GB.
 */
export function writeFully(fd: number, data: Uint8Array, position?: number): void {
  for (let done = 0; done < data.byteLength; )
    done += fs.writeSync(fd, data, done, Math.min(data.byteLength - done, 1 << 30), position === undefined ? null : position + done);
}
