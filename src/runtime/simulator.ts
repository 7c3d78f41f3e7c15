/**
 * The simulator backend: runs an Executable with onnxruntime-node on the CPU. One session over the
 * prefill graph, whose sequence length is symbolic, serves prompts of any length (in chunks of at most
 * `prefillLen`, never padded) and single decode steps, so ORT holds one prepacked copy of the weights;
 * a HEF's large weights are memory-mapped from the file (Executable.mappedWeights), not copied into
 * JavaScript. Graphs with a static prefill chunk (HEFs of edgellm before 0.2) run as before: padded
 * chunks on the prefill session, one token at a time on a second, decode session. The KV cache lives
 * in ORT tensors between calls. Only the logits rows asked for are computed (`logit_positions`).
 *
 * LoRA: graphs compiled with adapters have `lora.<linear>.*` inputs; each context names its adapter
 * and every call feeds that adapter's tensors (dequantized once per adapter and cached), or zeros for
 * the base model. Switching adapters is choosing another feed set: no session is rebuilt.
 */
import * as ort from 'onnxruntime-node';
import type { ExecutionBackend, KvContext } from './backend.js';
import { CheckedSession, type SessionOptions } from '../engine/session.js';
import type onnxProto from 'onnx-proto';
import { kvSnapshotLayerBytes, type Executable, type GraphPart, type KvLayout, type KvSnapshot } from '../ir/executable.js';
import { INPUT_IDS, LOGITS, LOGIT_POSITIONS, kvNames } from '../compiler/io-contract.js';
import { withInitializers, decodeModel } from '../../formats/onnx.js';
import { readMappedWeights } from '../../formats/hef-executable.js';
import { kvLayoutInitializers } from '../compiler/kv-layout.js';
import { EdgeLLMError } from '../core/errors.js';
import { loraFeeds } from '../compiler/lora-feeds.js';

interface SimContext extends KvContext {
  length: number;
  adapter: string | null;
  /** per layer [key, value], each [1, kv_heads, length, head_dim] */
  kv: ort.Tensor[][];
}

/**
 * How the 4-bit linears compute (MatMulNBits `accuracy_level`):
 * - `exact`: level 0, float32 on the exactly dequantized weights, so with the graph's static A8/KV8
 *   QDQ points the simulator computes the scheme the device runs (level 1 computes the same values;
 *   on this machine it was not faster: lm_head 151936×1536 block 32, one token, 28 ms at level 0
 *   against 44 ms at level 1, /tmp probe, load average ~4);
 * - `fast`: level 4, int8 compute: A is requantized dynamically per block (relative error ~4e-3, not the
 *   static A8 scheme), 2.5-4× faster at one token (DESIGN.md, engine facts).
 */
export type ExecutionPrecision = 'exact' | 'fast';

export interface SimulatorOptions extends SessionOptions {
  /** default 'exact' */
  precision?: ExecutionPrecision;
}

/** Sets `accuracy_level` on every MatMulNBits node of the graph (in place). */
function setAccuracyLevel(model: onnxProto.onnx.IModelProto, level: number): void {
  for (const n of model.graph?.node ?? []) {
    if (n.opType !== 'MatMulNBits') continue;
    n.attribute = [...(n.attribute ?? []).filter((a) => a.name !== 'accuracy_level'), { name: 'accuracy_level', type: 2, i: level }];
  }
}

/** True when the graph's input_ids take any number of tokens. */
function isDynamic(g: GraphPart): boolean {
  const ids = g.inputs.find((v) => v.name === INPUT_IDS);
  return typeof ids?.shape?.[1] === 'string';
}

