/**
 * The simulator's KV cache of one context: every layer's K and V in a JavaScript buffer of the
 * layer's element type (uint8 KV8 codes, uint16 KV16 codes or float32: the executable's KV layout,
 * src/ir/executable.ts kvLayerDtype), preallocated to the context capacity, sequence-major
 * ([position, kv_head, head_dim] per layer, as the graphs read it: src/compiler/io-contract.ts), so
 * the first `length` positions of a layer are one contiguous prefix. A call feeds those prefixes as
 * `past_key_values` views (no copy) and writes the graph's `new_key_values` rows after them: no step
 * copies or trims the cache.
 *
 * {@link KvCache.fork} is copy-on-write: the fork shares the buffers until either side writes, and
 * the writer then copies only the positions it holds (not the capacity).
 *
 * Memory: per layer 2 · maxContext · numKvHeads · headDim elements of the layer's width (1, 2 or 4
 * bytes; src/ir/executable.ts kvCacheBytes), e.g. 28 MiB for the Qwen2-1.5B shape at 2,048 tokens
 * with KV8, 56 MiB with KV16; the allocations are zero-filled, so the operating system commits their
 * pages only as positions are written.
 */
import * as ort from 'onnxruntime-node';
import type { KvDtype, KvLayout, KvSnapshot } from '../ir/executable.js';
import { kvLayerDtypes, kvSnapshotLayerBytes } from '../ir/executable.js';
import { kvCacheDims } from '../compiler/io-contract.js';
import { EdgeLLMError } from '../core/errors.js';

/** One layer's elements: K then V, each maxContext · numKvHeads · headDim. */
type Elements = Uint8Array | Uint16Array | Float32Array;

/** The buffers (one per layer) and how many caches share them. */
interface Store {
  data: Elements[];
  refs: number;
}

const ARRAYS = { uint8: Uint8Array, uint16: Uint16Array, float32: Float32Array } as const;

export class KvCache {
  /** elements of one position of one layer's K (or V): numKvHeads · headDim */
  private readonly rowElems: number;
  /** each layer's element type */
  private readonly dtypes: KvDtype[];

  private constructor(
    readonly layout: KvLayout,
    private store: Store,
    /** positions held */
    public length: number,
  ) {
    this.rowElems = layout.numKvHeads * layout.headDim;
    this.dtypes = kvLayerDtypes(layout);
  }

  /** An empty cache with room for `layout.maxContext` positions. */
  static empty(layout: KvLayout): KvCache {
    return new KvCache(layout, { data: allocate(layout), refs: 1 }, 0);
  }

  /**
   * A cache holding a snapshot's positions (bytes copied; each layer's in its element type,
   * little-endian).
   * @throws EdgeLLMError when the snapshot's length exceeds the capacity, its layer count differs,
   *   or a layer's byte size disagrees with the layout
   */
  static restore(layout: KvLayout, snap: KvSnapshot): KvCache {
    if (!Number.isInteger(snap.length) || snap.length < 0 || snap.length > layout.maxContext)
      throw new EdgeLLMError(`restore: ${snap.length} tokens do not fit the KV-cache capacity of ${layout.maxContext}`);
    if (snap.layers.length !== layout.numLayers) throw new EdgeLLMError(`restore: ${snap.layers.length} layers, the executable has ${layout.numLayers}`);
    const c = KvCache.empty(layout);
    snap.layers.forEach((l, i) => {
      const want = kvSnapshotLayerBytes(layout, snap.length, i);
      const A = ARRAYS[c.dtypes[i]];
      [l.key, l.value].forEach((b, kv) => {
        if (b.byteLength !== want) throw new EdgeLLMError(`restore: layer ${i} ${kv ? 'V' : 'K'} holds ${b.byteLength} bytes, the layout needs ${want}`);
        const src = A === Uint8Array ? b : new A(b.slice().buffer, 0, want / A.BYTES_PER_ELEMENT); // slice: an aligned copy
        c.store.data[i].set(src, c.offset(kv));
      });
    });
    c.length = snap.length;
    return c;
  }

