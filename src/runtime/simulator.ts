/**
 * The simulator backend: runs an Executable's prefill and decode graphs with onnxruntime-node on
 * the CPU. Both sessions are built from the executable's single weight store (ORT keeps its own
 * prepacked copy per session). The KV cache lives in ORT tensors between calls.
 *
 * LoRA: graphs compiled with adapters have `lora.<linear>.*` inputs; each context names its adapter
 * and every call feeds that adapter's tensors (dequantized once per adapter and cached), or zeros for
 * the base model. Switching adapters is choosing another feed set: no session is rebuilt.
 */
import * as ort from 'onnxruntime-node';
import type { ExecutionBackend, KvContext } from './backend.js';
import { CheckedSession, type SessionOptions } from '../engine/session.js';
import { kvSnapshotLayerBytes, type Executable, type KvLayout, type KvSnapshot } from '../ir/executable.js';
import { INPUT_IDS, LOGITS, kvNames } from '../compiler/io-contract.js';
import { withInitializers, decodeModel } from '../../formats/onnx.js';
import { kvLayoutInitializers } from '../compiler/kv-layout.js';
import { EdgeLLMError } from '../core/errors.js';
import { loraFeeds } from '../compiler/lora-feeds.js';

interface SimContext extends KvContext {
  length: number;
  adapter: string | null;
  /** per layer [key, value], each [1, kv_heads, length, head_dim] */
  kv: ort.Tensor[][];
}

export class SimulatorBackend implements ExecutionBackend {
  readonly name = 'simulator (onnxruntime-node, cpu)';
  /** adapter name ('' = none) -> its `lora.*` feeds, built on first use */
  private readonly loraCache = new Map<string, Record<string, ort.Tensor>>();
  private selected: string | null = null;
  private disposed = false;
  private constructor(
    private readonly exe: Executable,
    private readonly prefill: CheckedSession,
    private readonly decode: CheckedSession,
  ) {}

  /**
   * Builds both sessions over the executable's weights plus the KV8 parameters and K offsets its KV
   * layout states (src/compiler/kv-layout.ts kvLayoutInitializers: the layout is their one source).
   * @throws EdgeLLMError when onnxruntime rejects a graph; FormatError when a graph needs a weight the executable lacks
   */
  static async load(exe: Executable, opts: SessionOptions = {}): Promise<SimulatorBackend> {
    const weights = new Map([...exe.weights, ...kvLayoutInitializers(exe.kvLayout)]);
    const build = (bytes: Uint8Array, label: string) => CheckedSession.create(withInitializers(decodeModel(bytes, label), weights, label), label, opts);
    const prefill = await build(exe.prefill.onnx, 'graph.prefill');
    const decode = await build(exe.decode.onnx, 'graph.decode');
    return new SimulatorBackend(exe, prefill, decode);
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
    if (tokens.length === 1) return this.step(this.decode, ctx, tokens, 1);
    const rows = opts.lastOnly ? 1 : tokens.length;
    const out = new Float32Array(rows * V);
    for (let i = 0; i < tokens.length; i += this.prefillLen) {
      const chunk = tokens.slice(i, i + this.prefillLen);
      // A padded chunk must not run past the RoPE tables (positions < maxContext): near the end of
      // the context, the remaining tokens go through the decode graph one at a time.
      if (ctx.length + this.prefillLen > this.maxContext) {
        for (let j = i; j < tokens.length; j++) {
          const row = await this.step(this.decode, ctx, [tokens[j]], 1);
          if (!opts.lastOnly) out.set(row, j * V);
          else if (j === tokens.length - 1) out.set(row);
        }
        break;
      }
      const logits = await this.step(this.prefill, ctx, chunk, this.prefillLen);
      if (opts.lastOnly) {
        if (i + chunk.length === tokens.length) out.set(logits.subarray((chunk.length - 1) * V, chunk.length * V));
      } else out.set(logits.subarray(0, chunk.length * V), i * V);
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

  /** Runs one graph call on `tokens` padded to `seqLen`; keeps only the real tokens' KV. */
  private async step(session: CheckedSession, ctx: SimContext, tokens: number[], seqLen: number): Promise<Float32Array> {
    const ids = new BigInt64Array(seqLen);
    tokens.forEach((t, i) => (ids[i] = BigInt(t)));
    const feeds: Record<string, ort.Tensor> = { ...this.loraFeedsFor(ctx.adapter), [INPUT_IDS]: new ort.Tensor('int64', ids, [1, seqLen]) };
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

  /** Releases both sessions; a second call does nothing. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.prefill.release();
    await this.decode.release();
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