export class SimulatorBackend implements ExecutionBackend {
  get name(): string {
    return `simulator (onnxruntime-node, cpu, ${this.precision})`;
  }
  /** adapter name ('' = none) -> its `lora.*` feeds, built on first use */
  private readonly loraCache = new Map<string, Record<string, ort.Tensor>>();
  private selected: string | null = null;
  /** whether the graphs take `logit_positions` (both do, or, compiled before 0.2, neither) */
  private readonly logitPositions: boolean;
  private disposed = false;
  private readonly dynamic: boolean;
  private constructor(
    private readonly exe: Executable,
    private readonly prefill: CheckedSession,
    /** the decode session of a static-chunk executable; null: the prefill session decodes too */
    private readonly decode: CheckedSession | null,
    /** how the 4-bit linears compute */
    readonly precision: ExecutionPrecision,
  ) {
    this.dynamic = isDynamic(exe.prefill);
    this.logitPositions = prefill.inputNames.includes(LOGIT_POSITIONS);
  }

  /**
   * Builds the session(s) over the executable's weights (memory-mapped where the executable says so)
   * plus the KV8 parameters and K offsets its KV layout states (src/compiler/kv-layout.ts
   * kvLayoutInitializers: the layout is their one source).
   * @throws EdgeLLMError when onnxruntime rejects a graph; FormatError when a graph needs a weight the executable lacks
   */
  static async load(exe: Executable, opts: SimulatorOptions = {}): Promise<SimulatorBackend> {
    const weights = new Map([...exe.weights, ...kvLayoutInitializers(exe.kvLayout)]);
    const mapped = exe.mappedWeights;
    const level = (opts.precision ?? 'exact') === 'fast' ? 4 : 0;
    const build = async (bytes: Uint8Array, label: string): Promise<CheckedSession> => {
      const proto = decodeModel(bytes, label);
      setAccuracyLevel(proto, level);
      if (mapped) {
        const s = await CheckedSession.createMapped(withInitializers(proto, weights, label, new Set(mapped.tensors.keys())), mapped, label, opts);
        if (s) return s;
        for (const [n, t] of readMappedWeights(mapped)) weights.set(n, t); // cannot map: read them once
      }
      return CheckedSession.create(withInitializers(proto, weights, label), label, opts);
    };
    const prefill = await build(exe.prefill.onnx, 'graph.prefill');
    const decode = isDynamic(exe.prefill) ? null : await build(exe.decode.onnx, 'graph.decode');
    return new SimulatorBackend(exe, prefill, decode, opts.precision ?? 'exact');
  }

  get prefillLen(): number {
    return this.exe.prefill.seqLen;
  }
  get maxContext(): number {
    return this.exe.kvLayout.maxContext;
  }
  get vocabSize(): number {
    return this.exe.config.vocabSize;
  }

  get kvLayout(): KvLayout {
    return this.exe.kvLayout;
  }

  get adapters(): readonly string[] {
    return (this.exe.adapters ?? []).map((a) => a.name);
  }

  selectAdapter(name: string | null): void {
    this.checkAdapter(name);
    this.selected = name;
  }

  private checkAdapter(name: string | null): void {
    if (name !== null && !this.adapters.includes(name))
      throw new EdgeLLMError(`no LoRA adapter '${name}' in this executable (it has: ${this.adapters.length ? this.adapters.join(', ') : 'none'})`);
  }

  /** The `lora.*` feeds of adapter `name` (null: zeros, the base model), cached. */
  loraFeedsFor(name: string | null): Record<string, ort.Tensor> {
    let f = this.loraCache.get(name ?? '');
    if (!f) {
      const a = name === null ? null : this.exe.adapters!.find((x) => x.name === name)!;
      f = {};
      for (const [n, v] of loraFeeds(this.exe, a, this.exe.prefill.inputs)) f[n] = new ort.Tensor(v.type, v.data, v.dims);
      this.loraCache.set(name ?? '', f);
    }
    return f;
  }

