/**
 * Safetensors reader and writer (https://github.com/huggingface/safetensors).
 *
 * Layout of a file:
 *
 *     [u64 little-endian N][N bytes of JSON header, space-padded][data buffer]
 *     header = {"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..}
 *
 * `data_offsets` are relative to the start of the data buffer (byte 8 + N). The writer pads the header
 * with spaces so that N, and with it the data buffer, is a multiple of 8 (as the reference library
 * does), and lays tensors out contiguously in the order given. Dtypes come from the one
 * {@link DTYPES} table; F16/BF16 data are Uint16Array raw bits. Data are little-endian, which is the
 * host byte order on every platform Node supports in practice (x64, arm64).
 *
 * Reading is lazy: {@link SafetensorsFile.open} reads only the 8-byte length and the header,
 * validates every entry, and {@link SafetensorsFile.read} reads one tensor's bytes at its offset.
 * Every malformed file raises {@link FormatError} naming the file, the tensor and the numbers.
 *
 * A model directory (one file or a sharded index) is formats/safetensors-checkpoint.ts; the
 * streaming writer for files larger than memory is formats/safetensors-writer.ts.
 */
import * as fs from 'node:fs';
import { EdgeLLMError, FormatError, ShapeMismatchError } from '../src/core/errors.js';
import { DTYPES, isDType, numel } from '../src/ir/tensor.js';
import type { DType, Tensor, TypedArray } from '../src/ir/tensor.js';
import { alignUp } from '../src/core/align.js';

/** The reference library refuses headers larger than this (bytes); so do we. */
export const MAX_HEADER_BYTES = 100_000_000;

/** The header and the data buffer start at multiples of this (bytes). */
const HEADER_ALIGN = 8;

/** Largest single fs.readSync/writeSync request (Node caps one call at 2 GiB − 1). */
export const IO_CHUNK = 1 << 30;

const METADATA_KEY = '__metadata__';

/** Where one tensor lives on disk. */
export interface SafetensorsEntry {
  name: string;
  dtype: DType;
  shape: number[];
  /** path of the .safetensors file holding the tensor */
  file: string;
  /** absolute byte offset in file */
  offset: number;
  /** bytes of the tensor = numel(shape) × DTYPES[dtype].bytes */
  byteLength: number;
}

// ---------------------------------------------------------------------------------------------
// Header parsing (shared by the file reader and the in-memory decoder)
// ---------------------------------------------------------------------------------------------

interface ParsedHeader {
  metadata: Record<string, string>;
  /** entries in data order (ascending offset) */
  entries: Map<string, SafetensorsEntry>;
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isNonNegativeInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

export function describe(v: unknown): string {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/**
 * Validates the 8-byte length prefix against the file size and returns N as a number.
 * @param prefix the first 8 bytes
 * @param totalBytes size of the whole file (or in-memory buffer)
 */
function headerLength(prefix: Uint8Array, totalBytes: number, file: string): number {
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true); // u64, may exceed 2^53
  const available = BigInt(totalBytes - 8);
  if (n > available)
    throw new FormatError(file, `header length ${n} runs past end of file (${totalBytes} bytes, ${available} after the 8-byte length prefix)`);
  if (n > BigInt(MAX_HEADER_BYTES)) throw new FormatError(file, `header length ${n} exceeds the limit of ${MAX_HEADER_BYTES} bytes`);
  return Number(n);
}

/**
 * Parses and validates a header.
 * @param headerBytes the N header bytes (UTF-8 JSON, possibly space-padded)
 * @param dataStart absolute offset of the data buffer (8 + N)
 * @param dataLength bytes in the data buffer
 * @throws FormatError naming `file` (and the tensor) for every violation
 */
function parseHeader(headerBytes: Uint8Array, dataStart: number, dataLength: number, file: string): ParsedHeader {
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (e) {
    throw new FormatError(file, `header (${headerBytes.length} bytes) is not valid UTF-8 JSON: ${(e as Error).message}`, { cause: e });
  }
  if (!isPlainObject(raw)) throw new FormatError(file, `header must be a JSON object, got ${describe(raw)}`);

  let metadata: Record<string, string> = {};
  const unsorted: SafetensorsEntry[] = [];
  for (const [name, value] of Object.entries(raw)) {
    if (name === METADATA_KEY) {
      if (!isPlainObject(value)) throw new FormatError(file, `${METADATA_KEY} must be an object of strings, got ${describe(value)}`);
      for (const [k, v] of Object.entries(value))
        if (typeof v !== 'string') throw new FormatError(file, `${METADATA_KEY} must map strings to strings; key '${k}' has ${describe(v)}`);
      metadata = Object.fromEntries(Object.entries(value)) as Record<string, string>;
      continue;
    }
    const where = `tensor '${name}'`;
    if (!isPlainObject(value)) throw new FormatError(file, `${where}: entry must be an object, got ${describe(value)}`);
    const { dtype, shape, data_offsets: offsets } = value;
    if (typeof dtype !== 'string' || !isDType(dtype))
      throw new FormatError(file, `${where}: unknown dtype ${describe(dtype)} (known: ${Object.keys(DTYPES).join(', ')})`);
    if (!Array.isArray(shape) || !shape.every(isNonNegativeInt))
      throw new FormatError(file, `${where}: shape must be an array of non-negative integers, got ${describe(shape)}`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeInt) || offsets[0] > offsets[1])
      throw new FormatError(file, `${where}: data_offsets must be [begin, end] with 0 ≤ begin ≤ end, got ${describe(offsets)}`);
    const [begin, end] = offsets as [number, number];
    if (end > dataLength)
      throw new FormatError(file, `${where}: data_offsets [${begin}, ${end}] run past the end of the data buffer (${dataLength} bytes)`);
    const need = numel(shape) * DTYPES[dtype].bytes;
    if (end - begin !== need)
      throw new FormatError(
        file,
        `${where}: data_offsets [${begin}, ${end}] span ${end - begin} bytes but shape [${shape.join(', ')}] × ${dtype} (${DTYPES[dtype].bytes} bytes) needs ${need}`,
      );
    unsorted.push({ name, dtype, shape: [...shape], file, offset: dataStart + begin, byteLength: need });
  }

