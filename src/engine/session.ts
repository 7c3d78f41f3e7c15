/**
 * A checked wrapper over an onnxruntime-node InferenceSession: feeds are validated against
 * `session.inputNames` and every missing or unexpected name is reported at once.
 *
 * ONNX models of 2 GB or more cannot be parsed from one protobuf buffer (ORT: "Model data size
 * exceeds maximum supported size (2GB)"), which a rotated 1.5B model's graph (fp32 embeddings)
 * reaches. Models from {@link EXTERNAL_DATA_BYTES} up are therefore loaded through a temporary directory:
 * every initializer of 64 KiB or more goes to `weights.bin` (4 KiB-aligned) as ONNX external data
 * (onnx/docs/ExternalData.md), the rest of the ModelProto to `model.onnx`, and ORT loads the model
 * by path. The directory is removed once the session exists (ORT has read or mapped the data).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { EdgeLLMError, FormatError } from '../core/errors.js';
import { verifyMappedWeights } from '../../formats/hef-executable.js';
import type onnxProto from 'onnx-proto';
import { decodeModel, onnx, withExternalInitializers } from '../../formats/onnx.js';
import type { MappedWeights } from '../ir/executable.js';
import type { Tensor } from '../ir/tensor.js';
import { writeFully } from '../core/atomic.js';
import { alignUp } from '../core/align.js';

/**
 * ModelProto size (bytes) from which initializers are passed to ORT as external data: only where
 * it is needed (ORT's limit is 2 GB; the margin is for the graph itself). Measured on a
 * Qwen2-1.5B-shaped HEF: external data for both sessions cuts `edgellm bench`'s peak RSS from 10.2
 * to 7.1 GiB and its load time from 29 to 13 s, but decodes 9% and prefills 7% slower
 * (scripts/bench-external-data.ts: same process, alternating pairs), so it stays off below the limit.
 */
export const EXTERNAL_DATA_BYTES = 1.75 * 2 ** 30;
const EXTERNAL_MIN_TENSOR = 64 * 1024;
const ALIGN = 4096;

/** Bytes of the initializers' raw data: the bulk of a ModelProto's encoded size. */
function initializerBytes(m: onnxProto.onnx.IModelProto): number {
  return (m.graph?.initializer ?? []).reduce((n, t) => n + (t.rawData?.byteLength ?? 0), 0);
}

/** Writes `model` as model.onnx + weights.bin (external data) in a new temporary directory; `model` is not modified. */
function writeWithExternalData(model: onnxProto.onnx.IModelProto): { dir: string; model: string } {
  const m = { ...model, graph: { ...model.graph, initializer: (model.graph?.initializer ?? []).map((t) => ({ ...t })) } };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'edgellm-ort-'));
  try {
    writeFiles(m, dir);
  } catch (e) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return { dir, model: path.join(dir, 'model.onnx') };
}

function writeFiles(m: onnxProto.onnx.IModelProto, dir: string): void {
  const fd = fs.openSync(path.join(dir, 'weights.bin'), 'w');
  try {
    let offset = 0;
    for (const t of m.graph?.initializer ?? []) {
      const raw = t.rawData;
      if (!raw || raw.byteLength < EXTERNAL_MIN_TENSOR) continue;
      const start = alignUp(offset, ALIGN);
      writeFully(fd, raw, start);
      offset = start + raw.byteLength;
      t.rawData = new Uint8Array(0);
      t.dataLocation = onnx.TensorProto.DataLocation.EXTERNAL;
      t.externalData = [
        { key: 'location', value: 'weights.bin' },
        { key: 'offset', value: String(start) },
        { key: 'length', value: String(raw.byteLength) },
      ];
    }
  } finally {
    fs.closeSync(fd);
  }
  fs.writeFileSync(path.join(dir, 'model.onnx'), onnx.ModelProto.encode(onnx.ModelProto.create(m)).finish());
}

