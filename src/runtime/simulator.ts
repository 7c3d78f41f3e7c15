/**
 * The simulator backend: runs an Executable with onnxruntime-node on the CPU. One session over the
 * prefill graph, whose sequence length is symbolic, serves prompts of any length (in chunks of at most
 * `prefillLen`, never padded) and single decode steps, so ORT holds one prepacked copy of the weights;
 * a HEF's large weights are memory-mapped from the file (Executable.mappedWeights), not copied into
 * JavaScript. Each context's KV cache is a buffer preallocated to the capacity (kv-cache.ts): a call
 * feeds the positions held as views and writes back only the graph's new rows. Only the logits rows
 * asked for are computed (`logit_positions`). Executables compiled before 0.2 (a static prefill chunk,
 * or graphs returning the whole cache as `present.*`) are refused with a hint to recompile.
 *
 * LoRA: graphs compiled with adapters have `lora.<linear>.*` inputs; each context names its adapter.
 * Base-model contexts run a session over the graph without its LoRA branches (src/compiler/lora-strip.ts:
 * bit-exact with zero adapter feeds, and as fast as an executable without adapters); contexts with an
 * adapter run a second session over the whole graph, built on first use, fed that adapter's tensors
 * (dequantized once per adapter and cached). Switching adapters is choosing another feed set: no
 * session is rebuilt. The second session holds its own prepacked copy of the weights (about their
 * size again), so memory grows once an adapter is first used.
 */
import * as ort from 'onnxruntime-node';
import type { ExecutionBackend, KvContext } from './backend.js';
import { CheckedSession, type SessionOptions } from '../engine/session.js';
import type onnxProto from 'onnx-proto';
import type { Tensor } from '../ir/tensor.js';
import type { Executable, GraphPart, KvLayout, KvSnapshot } from '../ir/executable.js';
import { INPUT_IDS, LOGITS, LOGIT_POSITIONS, LEGACY_PRESENT_KEY, kvNames } from '../compiler/io-contract.js';
import { KvCache } from './kv-cache.js';
import { withInitializers, decodeModel } from '../../formats/onnx.js';
import { readMappedWeights, verifyMappedWeights } from '../../formats/hef-executable.js';
import { kvLayoutInitializers } from '../compiler/kv-layout.js';
import { EdgeLLMError } from '../core/errors.js';
import { loraFeeds } from '../compiler/lora-feeds.js';
import { hasLoraInputs, withoutLora } from '../compiler/lora-strip.js';
import { splitW8MatMuls, weightReader } from './w8-exact.js';
import { ownGatherTables } from './gather-tables.js';

interface SimContext extends KvContext {
  readonly adapter: string | null;
  readonly cache: KvCache;
}

/** A context over a cache; its length is the cache's. */
function simContext(adapter: string | null, cache: KvCache): SimContext {
  return {
    adapter,
    cache,
    get length() {
      return cache.length;
    },
  };
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
  /**
   * how `exact` runs 8-bit linears: 'nibbles' (default: two 4-bit MatMulNBits on the codes' nibbles,
   * src/runtime/w8-exact.ts) or 'native' (8-bit MatMulNBits, whose CPU kernel dequantizes the whole
   * matrix every call); `fast` always runs them natively at accuracy level 4
   */
  w8?: 'nibbles' | 'native';
}

/** Sets `accuracy_level` on every MatMulNBits node of the graph (in place). */
function setAccuracyLevel(model: onnxProto.onnx.IModelProto, level: number): void {
  for (const n of model.graph?.node ?? []) {
    if (n.opType !== 'MatMulNBits') continue;
    n.attribute = [...(n.attribute ?? []).filter((a) => a.name !== 'accuracy_level'), { name: 'accuracy_level', type: 2, i: level }];
  }
}

/**
 * Refuses graphs of the earlier I/O contracts (src/compiler/io-contract.ts): a static prefill chunk,
 * or the whole cache returned as `present.*`.
 * @throws EdgeLLMError with a hint to recompile
 */
function checkContract(g: GraphPart): void {
  const ids = g.inputs.find((v) => v.name === INPUT_IDS);
  const legacy = typeof ids?.shape?.[1] !== 'string' || g.outputs.some((v) => v.name === LEGACY_PRESENT_KEY) || !g.outputs.some((v) => v.name === kvNames(0).newKey);
  if (legacy)
    throw new EdgeLLMError(`graph.prefill: compiled by an earlier edgellm (static prefill chunk or whole-cache KV outputs), which this runtime no longer runs; recompile the HAR: edgellm compile model.har -o model.hef`);
}