  // Data order; then any tensor starting before its predecessor ends overlaps it. Empty tensors own no bytes.
  const sorted = unsorted.sort((a, b) => a.offset - b.offset || a.byteLength - b.byteLength);
  let prev: SafetensorsEntry | null = null;
  for (const e of sorted) {
    if (e.byteLength === 0) continue;
    if (prev && e.offset < prev.offset + prev.byteLength) {
      const rel = (x: SafetensorsEntry) => `[${x.offset - dataStart}, ${x.offset - dataStart + x.byteLength})`;
      throw new FormatError(file, `tensors '${prev.name}' ${rel(prev)} and '${e.name}' ${rel(e)} overlap`);
    }
    prev = e;
  }
  return { metadata, entries: new Map(sorted.map((e) => [e.name, e])) };
}

/** A typed array of `dtype` over a fresh buffer holding exactly `bytes` (aligned: offset 0). */
export function typedArrayOf(dtype: DType, bytes: Uint8Array, count: number): TypedArray {
  return new DTYPES[dtype].array(bytes.buffer, 0, count);
}

// ---------------------------------------------------------------------------------------------
// Reading files
// ---------------------------------------------------------------------------------------------

/** Reads exactly `length` bytes at `position` into `into` (at 0), or throws FormatError (truncated). */
export function readExactly(fd: number, into: Uint8Array, position: number, file: string, what: string): void {
  let done = 0;
  while (done < into.length) {
    const got = fs.readSync(fd, into, done, Math.min(IO_CHUNK, into.length - done), position + done);
    if (got === 0)
      throw new FormatError(file, `unexpected end of file reading ${what}: got ${done} of ${into.length} bytes at offset ${position}`);
    done += got;
  }
}

function openForReading(file: string): { fd: number; size: number } {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new FormatError(file, `cannot open: ${(e as Error).message}`, { cause: e });
  }
  const st = fs.fstatSync(fd);
  if (!st.isFile()) {
    fs.closeSync(fd);
    throw new FormatError(file, 'not a regular file');
  }
  return { fd, size: st.size };
}

/**
 * One .safetensors file, read lazily: opening reads only the length prefix and the header; each
 * {@link read} reads one tensor's bytes.
 */
export class SafetensorsFile {
  /** the file's `__metadata__` ({} when absent) */
  readonly metadata: Record<string, string>;
  /** tensors in data order (ascending offset) */
  readonly entries: Map<string, SafetensorsEntry>;
  private fd: number | null;

  private constructor(
    readonly path: string,
    fd: number,
    /** the whole file's size, checked on reopen */
    private readonly size: number,
    header: ParsedHeader,
    /** where the safetensors bytes start in the file (0, or a member's offset inside an archive) */
    private readonly base = 0,
  ) {
    this.fd = fd;
    this.metadata = header.metadata;
    this.entries = header.entries;
  }

