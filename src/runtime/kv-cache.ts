/**
 * The simulator's KV cache of one context: every layer's K and V in one JavaScript buffer
 * preallocated to the context capacity, sequence-major ([position, kv_head, head_dim] per layer, as
 * the graphs read it: src/compiler/io-contract.ts), so the first `length` positions of a layer are one
 * contiguous prefix. A call feeds those prefixes as `past_key_values` views (no copy) and writes the
 * graph's `new_key_values` rows after them: no step copies or trims the cache.
 *
 * {@link KvCache.fork} is copy-on-write: the fork shares the buffer until either side writes, and
 * the writer then copies only the positions it holds (not the capacity).
 *
 * Memory: numLayers · 2 · maxContext · numKvHeads · headDim elements (uint8 with KV8, else float32),
 * e.g. 28 MiB for the Qwen2-1.5B shape at 2,048 tokens with KV8; the allocation is zero-filled, so
 * the operating system commits its pages only as positions are written.
 */
import * as ort from 'onnxruntime-node';
import type { KvLayout, KvSnapshot } from '../ir/executable.js';
import { kvSnapshotLayerBytes } from '../ir/executable.js';
import { kvCacheDims } from '../compiler/io-contract.js';
import { EdgeLLMError } from '../core/errors.js';

type Elements = Uint8Array | Float32Array;

/** One buffer and how many caches share it. */
interface Store {
  data: Elements;
  refs: number;
}

export class KvCache {
  /** elements of one position of one layer's K (or V): numKvHeads · headDim */
  private readonly rowElems: number;

  private constructor(
    readonly layout: KvLayout,
    private store: Store,
    /** positions held */
    public length: number,
  ) {
    this.rowElems = layout.numKvHeads * layout.headDim;
  }

  /** An empty cache with room for `layout.maxContext` positions. */
  static empty(layout: KvLayout): KvCache {
    return new KvCache(layout, { data: allocate(layout, layout.maxContext), refs: 1 }, 0);
  }

  /**
   * A cache holding a snapshot's positions (bytes copied).
   * @throws EdgeLLMError when the snapshot's length exceeds the capacity, its layer count differs,
   *   or a layer's byte size disagrees with the layout
   */
  static restore(layout: KvLayout, snap: KvSnapshot): KvCache {
    if (!Number.isInteger(snap.length) || snap.length < 0 || snap.length > layout.maxContext)
      throw new EdgeLLMError(`restore: ${snap.length} tokens do not fit the KV-cache capacity of ${layout.maxContext}`);
    if (snap.layers.length !== layout.numLayers) throw new EdgeLLMError(`restore: ${snap.layers.length} layers, the executable has ${layout.numLayers}`);
    const want = kvSnapshotLayerBytes(layout, snap.length);
    const c = KvCache.empty(layout);
    snap.layers.forEach((l, i) =>
      [l.key, l.value].forEach((b, kv) => {
        if (b.byteLength !== want) throw new EdgeLLMError(`restore: layer ${i} ${kv ? 'V' : 'K'} holds ${b.byteLength} bytes, the layout needs ${want}`);
        const src = layout.dtype === 'uint8' ? b : new Float32Array(b.slice().buffer, 0, want / 4);
        c.store.data.set(src, c.offset(i, kv));
      }),
    );
    c.length = snap.length;
    return c;
  }

  /** Element offset of layer `i`'s K (kv 0) or V (kv 1). */
  private offset(i: number, kv: 0 | 1 | number): number {
    return (i * 2 + kv) * this.layout.maxContext * this.rowElems;
  }

  /** Layer i's K and V over the positions held, [1, length, kv_heads, head_dim] views (not copies). */
  past(i: number): [ort.Tensor, ort.Tensor] {
    const dims = kvCacheDims(this.layout.numKvHeads, this.layout.headDim, this.length);
    const view = (kv: number) => {
      const o = this.offset(i, kv);
      const d = this.store.data.subarray(o, o + this.length * this.rowElems);
      return d instanceof Uint8Array ? new ort.Tensor('uint8', d, dims) : new ort.Tensor('float32', d, dims);
    };
    return [view(0), view(1)];
  }

  /**
   * Writes one call's rows after the positions held: `rows[i]` = layer i's [K, V] rows, each
   * [1, n, kv_heads, head_dim] (the graph's new_key_values); then length grows by n. A shared
   * buffer is copied first (copy-on-write).
   * @throws EdgeLLMError when the rows would pass the capacity or have the wrong size
   */
  append(rows: readonly (readonly [Elements, Elements])[], n: number): void {
    if (this.length + n > this.layout.maxContext) throw new EdgeLLMError(`KV cache: ${this.length} + ${n} positions exceed the capacity of ${this.layout.maxContext}`);
    this.own();
    rows.forEach(([k, v], i) =>
      [k, v].forEach((r, kv) => {
        if (r.length !== n * this.rowElems) throw new EdgeLLMError(`KV cache: layer ${i} ${kv ? 'V' : 'K'} rows hold ${r.length} values, expected ${n * this.rowElems}`);
        this.store.data.set(r, this.offset(i, kv) + this.length * this.rowElems);
      }),
    );
    this.length += n;
  }

  /** Keeps the first `length` positions (O(1): later writes overwrite the rest). */
  truncate(length: number): void {
    this.length = length;
  }

  /** A cache holding the same positions, sharing the buffer until either writes. */
  fork(): KvCache {
    this.store.refs++;
    return new KvCache(this.layout, this.store, this.length);
  }

  /** The positions held as plain bytes per layer ({@link KvSnapshot} layout: [length, kv_heads, head_dim]). */
  snapshot(): KvSnapshot['layers'] {
    const n = this.length * this.rowElems;
    const bytes = (o: number) => {
      const d = this.store.data.slice(o, o + n);
      return new Uint8Array(d.buffer, 0, d.byteLength);
    };
    return Array.from({ length: this.layout.numLayers }, (_, i) => ({ key: bytes(this.offset(i, 0)), value: bytes(this.offset(i, 1)) }));
  }

  /** Makes the buffer this cache's own before a write: a shared one is left to its other holders and the held positions copied. */
  private own(): void {
    if (this.store.refs === 1) return;
    this.store.refs--;
    const data = allocate(this.layout, this.layout.maxContext);
    const n = this.length * this.rowElems;
    for (let i = 0; i < this.layout.numLayers; i++)
      for (const kv of [0, 1]) {
        const o = this.offset(i, kv);
        data.set(this.store.data.subarray(o, o + n), o);
      }
    this.store = { data, refs: 1 };
  }
}

/** A zero-filled buffer for `positions` positions of every layer's K and V. */
function allocate(l: KvLayout, positions: number): Elements {
  const n = l.numLayers * 2 * positions * l.numKvHeads * l.headDim;
  return l.dtype === 'uint8' ? new Uint8Array(n) : new Float32Array(n);
}
