/**
 * Streaming safetensors writer for files larger than memory (a 1.5B-parameter fixture checkpoint):
 * the header from the declared tensor specs, then each tensor's bytes in order, written to a
 * temporary file renamed over the target when complete. The layout is formats/safetensors.ts's.
 */
import * as fs from 'node:fs';
import { EdgeLLMError } from '../src/core/errors.js';
import type { DType, Tensor, TypedArray } from '../src/ir/tensor.js';
import { tempPathFor } from '../src/core/atomic.js';
import { IO_CHUNK, planLayout, tensorBytes, type SafetensorsSpec } from './safetensors.js';

/**
 * Lifecycle of a {@link SafetensorsWriter}:
 * NO_FILE → HEADER_WRITTEN → TENSOR_DATA (tensors in declared order) → DONE, or ABORTED from any state.
 */
export type SafetensorsWriterState = 'NO_FILE' | 'HEADER_WRITTEN' | 'TENSOR_DATA' | 'DONE' | 'ABORTED';

/**
 * Streaming writer for files larger than memory: the header is written up front from the declared
 * specs, then each tensor's bytes in declared order; only one tensor need be in memory at a time.
 * Output goes to a temporary file beside `path` and is renamed over it by {@link finish}, so a
 * failure never leaves a partial file at `path`.
 *
 *     const w = new SafetensorsWriter('out.safetensors', [{ name: 'w', dtype: 'F32', shape: [2, 3] }]);
 *     try { w.write('w', new Float32Array(6)); w.finish(); } catch (e) { w.abort(); throw e; }
 */
export class SafetensorsWriter {
  private _state: SafetensorsWriterState = 'NO_FILE';
  private readonly tmp: string;
  private fd: number | null = null;
  private readonly specs: SafetensorsSpec[];
  private readonly index = new Map<string, number>();
  private readonly offsets: [number, number][];
  private readonly dataStart: number;
  /** index of the next tensor to write */
  private next = 0;

  /**
   * Validates the specs, creates the temporary file and writes the 8-byte length and the header.
   * @param path final output path
   * @param specs every tensor of the file, in the order they will be written
   * @param metadata written as `__metadata__` (omitted when empty)
   * @throws EdgeLLMError for duplicate or reserved names, unknown dtypes, bad shapes, or when the
   *   temporary file cannot be written (nothing is left on disk then)
   */
  constructor(
    readonly path: string,
    specs: { name: string; dtype: DType; shape: number[] }[],
    metadata?: Record<string, string>,
  ) {
    this.specs = specs.map((s) => ({ name: s.name, dtype: s.dtype, shape: [...s.shape] }));
    const { head, offsets } = planLayout(this.specs, metadata, path);
    this.specs.forEach((s, i) => this.index.set(s.name, i));
    this.offsets = offsets;
    this.dataStart = head.length;
    this.tmp = tempPathFor(path);
    try {
      this.fd = fs.openSync(this.tmp, 'wx');
      this.writeAt(head, 0);
    } catch (e) {
      this.abort();
      throw new EdgeLLMError(`${path}: cannot write temporary file ${this.tmp}: ${(e as Error).message}`, { cause: e });
    }
    this._state = 'HEADER_WRITTEN';
  }

  /** Current lifecycle state. */
  get state(): SafetensorsWriterState {
    return this._state;
  }

  /**
   * Writes the data of the next declared tensor.
   * @param data typed array of DTYPES[dtype] (F16/BF16: Uint16Array bits) with numel(shape) elements
   * @throws EdgeLLMError when the writer is finished or aborted, `name` is undeclared, already written
   *   or not the next declared tensor (nothing is written then; the writer stays usable);
   *   ShapeMismatchError when the byte length or array kind is wrong. An I/O error aborts the writer.
   */
  write(name: string, data: TypedArray): void {
    if (this._state !== 'HEADER_WRITTEN' && this._state !== 'TENSOR_DATA')
      throw new EdgeLLMError(`${this.path}: cannot write tensor '${name}': writer is ${this._state}`);
    const i = this.index.get(name);
    const n = this.specs.length;
    if (i === undefined) throw new EdgeLLMError(`${this.path}: tensor '${name}' was not declared (the header lists ${n} tensors)`);
    if (i < this.next) throw new EdgeLLMError(`${this.path}: duplicate write of tensor '${name}' (already written as #${i + 1} of ${n})`);
    if (i > this.next)
      throw new EdgeLLMError(
        `${this.path}: tensor '${name}' (#${i + 1} of ${n}) written out of order; expected '${this.specs[this.next].name}' (#${this.next + 1}): tensors must be written in declared order`,
      );
    const bytes = tensorBytes(this.path, this.specs[i], data);
    try {
      this.writeAt(bytes, this.dataStart + this.offsets[i][0]);
    } catch (e) {
      this.abort();
      throw new EdgeLLMError(`${this.path}: writing tensor '${name}' failed: ${(e as Error).message}`, { cause: e });
    }
    this.next++;
    this._state = 'TENSOR_DATA';
  }

  /**
   * Flushes the temporary file and renames it to `path`.
   * @throws EdgeLLMError when declared tensors were not written (listing them) or the writer is not
   *   open; an I/O error aborts the writer.
   */
  finish(): void {
    if (this._state !== 'HEADER_WRITTEN' && this._state !== 'TENSOR_DATA') throw new EdgeLLMError(`${this.path}: cannot finish: writer is ${this._state}`);
    if (this.next < this.specs.length) {
      const missing = this.specs.slice(this.next).map((s) => `'${s.name}'`);
      const shown = missing.length > 5 ? `${missing.slice(0, 5).join(', ')}, ...` : missing.join(', ');
      throw new EdgeLLMError(`${this.path}: cannot finish: ${missing.length} of ${this.specs.length} declared tensors not written (${shown})`);
    }
    try {
      fs.fsyncSync(this.fd!);
      fs.closeSync(this.fd!);
      this.fd = null;
      fs.renameSync(this.tmp, this.path);
    } catch (e) {
      this.abort();
      throw new EdgeLLMError(`${this.path}: cannot finish: ${(e as Error).message}`, { cause: e });
    }
    this._state = 'DONE';
  }

  /** Closes and removes the temporary file. No-op after {@link finish} (the output is kept). */
  abort(): void {
    if (this._state === 'DONE') return;
    if (this.fd !== null) {
      try {
        fs.closeSync(this.fd);
      } catch {
        // already unusable; removing the file is what matters
      }
      this.fd = null;
    }
    fs.rmSync(this.tmp, { force: true });
    this._state = 'ABORTED';
  }

  private writeAt(bytes: Uint8Array, position: number): void {
    let done = 0;
    while (done < bytes.length) done += fs.writeSync(this.fd!, bytes, done, Math.min(IO_CHUNK, bytes.length - done), position + done);
  }
}

/**
 * Writes tensors to `path` atomically (temporary file + rename), streaming one tensor at a time.
 * @throws see {@link SafetensorsWriter}; on any error nothing is left at `path` or in the temp file
 */
export function writeSafetensors(
  path: string,
  tensors: Iterable<[string, Tensor]> | Map<string, Tensor>,
  metadata?: Record<string, string>,
): void {
  const list = [...tensors];
  const w = new SafetensorsWriter(
    path,
    list.map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape })),
    metadata,
  );
  try {
    for (const [name, t] of list) w.write(name, t.data);
    w.finish();
  } catch (e) {
    w.abort();
    throw e;
  }
}