  newContext(opts: { adapter?: string | null } = {}): KvContext {
    const adapter = opts.adapter === undefined ? this.selected : opts.adapter;
    this.checkAdapter(adapter);
    const l = this.exe.kvLayout;
    const empty = () =>
      l.dtype === 'uint8'
        ? new ort.Tensor('uint8', new Uint8Array(0), [1, l.numKvHeads, 0, l.headDim])
        : new ort.Tensor('float32', new Float32Array(0), [1, l.numKvHeads, 0, l.headDim]);
    const ctx: SimContext = { length: 0, adapter, kv: Array.from({ length: l.numLayers }, () => [empty(), empty()]) };
    return ctx;
  }

  async forward(context: KvContext, tokens: number[], opts: { lastOnly?: boolean } = {}): Promise<Float32Array> {
    const ctx = context as SimContext;
    if (this.disposed) throw new EdgeLLMError('forward: the backend has been disposed');
    if (tokens.length === 0) throw new EdgeLLMError('forward: no tokens');
    const V = this.vocabSize;
    for (const t of tokens) if (!Number.isInteger(t) || t < 0 || t >= V) throw new EdgeLLMError(`forward: token id ${t} is outside the vocabulary [0, ${V})`);
    if (ctx.length + tokens.length > this.maxContext)
      throw new EdgeLLMError(`context full: ${ctx.length} + ${tokens.length} tokens exceed the KV-cache capacity of ${this.maxContext}`);
    if (tokens.length === 1) return this.step(this.decode ?? this.prefill, ctx, tokens, 1, [0]);
    const rows = opts.lastOnly ? 1 : tokens.length;
    const out = new Float32Array(rows * V);
    for (let i = 0; i < tokens.length; i += this.prefillLen) {
      const chunk = tokens.slice(i, i + this.prefillLen);
      const last = i + chunk.length === tokens.length;
      // rows wanted from this chunk: all of them, or (lastOnly) the final one of the final chunk
      // (other chunks still need one row: the graph has no zero-row form)
      const want = opts.lastOnly ? [chunk.length - 1] : chunk.map((_, j) => j);
      if (this.dynamic) {
        const logits = await this.step(this.prefill, ctx, chunk, chunk.length, want);
        if (!opts.lastOnly) out.set(logits, i * V);
        else if (last) out.set(logits);
        continue;
      }
      // static chunk: a padded chunk must not run past the RoPE tables (positions < maxContext), so
      // near the end of the context the remaining tokens go through the decode graph one at a time
      if (ctx.length + this.prefillLen > this.maxContext) {
        for (let j = i; j < tokens.length; j++) {
          const row = await this.step(this.decode!, ctx, [tokens[j]], 1, [0]);
          if (!opts.lastOnly) out.set(row, j * V);
          else if (j === tokens.length - 1) out.set(row);
        }
        break;
      }
      const logits = await this.step(this.prefill, ctx, chunk, this.prefillLen, want); // no logit_positions: every padded row
      if (!opts.lastOnly) out.set(logits.subarray(0, chunk.length * V), i * V);
      else if (last) out.set(logits.subarray((chunk.length - 1) * V, chunk.length * V));
    }
    return out;
  }

  /** O(1): cache tensors are never written in place (each call makes new ones), so sharing is safe. */
  fork(context: KvContext): KvContext {
    const ctx = context as SimContext;
    const copy: SimContext = { length: ctx.length, adapter: ctx.adapter, kv: ctx.kv.map(([k, v]) => [k, v]) };
    return copy;
  }

  truncate(context: KvContext, length: number): void {
    const ctx = context as SimContext;
    if (!Number.isInteger(length) || length < 0 || length > ctx.length)
      throw new EdgeLLMError(`truncate: length ${length} is not an integer in [0, ${ctx.length}]`);
    if (length === ctx.length) return;
    ctx.kv = ctx.kv.map(([k, v]) => [trimContext(k, length), trimContext(v, length)]);
    ctx.length = length;
  }