  /** Element offset of a layer's K (kv 0) or V (kv 1) in its buffer. */
  private offset(kv: 0 | 1 | number): number {
    return kv * this.layout.maxContext * this.rowElems;
  }

  /** Layer i's K and V over the positions held, [1, length, kv_heads, head_dim] views (not copies) of its element type. */
  past(i: number): [ort.Tensor, ort.Tensor] {
    const dims = kvCacheDims(this.layout.numKvHeads, this.layout.headDim, this.length);
    const type = this.dtypes[i];
    const view = (kv: number) => {
      const o = this.offset(kv);
      const d = this.store.data[i].subarray(o, o + this.length * this.rowElems);
      return new ort.Tensor(type, d, dims);
    };
    return [view(0), view(1)];
  }

  /**
   * Writes one call's rows after the positions held: `rows[i]` = layer i's [K, V] rows, each
   * [1, n, kv_heads, head_dim] (the graph's new_key_values) in the layer's element type; then
   * length grows by n. A shared buffer is copied first (copy-on-write).
   * @throws EdgeLLMError when the rows would pass the capacity, have the wrong size or the wrong
   *   element type
   */
  append(rows: readonly (readonly [Elements, Elements])[], n: number): void {
    if (this.length + n > this.layout.maxContext) throw new EdgeLLMError(`KV cache: ${this.length} + ${n} positions exceed the capacity of ${this.layout.maxContext}`);
    this.own();
    rows.forEach(([k, v], i) =>
      [k, v].forEach((r, kv) => {
        if (r.length !== n * this.rowElems) throw new EdgeLLMError(`KV cache: layer ${i} ${kv ? 'V' : 'K'} rows hold ${r.length} values, expected ${n * this.rowElems}`);
        const data = this.store.data[i];
        if (elementType(r) !== this.dtypes[i]) throw new EdgeLLMError(`KV cache: layer ${i} ${kv ? 'V' : 'K'} rows are ${elementType(r)}, the layer holds ${this.dtypes[i]}`);
        data.set(r, this.offset(kv) + this.length * this.rowElems);
      }),
    );
    this.length += n;
  }

  /** Keeps the first `length` positions (O(1): later writes overwrite the rest). */
  truncate(length: number): void {
    this.length = length;
  }

  /** A cache holding the same positions, sharing the buffers until either writes. */
  fork(): KvCache {
    this.store.refs++;
    return new KvCache(this.layout, this.store, this.length);
  }

  /** The positions held as plain bytes per layer ({@link KvSnapshot} layout: [length, kv_heads, head_dim], the layer's element type). */
  snapshot(): KvSnapshot['layers'] {
    const n = this.length * this.rowElems;
    const bytes = (i: number, o: number) => {
      const d = this.store.data[i].slice(o, o + n);
      return new Uint8Array(d.buffer, 0, d.byteLength);
    };
    return Array.from({ length: this.layout.numLayers }, (_, i) => ({ key: bytes(i, this.offset(0)), value: bytes(i, this.offset(1)) }));
  }

  /** Makes the buffers this cache's own before a write: shared ones are left to their other holders and the held positions copied. */
  private own(): void {
    if (this.store.refs === 1) return;
    this.store.refs--;
    const data = allocate(this.layout);
    const n = this.length * this.rowElems;
    for (let i = 0; i < this.layout.numLayers; i++)
      for (const kv of [0, 1]) {
        const o = this.offset(kv);
        data[i].set(this.store.data[i].subarray(o, o + n), o);
      }
    this.store = { data, refs: 1 };
  }
}

/** The KV dtype a typed array holds (a Buffer counts as uint8). */
function elementType(a: Elements): KvDtype {
  return a instanceof Float32Array ? 'float32' : a.BYTES_PER_ELEMENT === 2 ? 'uint16' : 'uint8';
}

/** Zero-filled buffers of `maxContext` positions of every layer's K and V, each in the layer's element type. */
function allocate(l: KvLayout): Elements[] {
  const n = 2 * l.maxContext * l.numKvHeads * l.headDim;
  return kvLayerDtypes(l).map((d) => new ARRAYS[d](n));
}