export class SimulatorBackend implements ExecutionBackend {
  get name(): string {
    return `simulator (onnxruntime-node, cpu, ${this.precision})`;
  }
  /** adapter name -> its `lora.*` feeds, built on first use */
  private readonly loraCache = new Map<string, Record<string, ort.Tensor>>();
  private selected: string | null = null;
  private disposed = false;
  /** the session over the whole graph with its LoRA branches, built on the first adapter context's call */
  private loraSession: Promise<CheckedSession> | null = null;
  private constructor(
    private readonly exe: Executable,
    /** the session base-model contexts run (the graph without LoRA branches) */
    private readonly baseSession: CheckedSession,
    /** builds the LoRA session; null when the graph has no LoRA inputs */
    private readonly buildLoraSession: (() => Promise<CheckedSession>) | null,
    /** how the 4-bit linears compute */
    readonly precision: ExecutionPrecision,
  ) {}

  /**
   * Builds the session(s) over the executable's weights (memory-mapped where the executable says so)
   * plus the KV8/KV16 parameters and K offsets its KV layout states (src/compiler/kv-layout.ts
   * kvLayoutInitializers: the layout is their one source).
   * @throws EdgeLLMError when onnxruntime rejects a graph or the executable was compiled by an earlier
   *   edgellm; FormatError when a graph needs a weight the executable lacks
   */
  static async load(exe: Executable, opts: SimulatorOptions = {}): Promise<SimulatorBackend> {
    checkContract(exe.prefill);
    const weights = new Map([...exe.weights, ...kvLayoutInitializers(exe.kvLayout)]);
    const mapped = exe.mappedWeights;
    const level = (opts.precision ?? 'exact') === 'fast' ? 4 : 0;
    const exactW8 = level === 0 && (opts.w8 ?? 'nibbles') === 'nibbles';
    const build = async (graph: onnxProto.onnx.IModelProto, label: string): Promise<CheckedSession> => {
      setAccuracyLevel(graph, level);
      // exact W8: two 4-bit MatMulNBits on the codes' nibbles (w8-exact.ts), not the slow 8-bit kernel
      const split = exactW8 ? splitW8MatMuls(graph, weightReader(weights, mapped)) : { model: graph, weights: new Map<string, Tensor>() };
      const proto = split.model;
      if (mapped) {
        // the nibble tables are mapped too (written beside the mapping), not inlined in the ModelProto;
        // a tied embedding's gather reads its own view of lm_head's table (gather-tables.ts)
        const own = ownGatherTables(proto, mapped);
        const elsewhere = new Set([...mapped.tensors.keys(), ...split.weights.keys(), ...own.aliases.keys()]);
        const s = await CheckedSession.createMapped(withInitializers(own.model, weights, label, elsewhere), mapped, label, opts, split.weights, own.aliases);
        if (s) return s;
        await verifyMappedWeights(mapped);
        for (const [n, t] of readMappedWeights(mapped)) weights.set(n, t); // cannot map: read them once
      }
      return CheckedSession.create(withInitializers(proto, new Map([...weights, ...split.weights]), label), label, opts);
    };
    const graph = decodeModel(exe.prefill.onnx, 'graph.prefill');
    const base = await build(withoutLora(graph), 'graph.prefill');
    const lora = hasLoraInputs(graph) ? () => build(decodeModel(exe.prefill.onnx, 'graph.prefill'), 'graph.prefill (LoRA)') : null;
    return new SimulatorBackend(exe, base, lora, opts.precision ?? 'exact');
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

  /** The `lora.*` feeds of adapter `name` for the LoRA session, cached. */
  private loraFeedsFor(name: string): Record<string, ort.Tensor> {
    let f = this.loraCache.get(name);
    if (!f) {
      const a = this.exe.adapters!.find((x) => x.name === name)!;
      f = {};
      for (const [n, v] of loraFeeds(this.exe, a, this.exe.prefill.inputs)) f[n] = new ort.Tensor(v.type, v.data, v.dims);
      this.loraCache.set(name, f);
    }
    return f;
  }

  newContext(opts: { adapter?: string | null } = {}): KvContext {
    const adapter = opts.adapter === undefined ? this.selected : opts.adapter;
    this.checkAdapter(adapter);
    return simContext(adapter, KvCache.empty(this.exe.kvLayout));
  }

  async forward(context: KvContext, tokens: number[], opts: { lastOnly?: boolean } = {}): Promise<Float32Array> {
    const ctx = context as SimContext;
    if (this.disposed) throw new EdgeLLMError('forward: the backend has been disposed');
    if (tokens.length === 0) throw new EdgeLLMError('forward: no tokens');
    const V = this.vocabSize;
    for (const t of tokens) if (!Number.isInteger(t) || t < 0 || t >= V) throw new EdgeLLMError(`forward: token id ${t} is outside the vocabulary [0, ${V})`);
    if (ctx.length + tokens.length > this.maxContext)
      throw new EdgeLLMError(`context full: ${ctx.length} + ${tokens.length} tokens exceed the KV-cache capacity of ${this.maxContext}`);
    if (tokens.length === 1) return this.step(ctx, tokens, [0]);
    const out = new Float32Array((opts.lastOnly ? 1 : tokens.length) * V);
    for (let i = 0; i < tokens.length; i += this.prefillLen) {
      const chunk = tokens.slice(i, i + this.prefillLen);
      // rows wanted from this chunk: all of them, or (lastOnly) the final one of the final chunk
      // (other chunks still need one row: the graph has no zero-row form)
      const logits = await this.step(ctx, chunk, opts.lastOnly ? [chunk.length - 1] : chunk.map((_, j) => j));
      if (!opts.lastOnly) out.set(logits, i * V);
      else if (i + chunk.length === tokens.length) out.set(logits);
    }
    return out;
  }

  /** O(1): the fork shares the cache buffer; whichever context writes first copies the positions it holds. */
  fork(context: KvContext): KvContext {
    const ctx = context as SimContext;
    return simContext(ctx.adapter, ctx.cache.fork());
  }

  truncate(context: KvContext, length: number): void {
    const ctx = context as SimContext;
    if (!Number.isInteger(length) || length < 0 || length > ctx.length)
      throw new EdgeLLMError(`truncate: length ${length} is not an integer in [0, ${ctx.length}]`);
    ctx.cache.truncate(length);
  }

  snapshot(context: KvContext): KvSnapshot {
    const ctx = context as SimContext;
    return { length: ctx.length, adapter: ctx.adapter, layers: ctx.cache.snapshot() };
  }

  restore(snap: KvSnapshot): KvContext {
    this.checkAdapter(snap.adapter);
    return simContext(snap.adapter, KvCache.restore(this.exe.kvLayout, snap));
  }

  /**
   * Runs one graph call on `tokens` after the context's cache and appends their K/V rows to it.
   * Returns the logits of the rows `rows` of the call, float32 [rows.length, vocab].
   */
  private async step(ctx: SimContext, tokens: number[], rows: number[]): Promise<Float32Array> {
    const adapter = ctx.adapter;
    if (adapter !== null && !this.buildLoraSession) throw new EdgeLLMError(`adapter '${adapter}': the executable's graphs have no LoRA inputs (recompile the HAR)`);
    const session = adapter === null ? this.baseSession : await (this.loraSession ??= this.buildLoraSession!());
    const feeds: Record<string, ort.Tensor> = {
      ...(adapter === null ? {} : this.loraFeedsFor(adapter)),
      [INPUT_IDS]: new ort.Tensor('int64', BigInt64Array.from(tokens, BigInt), [1, tokens.length]),
      [LOGIT_POSITIONS]: new ort.Tensor('int64', BigInt64Array.from(rows, BigInt), [rows.length]),
    };
    const L = this.exe.kvLayout.numLayers;
    for (let i = 0; i < L; i++) {
      const n = kvNames(i);
      [feeds[n.pastKey], feeds[n.pastValue]] = ctx.cache.past(i);
    }
    const res = await session.run(feeds);
    ctx.cache.append(
      Array.from({ length: L }, (_, i) => {
        const n = kvNames(i);
        type Rows = Uint8Array | Uint16Array | Float32Array; // the layer's KV dtype (uint8 KV8, uint16 KV16, float32)
        return [res[n.newKey].data as Rows, res[n.newValue].data as Rows] as const;
      }),
      tokens.length,
    );
    return res[LOGITS].data as Float32Array;
  }

  /** Releases the sessions; a second call does nothing. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.baseSession.release();
    await (await this.loraSession?.catch(() => null))?.release();
  }
}