  snapshot(context: KvContext): KvSnapshot {
    const ctx = context as SimContext;
    const bytes = (t: ort.Tensor) => {
      const d = t.data as Float32Array | Uint8Array;
      return new Uint8Array(d.buffer.slice(d.byteOffset, d.byteOffset + d.byteLength));
    };
    return { length: ctx.length, adapter: ctx.adapter, layers: ctx.kv.map(([k, v]) => ({ key: bytes(k), value: bytes(v) })) };
  }

  restore(snap: KvSnapshot): KvContext {
    this.checkAdapter(snap.adapter);
    const l = this.exe.kvLayout;
    if (!Number.isInteger(snap.length) || snap.length < 0 || snap.length > this.maxContext)
      throw new EdgeLLMError(`restore: ${snap.length} tokens do not fit the KV-cache capacity of ${this.maxContext}`);
    if (snap.layers.length !== l.numLayers) throw new EdgeLLMError(`restore: ${snap.layers.length} layers, the executable has ${l.numLayers}`);
    const want = kvSnapshotLayerBytes(l, snap.length);
    const dims = [1, l.numKvHeads, snap.length, l.headDim];
    const tensor = (b: Uint8Array, what: string) => {
      if (b.byteLength !== want) throw new EdgeLLMError(`restore: ${what} holds ${b.byteLength} bytes, the layout needs ${want}`);
      const copy = b.slice();
      return l.dtype === 'uint8' ? new ort.Tensor('uint8', copy, dims) : new ort.Tensor('float32', new Float32Array(copy.buffer, 0, want / 4), dims);
    };
    const ctx: SimContext = {
      length: snap.length,
      adapter: snap.adapter,
      kv: snap.layers.map((x, i) => [tensor(x.key, `layer ${i} K`), tensor(x.value, `layer ${i} V`)]),
    };
    return ctx;
  }

  /**
   * Runs one graph call on `tokens` padded to `seqLen` (no padding on a dynamic graph); keeps only the
   * real tokens' KV. Returns the logits of the rows `rows` (all padded rows on a graph without
   * `logit_positions`, of which the caller reads the first ones).
   */
  private async step(session: CheckedSession, ctx: SimContext, tokens: number[], seqLen: number, rows: number[]): Promise<Float32Array> {
    const ids = new BigInt64Array(seqLen);
    tokens.forEach((t, i) => (ids[i] = BigInt(t)));
    const feeds: Record<string, ort.Tensor> = { ...this.loraFeedsFor(ctx.adapter), [INPUT_IDS]: new ort.Tensor('int64', ids, [1, seqLen]) };
    if (this.logitPositions) feeds[LOGIT_POSITIONS] = new ort.Tensor('int64', BigInt64Array.from(rows, BigInt), [rows.length]);
    ctx.kv.forEach(([k, v], i) => {
      const n = kvNames(i);
      feeds[n.pastKey] = k;
      feeds[n.pastValue] = v;
    });
    const res = await session.run(feeds);
    const keep = ctx.length + tokens.length;
    ctx.kv = ctx.kv.map((_, i) => {
      const n = kvNames(i);
      return [trimContext(res[n.presentKey], keep), trimContext(res[n.presentValue], keep)];
    });
    ctx.length = keep;
    return res[LOGITS].data as Float32Array;
  }

  /** Releases the session(s); a second call does nothing. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.prefill.release();
    await this.decode?.release();
  }
}

/** Keeps the first `keep` positions (axis 2) of a [1, heads, T, head_dim] cache tensor. */
function trimContext(t: ort.Tensor, keep: number): ort.Tensor {
  const [b, h, T, d] = t.dims;
  if (T === keep) return t;
  const src = t.data as Float32Array | Uint8Array;
  const dst = new (src.constructor as Float32ArrayConstructor | Uint8ArrayConstructor)(b * h * keep * d);
  for (let i = 0; i < b * h; i++) dst.set(src.subarray(i * T * d, i * T * d + keep * d), i * keep * d);
  return new ort.Tensor(t.type as 'float32' | 'uint8', dst, [b, h, keep, d]);
}