  /**
   * Opens `file` (or the safetensors bytes at `range` inside it, e.g. a member of an uncompressed
   * archive; `range.label` names it in errors) and validates its header; reads 8 + N bytes, never
   * the data.
   * @throws FormatError when the file cannot be opened, is shorter than 8 bytes, its header length
   *   runs past the end of file, the header is not a JSON object, or any entry has an unknown dtype,
   *   a bad shape, data_offsets out of range, a byte length ≠ numel(shape) × dtype size, or overlaps
   *   another tensor.
   */
  static open(file: string, range?: { offset: number; size: number; label?: string }): SafetensorsFile {
    const { fd, size: fileSize } = openForReading(file);
    const base = range?.offset ?? 0;
    const size = range?.size ?? fileSize;
    const label = range?.label ?? file;
    try {
      if (base + size > fileSize) throw new FormatError(label, `bytes ${base}-${base + size} lie past the end of the file (${fileSize} bytes)`);
      if (size < 8) throw new FormatError(label, `file is ${size} bytes, shorter than the 8-byte header length prefix`);
      const prefix = new Uint8Array(8);
      readExactly(fd, prefix, base, label, 'the header length');
      const n = headerLength(prefix, size, label);
      const headerBytes = new Uint8Array(n);
      readExactly(fd, headerBytes, base + 8, label, 'the header');
      return new SafetensorsFile(file, fd, fileSize, parseHeader(headerBytes, 8 + n, size - 8 - n, label), base);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /**
   * Reads one tensor: only its bytes, with one positioned read into a fresh (hence aligned) buffer.
   * Reopens the file if {@link close} was called.
   * @returns a Tensor whose data is the typed array of {@link DTYPES}[dtype] (F16/BF16: Uint16Array bits)
   * @throws FormatError if `name` is not in the file, or the file was truncated or changed since opening
   */
  read(name: string): Tensor {
    const e = this.entries.get(name);
    if (!e) throw new FormatError(this.path, `no tensor '${name}' (the file has ${this.entries.size} tensors)`);
    const bytes = new Uint8Array(e.byteLength);
    readExactly(this.handle(), bytes, this.base + e.offset, this.path, `tensor '${name}'`);
    return { dtype: e.dtype, shape: [...e.shape], data: typedArrayOf(e.dtype, bytes, e.byteLength / DTYPES[e.dtype].bytes) };
  }

  /** Closes the file descriptor; a later {@link read} reopens it. Idempotent. */
  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }

  private handle(): number {
    if (this.fd === null) {
      const { fd, size } = openForReading(this.path);
      if (size !== this.size) {
        fs.closeSync(fd);
        throw new FormatError(this.path, `changed on disk since its header was read (${this.size} bytes then, ${size} now)`);
      }
      this.fd = fd;
    }
    return this.fd;
  }
}

// ---------------------------------------------------------------------------------------------
// Writing (the layout shared by encodeSafetensors and formats/safetensors-writer.ts)
// ---------------------------------------------------------------------------------------------

/** Declares one tensor of a file to be written. */
export interface SafetensorsSpec {
  name: string;
  dtype: DType;
  shape: number[];
}

export interface Layout {
  /** the 8-byte length prefix followed by the space-padded header JSON */
  head: Uint8Array;
  /** data_offsets of each spec, in spec order */
  offsets: [number, number][];
  dataLength: number;
}

/**
 * Page alignment for memory-mapping: tensors of at least `minTensorBytes` start at a multiple of
 * `bytes` from the start of the file (the header is padded so the data starts at one too), with
 * zero bytes in the gaps. Readers that require contiguous data (the reference safetensors crate)
 * refuse such gaps; edgellm's own reader accepts them (it checks only bounds and overlaps).
 */
export interface PageAlignment {
  /** a power of two ≥ 8, e.g. 4096 */
  bytes: number;
  minTensorBytes: number;
}

/**
 * Plans a file: data_offsets in the given order, the header JSON (metadata first, tensors in order;
 * built by hand because JSON.stringify would move integer-like names first) padded with spaces to a
 * multiple of 8 bytes (or, with `align`, so the data starts page-aligned; see {@link PageAlignment}).
 * @throws EdgeLLMError for duplicate or reserved names, unknown dtypes, bad shapes or metadata
 */
export function planLayout(specs: readonly SafetensorsSpec[], metadata: Record<string, string> | undefined, label: string, align?: PageAlignment): Layout {
  const seen = new Set<string>();
  const offsets: [number, number][] = [];
  const parts: string[] = [];
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata))
      if (typeof v !== 'string') throw new EdgeLLMError(`${label}: metadata must map strings to strings; key '${k}' has ${describe(v)}`);
    parts.push(`${JSON.stringify(METADATA_KEY)}:${JSON.stringify(metadata)}`);
  }
  let end = 0;
  for (const { name, dtype, shape } of specs) {
    if (typeof name !== 'string') throw new EdgeLLMError(`${label}: tensor name must be a string, got ${describe(name)}`);
    if (name === METADATA_KEY) throw new EdgeLLMError(`${label}: '${METADATA_KEY}' is reserved and cannot name a tensor`);
    if (seen.has(name)) throw new EdgeLLMError(`${label}: duplicated tensor name '${name}'`);
    seen.add(name);
    if (!isDType(dtype)) throw new EdgeLLMError(`${label}: tensor '${name}': unknown dtype ${describe(dtype)} (known: ${Object.keys(DTYPES).join(', ')})`);
    if (!Array.isArray(shape) || !shape.every(isNonNegativeInt))
      throw new EdgeLLMError(`${label}: tensor '${name}': shape must be an array of non-negative integers, got ${describe(shape)}`);
    const bytes = numel(shape) * DTYPES[dtype].bytes;
    const begin = align && bytes >= align.minTensorBytes ? alignUp(end, align.bytes) : end;
    end = begin + bytes;
    if (!Number.isSafeInteger(end)) throw new EdgeLLMError(`${label}: tensor '${name}': data end offset ${end} is not a safe integer`);
    offsets.push([begin, end]);
    parts.push(`${JSON.stringify(name)}:{"dtype":"${dtype}","shape":[${shape.join(',')}],"data_offsets":[${begin},${end}]}`);
  }
  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  const n = align ? alignUp(8 + json.length, align.bytes) - 8 : alignUp(json.length, HEADER_ALIGN);
  const head = new Uint8Array(8 + n).fill(0x20, 8 + json.length); // space padding
  new DataView(head.buffer).setBigUint64(0, BigInt(n), true);
  head.set(json, 8);
  return { head, offsets, dataLength: end };
}

