/**
 * sha256, the one implementation: of bytes in memory (HAR members, HEF sections and header), over
 * slices as they stream past (HAR members while reading, HEF sections while verifying), of a file
 * (streamed), and the two digests of a model directory — {@link modelSha256}, the bytes of its
 * weight files (HAR/HEF `sourceSha256`), and {@link weightListingSha256}, their names and hashes
 * (eval reports). The two directory digests differ for the same directory; see each one.
 */
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UsageError } from './errors.js';

/** One Hash.update call takes at most 2³¹ − 1 bytes ("data is too long"); a 1.5B model's weights are several GB. */
const UPDATE_SLICE = 2 ** 30;
/** Read block for hashing files. */
const FILE_BLOCK = 16 << 20;

/** An incremental sha256: feed it slices in order with {@link update}, then read the digest once. */
export class Sha256 {
  private readonly hash = createHash('sha256');

  /** Adds `data` (any length: fed to the hash in 1 GiB slices). @returns this */
  update(data: Uint8Array): this {
    for (let o = 0; o < data.byteLength; o += UPDATE_SLICE) this.hash.update(data.subarray(o, Math.min(data.byteLength, o + UPDATE_SLICE)));
    return this;
  }

  /** The 32-byte digest of everything fed so far; the hasher cannot be used afterwards. */
  digest(): Buffer {
    return this.hash.digest();
  }

  /** The digest as 64 lowercase hex characters; the hasher cannot be used afterwards. */
  digestHex(): string {
    return this.hash.digest('hex');
  }
}

/** sha256 of `data` (32 bytes), any length. */
export function sha256(data: Uint8Array): Buffer {
  return new Sha256().update(data).digest();
}

/** sha256 of `data` as 64 lowercase hex characters. */
export function sha256Hex(data: Uint8Array): string {
  return new Sha256().update(data).digestHex();
}

/** Feeds the bytes of `file` to `h` in 16 MiB blocks. @throws UsageError when the file does not exist */
function hashFile(h: Sha256, file: string): void {
  if (!fs.existsSync(file)) throw new UsageError(`${file}: no such file`);
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(FILE_BLOCK);
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * sha256 (hex) of one file's bytes, streamed in 16 MiB blocks (what `sha256sum` prints).
 * @throws UsageError when the file does not exist
 */
export function sha256File(file: string): string {
  const h = new Sha256();
  hashFile(h, file);
  return h.digestHex();
}

/** Read block of {@link sha256FileRangeInWorker}'s worker. */
const WORKER_BLOCK = 1 << 20;

/** The worker of {@link sha256FileRangeInWorker} (CommonJS, evaluated: no separate file to build or resolve). */
const RANGE_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const fs = require('node:fs');
const { createHash } = require('node:crypto');
const { file, offset, length, block } = workerData;
const h = createHash('sha256');
const fd = fs.openSync(file, 'r');
const buf = Buffer.allocUnsafe(Math.max(1, Math.min(block, length)));
let done = 0;
try {
  while (done < length) {
    const n = fs.readSync(fd, buf, 0, Math.min(buf.length, length - done), offset + done);
    if (n === 0) break;
    h.update(buf.subarray(0, n));
    done += n;
  }
} finally {
  fs.closeSync(fd);
}
parentPort.postMessage({ done, digest: h.digest() });
`;

/**
 * sha256 of bytes [offset, offset + length) of `file`, computed on a worker thread (streamed in
 * 1 MiB blocks: the worker's memory stays small), so the caller's thread (e.g. one blocked in
 * onnxruntime's session creation) goes on.
 * @returns the digest and the bytes hashed (fewer than `length` when the file ends first)
 * @throws (rejects with) the worker's error, e.g. ENOENT
 */
export function sha256FileRangeInWorker(file: string, offset: number, length: number): Promise<{ digest: Buffer; done: number }> {
  return new Promise((resolve, reject) => {
    const w = new Worker(RANGE_WORKER, { eval: true, workerData: { file, offset, length, block: WORKER_BLOCK } });
    w.once('message', (m: { digest: Uint8Array; done: number }) => resolve({ digest: Buffer.from(m.digest), done: m.done }));
    w.once('error', reject);
    w.once('exit', (code) => code !== 0 && reject(new Error(`sha256 worker exited with code ${code}`)));
  });
}

/** A directory's `*.safetensors` file names, sorted (JavaScript's default string order). */
function safetensorsNames(dir: string): string[] {
  return fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();
}

/**
 * "The sha256 of a model": sha256 (hex) of the bytes of its weight files concatenated, file after
 * file in sorted order, with nothing between them (no names, no lengths). This is the
 * `sourceSha256` a HAR manifest and a HEF header record.
 *
 * @param model a list of weight files (sorted here with JavaScript's default string order, so the
 *   caller's order does not matter; for files in one directory that is name order), or a model
 *   directory, which stands for its `*.safetensors` files
 * @throws UsageError when a file does not exist
 */
export function modelSha256(model: string | readonly string[]): string {
  const files = typeof model === 'string' ? safetensorsNames(model).map((f) => path.join(model, f)) : [...model].sort();
  const h = new Sha256();
  for (const f of files) hashFile(h, f);
  return h.digestHex();
}

/**
 * sha256 (hex) of a model directory's weight-file listing: of the UTF-8 text made of one line
 * `<file name> <sha256File(file), hex>\n` per `*.safetensors` file of `dir`, in name order. Not
 * {@link modelSha256}, which hashes the bytes themselves: the two differ for the same directory.
 * Eval reports record this one for a model directory (`modelSha256`, `kld.referenceSha256`), so
 * the committed baselines (ci/baselines/) stay comparable; like modelSha256 it does not depend on
 * where the directory lives.
 * @throws UsageError when a listed file vanishes while being hashed
 */
export function weightListingSha256(dir: string): string {
  const h = new Sha256();
  for (const f of safetensorsNames(dir)) h.update(Buffer.from(`${f} ${sha256File(path.join(dir, f))}\n`, 'utf8'));
  return h.digestHex();
}

/**
 * sha256 (hex) an eval report records for a model path: {@link sha256File} for a file (HAR, HEF),
 * {@link weightListingSha256} for a model directory.
 * @throws UsageError when a file does not exist; node:fs errors when `p` does not exist
 */
export function artifactSha256(p: string): string {
  return fs.statSync(p).isDirectory() ? weightListingSha256(p) : sha256File(p);
}