export interface SessionOptions {
  /**
   * intra-op threads (default {@link defaultThreads}: one per CPU the process may use). ORT's own
   * default (0) counts physical cores and took 1 thread on this 2-vCPU VM: TTFT 1,746 against
   * 1,124 ms and decode 9.1 against 12.5 tokens/s with 2 threads (Qwen2-1.5B-shaped HEF, exact).
   */
  threads?: number;
  /**
   * {@link CheckedSession.createMapped}: keep mapped weights resident (default true): map a copy on
   * RAM-backed tmpfs (/dev/shm), which the kernel cannot page out without swap, instead of the file
   * itself (llama.cpp's --mlock, in effect). Where the kernel reclaims mapped file pages (DAMON's
   * pageout scheme on this VM) every exact decode step refaults the 4-bit weights: 2.4 against
   * 6.5 tokens/s on the Qwen2-1.5B-shaped HEF, same RSS (docs/evaluation.md). Falls back to mapping
   * the file when /dev/shm is missing or short of space.
   */
  resident?: boolean;
  /** ModelProto size from which initializers go to ORT as external data (default {@link EXTERNAL_DATA_BYTES}) */
  externalDataBytes?: number;
}

/** Intra-op threads when none are given: os.availableParallelism() (CPUs this process may use). */
export function defaultThreads(): number {
  return os.availableParallelism();
}

function sessionOptions(opts: SessionOptions): ort.InferenceSession.SessionOptions {
  return { graphOptimizationLevel: 'all', intraOpNumThreads: opts.threads ?? defaultThreads(), executionMode: 'sequential', logSeverityLevel: 3 };
}

/** RAM-backed filesystem for {@link residentCopy}. */
const SHM = '/dev/shm';

/**
 * A new temporary directory on tmpfs holding `weights.bin`: the mapped tensors' bytes at the same
 * offsets as in the file (a sparse file: only the tensors take memory), copied through a 16 MiB
 * buffer. With a deferred check pending (`mapped.unverified`) the whole checked range is copied, so
 * the check can hash the copy (the bytes ORT maps) instead of reading the file again. Stale
 * directories of dead processes (a crash between creating and removing one) are removed first. Null
 * when there is no tmpfs or its free space is under twice the bytes to copy.
 * @throws FormatError when the file ends inside the weights (nothing is left on tmpfs)
 */
function residentCopy(mapped: MappedWeights): string | null {
  const u = mapped.unverified;
  const ranges = u ? [{ offset: u.offset, byteLength: u.length }] : [...mapped.tensors.values()];
  let need = 0;
  for (const t of ranges) need += t.byteLength;
  try {
    const st = fs.statfsSync(SHM);
    if (st.bavail * st.bsize < 2 * need) return null;
  } catch {
    return null;
  }
  removeStaleResidentCopies();
  let dir: string | undefined;
  try {
    dir = fs.mkdtempSync(path.join(SHM, `.edgellm-ort-${process.pid}-`));
    const src = fs.openSync(mapped.file, 'r');
    const dst = fs.openSync(path.join(dir, 'weights.bin'), 'w');
    try {
      const buf = Buffer.allocUnsafe(1 << 24);
      for (const t of ranges)
        for (let done = 0; done < t.byteLength; ) {
          const n = fs.readSync(src, buf, 0, Math.min(buf.length, t.byteLength - done), t.offset + done);
          if (n === 0) throw new FormatError(mapped.file, `truncated: the file ends inside the weights (byte ${t.offset + done})`);
          writeFully(dst, buf.subarray(0, n), t.offset + done);
          done += n;
        }
    } finally {
      fs.closeSync(src);
      fs.closeSync(dst);
    }
    return dir;
  } catch (e) {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    if (e instanceof FormatError) throw e;
    return null;
  }
}

/**
 * Writes `tensors` to `file` at 4 KiB-aligned offsets (ORT maps external data only there) and returns
 * their external-data references.
 */