/** The raw bytes of `data`, after checking it fits a declared dtype and shape. */
export function tensorBytes(label: string, spec: SafetensorsSpec, data: TypedArray): Uint8Array {
  const info = DTYPES[spec.dtype];
  if (!(data instanceof info.array))
    throw new ShapeMismatchError(`${label}: tensor '${spec.name}' is ${spec.dtype}, which needs a ${info.array.name}, got ${data?.constructor?.name}`);
  const need = numel(spec.shape) * info.bytes;
  if (data.byteLength !== need)
    throw new ShapeMismatchError(
      `${label}: tensor '${spec.name}' has ${data.byteLength} bytes (${data.length} elements) but shape [${spec.shape.join(', ')}] × ${spec.dtype} (${info.bytes} bytes) needs ${need}`,
    );
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * Serialises tensors to safetensors bytes in memory, laid out in iteration order.
 * @param metadata written as `__metadata__` (omitted when empty)
 * @param align page alignment of the large tensors (default: none, contiguous as the format wants)
 * @throws EdgeLLMError (duplicate names, unknown dtype, bad shape), ShapeMismatchError (data length
 *   or typed-array kind does not match dtype × shape)
 */
export function encodeSafetensors(tensors: Iterable<[string, Tensor]>, metadata?: Record<string, string>, align?: PageAlignment): Uint8Array {
  const list = [...tensors];
  const specs = list.map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape }));
  const label = '<in-memory safetensors>';
  const { head, offsets, dataLength } = planLayout(specs, metadata, label, align);
  const out = new Uint8Array(head.length + dataLength);
  out.set(head, 0);
  list.forEach(([, t], i) => out.set(tensorBytes(label, specs[i], t.data), head.length + offsets[i][0]));
  return out;
}

/**
 * Parses safetensors bytes held in memory, with the same validation as {@link SafetensorsFile.open}.
 * Every tensor is copied into a fresh, aligned buffer (nothing aliases `bytes`).
 * @param label the file name used in error messages
 * @returns tensors in data order and the `__metadata__` ({} when absent)
 * @throws FormatError naming `label`
 */
export function decodeSafetensors(bytes: Uint8Array, label: string): { tensors: Map<string, Tensor>; metadata: Record<string, string> } {
  if (bytes.length < 8) throw new FormatError(label, `file is ${bytes.length} bytes, shorter than the 8-byte header length prefix`);
  const n = headerLength(bytes.subarray(0, 8), bytes.length, label);
  const { metadata, entries } = parseHeader(bytes.subarray(8, 8 + n), 8 + n, bytes.length - 8 - n, label);
  const tensors = new Map<string, Tensor>();
  for (const e of entries.values()) {
    const copy = new Uint8Array(e.byteLength); // not bytes.slice: on a Buffer that aliases (and is unaligned)
    copy.set(bytes.subarray(e.offset, e.offset + e.byteLength));
    tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: typedArrayOf(e.dtype, copy, e.byteLength / DTYPES[e.dtype].bytes) });
  }
  return { tensors, metadata };
}

