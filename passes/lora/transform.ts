/**
 * Carries a base's function-preserving transforms into a PEFT LoRA adapter (passes/lora/add.ts step 1):
 * rebuilt from `model.passes`, they move into A on input-side modules and into B on output-side
 * ones, so that s·B'·A'·x' = s·B·A·x on the transformed activations x':
 *
 *   fold-norms (W ← W·diag(γ))         A ← A·diag(γ)            q/k/v (γ_in), gate/up (γ_post)
 *   QuaRot R1 (Ashkboos et al. 2024, §4, "residual")   A ← A·R1  (q/k/v/gate/up),  B ← R1ᵀ·B  (o/down)
 *   QuaRot R2 (per head, v → o)        B_v ← per-head R2ᵀ·B_v,  A_o ← per-head A_o·R2
 *   QuaRot R4 (online, down input)     A_down ← A_down·R4
 */
import type { Model } from '../../src/ir/model.js';
import { toFloat32 } from '../../src/ir/tensor.js';
import { architectureOf } from '../../src/ir/architectures.js';
import type { PeftAdapter, PeftLoraModule } from '../../formats/peft.js';
import { quarotRotations, meta as quarotMeta, type QuarotOptions } from '../quarot.js';
import { meta as foldMeta } from '../fold-norms.js';
import { rotateVector, type KronRotation } from '../hadamard.js';
import { UnsupportedModelError, ShapeMismatchError } from '../../src/core/errors.js';

/** A PEFT module after the base's transforms: float32 A [rank, in], B [out, rank]. */
export interface TransformedModule {
  linear: string;
  role: string;
  layer: number;
  rank: number;
  scaling: number;
  inFeatures: number;
  outFeatures: number;
  A: Float32Array;
  B: Float32Array;
}

/** Where transforms that discard information find it: the source (pre-fold) fp32 model, for γ. */
export interface TransformSources {
  /** the base before any pass (e.g. a HAR's `emulation/native` model, or the HF checkpoint) */
  native?: Model;
  /** the fp32 base after its transforms, before weight quantization (a HAR's `emulation/optimized`), for the refit */
  optimized?: Model;
}

/**
 * Base passes that leave every linear's function unchanged in float, so an adapter's A and B stay as
 * they are: weight/activation quantization, calibration, and k-centering (it shifts the whole K cache,
 * the adapter's contribution included, and attention is invariant to that shift).
 */
const NEUTRAL_PASSES = new Set(['rtn', 'gptq', 'calibrate', 'k-centering', 'merge-lora', 'add-lora']);


/** X [rows, n] ← X·R on every row, R applied to each consecutive segment of length R.n (per head when n > R.n). */
function rotateRows(X: Float64Array, rows: number, R: KronRotation): void {
  const n = X.length / rows;
  const tmp = new Float64Array(R.n);
  for (let i = 0; i < rows; i++) for (let o = 0; o < n; o += R.n) rotateVector(R, X.subarray(i * n + o, i * n + o + R.n), tmp);
}

/** X [n, cols] ← Rᵀ·X (each column c ← c·R as a row vector, per segment of length R.n). */
function rotateCols(X: Float64Array, cols: number, R: KronRotation): void {
  const n = X.length / cols;
  const col = new Float64Array(n);
  for (let j = 0; j < cols; j++) {
    for (let i = 0; i < n; i++) col[i] = X[i * cols + j];
    rotateRows(col, 1, R);
    for (let i = 0; i < n; i++) X[i * cols + j] = col[i];
  }
}

/**
 * Carries the base's transforms, read from `model.passes` in order, into a PEFT adapter's A and B
 * (see the file header for the algebra). Math in float64, rounded to float32 at the end.
 * @returns the transformed modules and the names of the passes that changed them
 * @throws UnsupportedModelError for a base pass whose effect on an adapter is unknown, or when
 *   information it needs (the folded γ) is not available
 */
export function transformAdapter(peft: PeftAdapter, model: Model, src: TransformSources = {}): { modules: TransformedModule[]; applied: string[] } {
  const cfg = model.config;
  const arch = architectureOf(cfg);
  // the linears that read a normed residual (R1 on their inputs, a γ folded into their columns), and which γ
  const readsNorm = (layer: number, linear: string): string | undefined => {
    const n = arch.layerNorms(layer);
    if (arch.attentionInputs(cfg, layer).some((s) => s.name === linear)) return n.input;
    if (arch.mlpInputs(cfg, layer).some((s) => s.name === linear)) return n.postAttention;
    return undefined;
  };
  const work = peft.modules.map((m): PeftLoraModule & { A64: Float64Array; B64: Float64Array } => ({ ...m, A64: Float64Array.from(m.A), B64: Float64Array.from(m.B) }));
  const applied: string[] = [];
  for (const rec of model.passes) {
    if (NEUTRAL_PASSES.has(rec.name)) continue;
    if (rec.name === foldMeta.name) {
      const native = src.native;
      for (const m of work) {
        const norm = readsNorm(m.layer, m.linear);
        if (!norm) continue;
        const t = native?.weights.get(norm);
        if (!t) throw new UnsupportedModelError(`add-lora: the base folded its RMSNorm weights (fold-norms) and keeps no fp32 copy; pass --base-model <hf-dir> so '${norm}' can be folded into lora_A`);
        const g = toFloat32(t.load());
        if (g.length !== m.inFeatures) throw new ShapeMismatchError(`add-lora: pre-fold '${norm}' has ${g.length} entries, ${m.linear} reads ${m.inFeatures} (is --base-model the HAR's source?)`);
        for (let j = 0; j < m.rank; j++) for (let k = 0; k < m.inFeatures; k++) m.A64[j * m.inFeatures + k] *= g[k];
      }
    } else if (rec.name === quarotMeta.name) {
      // passes/quarot.ts: inputs W·R1, outputs R1ᵀ·W, v rows per head R2ᵀ·W_v, o columns per head W_o·R2, down W·R4
      const R = quarotRotations(cfg, rec.options as unknown as QuarotOptions);
      for (const m of work) {
        if (readsNorm(m.layer, m.linear)) rotateRows(m.A64, m.rank, R.r1); // A ← A·R1
        else rotateCols(m.B64, m.rank, R.r1); // B ← R1ᵀ·B (o_proj, down_proj)
        if (m.role === 'v_proj') rotateCols(m.B64, m.rank, R.r2[m.layer]); // B_v ← R2ᵀ·B_v per KV head
        if (m.role === 'o_proj') rotateRows(m.A64, m.rank, R.r2[m.layer]); // A_o ← A_o·R2 per query head
        if (m.role === 'down_proj' && R.r4) rotateRows(m.A64, m.rank, R.r4); // A_down ← A_down·R4
      }
    } else throw new UnsupportedModelError(`add-lora: the base pass '${rec.name}' has no known effect on LoRA adapters; cannot keep the adapter exact`);
    applied.push(rec.name);
  }
  return {
    modules: work.map(({ A64, B64, A: _a, B: _b, ...m }) => ({ ...m, A: Float32Array.from(A64), B: Float32Array.from(B64) })),
    applied,
  };
}
