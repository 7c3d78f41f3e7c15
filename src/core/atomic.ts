/**
 * Crash-safe output: every file edgellm writes goes to a temporary name beside the target,
 * `.<name>.<pid>.<rand>.tmp`, and is renamed over it only once complete, so a failure never leaves a
 * half-written output. A process killed while writing leaves its temporary file behind; the next
 * write of the same target removes those of processes that are gone ({@link tempPathFor}).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { EdgeLLMError } from './errors.js';

/** `<pid>.<rand>.tmp`, the part of a temporary name after `.<name>.` */
const TEMP_TAIL = /^(\d+)\.[a-z0-9]+\.tmp$/;

/**
 * A fresh temporary path in the same directory as `target` (same filesystem, so rename is atomic).
 * Removes, in passing, the temporary files of `target` that processes no longer running left behind
 * (a writer killed mid-write); those of live processes, this one included, are kept.
 */
export function tempPathFor(target: string): string {
  const dir = path.dirname(target);
  removeStaleTemps(dir, path.basename(target));
  const rand = Math.random().toString(36).slice(2, 10);
  return path.join(dir, `.${path.basename(target)}.${process.pid}.${rand}.tmp`);
}

/** Removes `.<base>.<pid>.<rand>.tmp` files in `dir` whose pid is not a running process; never throws. */
function removeStaleTemps(dir: string, base: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return; // no directory (yet) or unreadable: the write itself reports what is wrong
  }
  const prefix = `.${base}.`;
  for (const name of names) {
    const m = name.startsWith(prefix) ? TEMP_TAIL.exec(name.slice(prefix.length)) : null;
    if (m && !isRunning(Number(m[1]))) removeQuietly(path.join(dir, name));
  }
}

/** Whether a process with this pid exists (EPERM: it does, owned by another user). */
function isRunning(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * A filesystem error of writing `target` (ENOSPC, EACCES, EISDIR, ...) as an EdgeLLMError naming the
 * target: node's own message names the syscall and at most the temporary path. Other errors (the
 * writer's own EdgeLLMErrors) are returned as they are.
 */
function namingTarget(target: string, e: unknown): unknown {
  if (e instanceof EdgeLLMError || !(e instanceof Error) || typeof (e as NodeJS.ErrnoException).code !== 'string') return e;
  return new EdgeLLMError(`${target}: cannot write: ${e.message}`, { cause: e });
}

/**
 * Writes `target` atomically. `write` receives a temporary path to fill (sync or async); on success
 * it is renamed to `target`, on any error it is removed and the error rethrown (a filesystem error
 * as an EdgeLLMError naming `target`).
 */
export async function writeAtomic(target: string, write: (tmpPath: string) => void | Promise<void>): Promise<void> {
  const tmp = tempPathFor(target);
  try {
    await write(tmp);
    fs.renameSync(tmp, target);
  } catch (e) {
    removeQuietly(tmp);
    throw namingTarget(target, e);
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
    throw namingTarget(target, e);
  }
}

/**
 * Removes a file (a failed write's temporary file, a stale one), never throwing: a cleanup error
 * (e.g. ENOTDIR when the target's "directory" is a regular file) must not replace the error that made
 * the write fail.
 */
function removeQuietly(file: string): void {
  try {
    fs.rmSync(file, { force: true });
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