function writeExtra(file: string, tensors: ReadonlyMap<string, Tensor>): MappedWeights['tensors'] {
  const refs: MappedWeights['tensors'] = new Map();
  const fd = fs.openSync(file, 'w');
  try {
    let at = 0;
    for (const [name, t] of tensors) {
      const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
      writeFully(fd, bytes, at);
      refs.set(name, { dtype: t.dtype, shape: [...t.shape], offset: at, byteLength: bytes.byteLength });
      at = alignUp(at + bytes.byteLength, 4096);
    }
  } finally {
    fs.closeSync(fd);
  }
  return refs;
}

/** Removes /dev/shm/.edgellm-ort-<pid>-* directories whose process no longer runs. */
function removeStaleResidentCopies(): void {
  let names: string[];
  try {
    names = fs.readdirSync(SHM);
  } catch {
    return;
  }
  for (const n of names) {
    const m = /^\.edgellm-ort-(\d+)-/.exec(n);
    if (!m || Number(m[1]) === process.pid) continue;
    try {
      process.kill(Number(m[1]), 0);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ESRCH') fs.rmSync(path.join(SHM, n), { recursive: true, force: true });
    }
  }
}

/**
 * A new temporary directory holding `weights.bin`, a hard link to `file`: in the system temporary
 * directory, or beside `file` when that is on another filesystem. Null when neither works.
 */
