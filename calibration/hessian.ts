/**
 * The GPTQ Hessian of a linear layer (Frantar et al. 2022, §3, "layer-wise quantization"): for the
 * layer-wise objective ‖W·X − Q·X‖², H = 2·X·Xᵀ over the calibration inputs x of the layer,
 * normalised here as a running mean over the rows seen:
 *
 *   addBatch(X: [m, K])  →  H ← H·n/(n+m) + (2/(n+m))·XᵀX,   n ← n + m
 *
 * so that after all batches H = (2/n)·Σ x·xᵀ (the reference code's `add_batch`, which counts
 * sequences rather than rows; the constant factor does not change GPTQ's result). The XᵀX product
 * runs in onnxruntime-node on a small cached graph; for wide inputs only the upper triangle is
 * computed, in row panels [a0, a1) × [a0, K) (about half the FLOPs of the full product).
 *
 * Accumulate and solve are kept apart (the solver is passes/gptq.ts): this class only accumulates.
 */
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../formats/onnx.js';
import { CheckedSession } from '../src/engine/session.js';
import { ShapeMismatchError } from '../src/core/errors.js';

export interface HessianOptions {
  /**
   * Row-panel height of the upper-triangle product; a matrix of at most 2·panelSize columns is
   * done as one full XᵀX. Default 512 (measured best of 256..1024 for K = 8960, 2048 rows).
   */
  panelSize?: number;
}

export class HessianAccumulator {
  /** running-mean H [K, K] float64, row-major; only the upper triangle (with the diagonal) is kept current */
  private readonly h: Float64Array;
  private n = 0;
  private mirrored = true;
  /** [a0, a1) row ranges of the panels */
  private readonly panels: [number, number][];
  private session: Promise<CheckedSession> | null = null;

  /**
   * @param columns K, the layer's input features
   * @throws ShapeMismatchError for a non-positive or non-integer K
   */
  constructor(
    readonly columns: number,
    opts: HessianOptions = {},
  ) {
    if (!Number.isInteger(columns) || columns <= 0) throw new ShapeMismatchError(`HessianAccumulator: columns must be a positive integer, got ${columns}`);
    this.h = new Float64Array(columns * columns);
    const p = opts.panelSize ?? 512;
    this.panels = [];
    if (columns <= 2 * p) this.panels.push([0, columns]);
    else for (let a0 = 0; a0 < columns; a0 += p) this.panels.push([a0, Math.min(columns, a0 + p)]);
  }

  /** Rows seen so far (the n of the running mean). */
  get nsamples(): number {
    return this.n;
  }

  /**
   * Adds a batch of layer inputs.
   * @param x float32 [rows, K], row-major (one token's input per row); not modified
   * @throws ShapeMismatchError when x.length is not a multiple of K
   */
  async addBatch(x: Float32Array): Promise<void> {
    const K = this.columns;
    if (x.length % K !== 0) throw new ShapeMismatchError(`HessianAccumulator.addBatch: x has ${x.length} elements, not a multiple of K = ${K} (expected [rows, ${K}])`);
    const m = x.length / K;
    if (m === 0) return;
    this.session ??= CheckedSession.create(this.graph(), `hessian XᵀX K=${K}`);
    const res = await (await this.session).run({ X: new ort.Tensor('float32', x, [m, K]) });
    const a = this.n / (this.n + m);
    const b = 2 / (this.n + m);
    const h = this.h;
    this.panels.forEach(([a0, a1], p) => {
      const P = res[`Y${p}`].data as Float32Array; // [a1 − a0, K − a0]
      const w = K - a0;
      for (let r = a0; r < a1; r++) {
        const src = (r - a0) * w - a0;
        const dst = r * K;
        for (let c = r; c < K; c++) h[dst + c] = h[dst + c] * a + b * P[src + c];
      }
    });
    this.n += m;
    this.mirrored = false;
  }

  /**
   * H = (2/n)·Σ x·xᵀ, float64 [K, K] row-major, symmetric (all zeros before the first batch).
   * This is the accumulator's own buffer: read it, do not modify it; it stays valid (and keeps
   * accumulating) across later {@link addBatch} calls.
   */
  get H(): Float64Array {
    if (!this.mirrored) {
      const K = this.columns;
      const h = this.h;
      for (let r = 1; r < K; r++) for (let c = 0; c < r; c++) h[r * K + c] = h[c * K + r];
      this.mirrored = true;
    }
    return this.h;
  }

  /** Releases the ORT session (the accumulated H stays readable). */
  async dispose(): Promise<void> {
    const s = this.session;
    this.session = null;
    if (s) await (await s).release();
  }

  /** X [m, K] → Y_p = X[:, a0:a1]ᵀ · X[:, a0:] for each panel p. */
  private graph(): Uint8Array {
    const K = this.columns;
    const g = new GraphBuilder('hessian');
    const x = g.input('X', 'float32', ['rows', K]);
    const axis = g.ints([1]);
    this.panels.forEach(([a0, a1], p) => {
      const full = a0 === 0 && a1 === K;
      const xa = full ? x : g.node('Slice', [x, g.ints([a0]), g.ints([a1]), axis], { name: `/hessian/panel${p}/SliceRows` });
      const xr = a0 === 0 ? x : g.node('Slice', [x, g.ints([a0]), g.ints([K]), axis], { name: `/hessian/panel${p}/SliceCols` });
      g.node('Gemm', [xa, xr], { name: `/hessian/panel${p}/XtX`, attrs: { transA: 1 }, outputNames: [`Y${p}`] });
      g.output(`Y${p}`, 'float32', [a1 - a0, K - a0]);
    });
    return g.encode(true);
  }
}