function linkedDir(file: string): string | null {
  for (const parent of [os.tmpdir(), path.dirname(path.resolve(file))]) {
    let dir: string | undefined;
    try {
      dir = fs.mkdtempSync(path.join(parent, '.edgellm-ort-'));
      fs.linkSync(file, path.join(dir, 'weights.bin'));
      return dir;
    } catch {
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  return null;
}

export class CheckedSession {
  private constructor(
    private readonly session: ort.InferenceSession,
    readonly label: string,
  ) {}

  /**
   * Creates a session from a ModelProto (with initializers attached), as bytes or as the message;
   * from {@link EXTERNAL_DATA_BYTES} up through a temporary directory with external data. Pass the
   * message for graphs that may be large: encoding one of 2 GB or more and decoding it again is
   * what protobuf cannot do.
   * @throws EdgeLLMError naming `label` when onnxruntime rejects the graph; FormatError for bytes
   *   that are not a ModelProto
   */
  static async create(model: Uint8Array | onnxProto.onnx.IModelProto, label: string, opts: SessionOptions = {}): Promise<CheckedSession> {
    const options = sessionOptions(opts);
    const limit = opts.externalDataBytes ?? EXTERNAL_DATA_BYTES;
    let external: { dir: string; model: string } | null = null;
    let bytes: Uint8Array | null = null;
    if (model instanceof Uint8Array) {
      if (model.byteLength >= limit) external = writeWithExternalData(decodeModel(model, label));
      else bytes = model;
    } else if (initializerBytes(model) >= limit) external = writeWithExternalData(model);
    else bytes = onnx.ModelProto.encode(onnx.ModelProto.create(model)).finish();
    try {
      const s = external ? await ort.InferenceSession.create(external.model, options) : await ort.InferenceSession.create(bytes!, options);
      return new CheckedSession(s, label);
    } catch (e) {
      throw new EdgeLLMError(`${label}: onnxruntime could not load the graph: ${(e as Error).message.split('\n')[0]}`, { cause: e });
    } finally {
      if (external) fs.rmSync(external.dir, { recursive: true, force: true });
    }
  }

  /**
   * Creates a session whose large initializers are memory-mapped by ORT (external data at 4 KiB-aligned
   * offsets, loaded by path): JavaScript holds none of their bytes, and what ORT prepacks it copies
   * once, then lets the mapping go. With `opts.resident` (default) the mapping is of a tmpfs copy
   * (see {@link SessionOptions.resident}), else of the file itself. ORT refuses external data outside
   * the model file's directory and resolves symbolic links, so the file is hard-linked into a
   * temporary directory beside the model file (the system temporary directory first; beside the
   * file itself when that is another filesystem); the directory is removed once the session exists.
   * @param model the graph with every initializer but the mapped ones (and `extra`) attached
   * @param extra initializers built at load (e.g. src/runtime/w8-exact.ts's nibble tables): written
   *   once to a file beside the mapping (tmpfs with `resident`) and mapped like the others, so neither
   *   the ModelProto nor JavaScript keeps their bytes
   * @param aliases further initializers over bytes already in the mapping (name -> offset, length,
   *   dtype and shape; e.g. src/runtime/gather-tables.ts's own view of a tied embedding table): mapped
   *   on their own by ORT, copied once
   * @returns null when no hard link can be made (another filesystem and a read-only directory): the
   *   caller then loads the weights into memory
   * A deferred sha256 check of the weights (`mapped.unverified`) is done here, on a worker thread
   * while onnxruntime creates the session (its prepacking keeps one core busy; Qwen2-1.5B-shaped HEF:
   * the ~0.65 s of hashing 1 GB no longer adds to the load): over the resident copy, else over the
   * file. The session is released and the error thrown when it fails, before any call can run.
   * @throws EdgeLLMError naming `label` when onnxruntime rejects the graph; FormatError naming the
   *   file when the deferred check fails
   */
  static async createMapped(
    model: onnxProto.onnx.IModelProto,
    mapped: MappedWeights,
    label: string,
    opts: SessionOptions = {},
    extra?: ReadonlyMap<string, Tensor>,
    aliases?: MappedWeights['tensors'],
  ): Promise<CheckedSession | null> {
    const dir = (opts.resident ?? true ? residentCopy(mapped) : null) ?? linkedDir(mapped.file);
    if (!dir) return null;
    // the deferred check hashes the weights ORT maps, on another thread; its outcome is awaited below
    const checked = verifyMappedWeights(mapped, path.join(dir, 'weights.bin')).then(
      () => null,
      (e: unknown) => e,
    );
    try {
      let m = withExternalInitializers(model, aliases?.size ? new Map([...mapped.tensors, ...aliases]) : mapped.tensors, 'weights.bin');
      if (extra?.size) m = withExternalInitializers(m, writeExtra(path.join(dir, 'extra.bin'), extra), 'extra.bin');
      const file = path.join(dir, 'model.onnx');
      fs.writeFileSync(file, onnx.ModelProto.encode(onnx.ModelProto.create(m)).finish());
      let session: ort.InferenceSession;
      try {
        session = await ort.InferenceSession.create(file, sessionOptions(opts));
      } catch (e) {
        throw new EdgeLLMError(`${label}: onnxruntime could not load the graph: ${(e as Error).message.split('\n')[0]}`, { cause: e });
      }
      const failed = await checked;
      if (failed) {
        await session.release();
        throw failed;
      }
      return new CheckedSession(session, label);
    } finally {
      await checked; // the worker has let go of the copy before it is removed
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }

  get inputNames(): readonly string[] {
    return this.session.inputNames;
  }
  get outputNames(): readonly string[] {
    return this.session.outputNames;
  }

  /**
   * Runs with feeds checked against the graph's inputs.
   * @throws EdgeLLMError naming every missing and unexpected feed
   */
  async run(feeds: Record<string, ort.Tensor>, fetches?: string[]): Promise<Record<string, ort.Tensor>> {
    const missing = this.session.inputNames.filter((n) => !(n in feeds));
    const extra = Object.keys(feeds).filter((n) => !this.session.inputNames.includes(n));
    if (missing.length || extra.length)
      throw new EdgeLLMError(
        `${this.label}: ${missing.length ? `missing inputs: ${missing.join(', ')}` : ''}${missing.length && extra.length ? '; ' : ''}${extra.length ? `unexpected inputs: ${extra.join(', ')}` : ''}`,
      );
    return fetches ? this.session.run(feeds, fetches) : this.session.run(feeds);
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
