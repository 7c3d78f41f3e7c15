/**
 * src/compiler/lora-strip.ts on the real stories260K with its real wiki adapter: the quantized HEF
 * (`edgellm quantize` → `add-lora` → `compile`, through the built CLI) and an fp32 executable with
 * the adapter (no A8 QDQ in the branch). The stripped graph has no `lora.*` inputs, is node for node
 * the graph compiled without adapters, and gives the LoRA graph's "no adapter" logits and new KV
 * rows exactly on TinyStories windows (prefill chunks, then single-token decode steps with the cache fed
 * back). Exact, not within a tolerance: with rank-0 A [0, in] and B [out, 0] the branch's B Gemm
 * contracts over nothing, so it adds +0 to every element of y, and y + 0 === y; the base nodes are
 * the same nodes on the same inputs, so every later value is the same too.
 */
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type onnxProto from 'onnx-proto';
import { edgellm, STORIES } from '../helpers/cli.js';
import { TINYSTORIES, WIKI_ADAPTER } from '../helpers/paths.js';
import { makeTempDir, removeDir } from '../helpers/tmp.js';
import { readExecutable } from '../../formats/hef-executable.js';
import { decodeModel, withInitializers, GraphBuilder, onnx } from '../../formats/onnx.js';
import { loadHfModel } from '../../formats/hf.js';
import { loadPeftAdapter } from '../../formats/peft.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { loadTextFile } from '../../calibration/datasets.js';
import { addLora } from '../../passes/lora/add.js';
import { compile } from '../../src/compiler/compile.js';
import { lowerModel } from '../../src/compiler/lower.js';
import { kvLayoutInitializers } from '../../src/compiler/kv-layout.js';
import { loraFeeds } from '../../src/compiler/lora-feeds.js';
import { INPUT_IDS, LOGITS, LOGIT_POSITIONS, kvCacheDims, kvNames } from '../../src/compiler/io-contract.js';
import { withoutLora, hasLoraInputs, loraInputsOf } from '../../src/compiler/lora-strip.js';
import { CheckedSession } from '../../src/engine/session.js';
import { silentContext } from '../../src/core/context.js';
import { EdgeLLMError } from '../../src/core/errors.js';
import { kvLayerDtype, type Executable } from '../../src/ir/executable.js';
import type { Model } from '../../src/ir/model.js';

type ModelProto = onnxProto.onnx.IModelProto;

/** token windows: 3 of 30 TinyStories tokens; each fed as prefill chunks of 16 and 8 (the second over a past), then 6 single-token steps */
const WINDOWS = 3;
const CHUNKS = [16, 8, 1, 1, 1, 1, 1, 1];
const WINDOW = CHUNKS.reduce((a, b) => a + b, 0);
/** the decode graph (static one token) takes the first 10 tokens of each window one at a time */
const DECODE_CHUNKS = Array.from({ length: 10 }, () => 1);

interface Step {
  logits: Float32Array;
  /** per layer K then V: this call's `new_key_values` rows [1, S, kv_heads, head_dim] */
  rows: (Float32Array | Uint8Array)[];
}

/** A session over `proto` with the executable's weights and KV-layout initializers attached. */
function session(exe: Executable, proto: ModelProto, label: string): Promise<CheckedSession> {
  const weights = new Map([...exe.weights, ...kvLayoutInitializers(exe.kvLayout)]);
  return CheckedSession.create(withInitializers(proto, weights, label), label);
}

/** The graph's `lora.*` feeds for adapter `name` (null: "no adapter", rank 0), as ORT tensors. */
function loraTensors(exe: Executable, name: string | null): Record<string, ort.Tensor> {
  const a = name === null ? null : exe.adapters!.find((x) => x.name === name)!;
  const f: Record<string, ort.Tensor> = {};
  for (const [n, v] of loraFeeds(exe, a, exe.prefill.inputs)) f[n] = new ort.Tensor(v.type, v.data, v.dims);
  return f;
}

/** `a` followed by `b` (a sequence-major cache of batch 1 grows by appending rows). */
function append<T extends Float32Array | Uint8Array>(a: T, b: T): T {
  const out = new (a.constructor as new (n: number) => T)(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * Runs `ids` through `s` in calls of `chunks` tokens from an empty cache, as the simulator does
 * (src/runtime/simulator.ts, src/runtime/kv-cache.ts): past_key_values = every earlier call's
 * new_key_values rows ([1, P, kv_heads, head_dim]), logits for every row of the call. Returns each
 * call's logits and new KV rows.
 */
async function trace(s: CheckedSession, exe: Executable, ids: number[], chunks: number[], lora: Record<string, ort.Tensor>): Promise<Step[]> {
  const l = exe.kvLayout;
  const none = () => (l.dtype === 'uint8' ? new Uint8Array(0) : new Float32Array(0));
  let cache: (Float32Array | Uint8Array)[] = Array.from({ length: 2 * l.numLayers }, none); // layer i: [2i] K, [2i + 1] V
  const steps: Step[] = [];
  let at = 0;
  for (const n of chunks) {
    const feeds: Record<string, ort.Tensor> = { ...lora, [INPUT_IDS]: new ort.Tensor('int64', BigInt64Array.from(ids.slice(at, at + n), BigInt), [1, n]) };
    if (s.inputNames.includes(LOGIT_POSITIONS)) feeds[LOGIT_POSITIONS] = new ort.Tensor('int64', BigInt64Array.from({ length: n }, (_, i) => BigInt(i)), [n]);
    const dims = kvCacheDims(l.numKvHeads, l.headDim, at);
    for (let i = 0; i < l.numLayers; i++) {
      feeds[kvNames(i).pastKey] = new ort.Tensor(kvLayerDtype(l, i), cache[2 * i] as any, dims);
      feeds[kvNames(i).pastValue] = new ort.Tensor(kvLayerDtype(l, i), cache[2 * i + 1] as any, dims);
    }
    const r = await s.run(feeds);
    const rows = Array.from({ length: l.numLayers }, (_, i) => [r[kvNames(i).newKey].data, r[kvNames(i).newValue].data] as (Float32Array | Uint8Array)[]).flat();
    cache = cache.map((c, j) => append(c, rows[j]));
    steps.push({ logits: r[LOGITS].data as Float32Array, rows });
    at += n;
  }
  return steps;
}

/** Index of the first element where a and b differ (!==), or of the shorter end; -1 when equal. */
function firstDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

function expectSameTrace(got: Step[], want: Step[], what: string): void {
  expect(got.length).toBe(want.length);
  got.forEach((s, i) => {
    expect(firstDiff(s.logits, want[i].logits), `${what}: logits of call ${i}`).toBe(-1);
    s.rows.forEach((p, j) => expect(firstDiff(p, want[i].rows[j]), `${what}: new KV rows ${j} of call ${i}`).toBe(-1));
  });
}

/** `WINDOWS` windows of `WINDOW` ids from TinyStories' validation text (BOS first), spread over the text. */
async function storyWindows(exe: Executable): Promise<number[][]> {
  const ids = await new TextTokenizer(exe.tokenizer).encode(loadTextFile(TINYSTORIES), true);
  const stride = Math.floor(ids.length / WINDOWS);
  return Array.from({ length: WINDOWS }, (_, w) => ids.slice(w * stride, w * stride + WINDOW));
}

/** Node signature without the graph-local constant counters (`/model/constants/I64/i64_17`). */
const signature = (n: onnxProto.onnx.INodeProto) =>
  n.opType === 'Constant' ? 'Constant' : `${n.opType} ${n.name} ${(n.input ?? []).map((x) => (x.startsWith('/model/constants/') ? '<const>' : x)).join(',')}`;

const names = (vs: readonly { name?: string | null }[] | null | undefined) => (vs ?? []).map((v) => v.name);

let dir: string;
let wiki: Executable;
let base: Executable;
beforeAll(() => {
  dir = makeTempDir('edgellm-lora-strip-');
  const run = (...args: string[]) => {
    const r = edgellm(...args);
    if (r.code !== 0) throw new Error(`edgellm ${args[0]}: ${r.stderr}`);
  };
  run('quantize', STORIES, '-o', path.join(dir, 'base.har'), '--calib-samples', '16');
  run('add-lora', WIKI_ADAPTER, '--har', path.join(dir, 'base.har'), '--name', 'wiki', '-o', path.join(dir, 'wiki.har'), '--calib-samples', '16');
  run('compile', path.join(dir, 'wiki.har'), '-o', path.join(dir, 'wiki.hef'), '--prefill-len', '16');
  run('compile', path.join(dir, 'base.har'), '-o', path.join(dir, 'base.hef'), '--prefill-len', '16');
  wiki = readExecutable(path.join(dir, 'wiki.hef'));
  base = readExecutable(path.join(dir, 'base.hef'));
});
afterAll(() => removeDir(dir));

describe('withoutLora on the quantized stories260K HEF with the wiki adapter', () => {
  it('drops every lora.* input and branch node: node for node the graph compiled without adapters', () => {
    for (const part of ['prefill', 'decode'] as const) {
      const g = decodeModel(wiki[part].onnx, part);
      const before = onnx.ModelProto.encode(onnx.ModelProto.create(g)).finish();
      const s = withoutLora(g);
      expect(hasLoraInputs(g)).toBe(true);
      expect(loraInputsOf(g)).toHaveLength(80); // 20 modules (q/k/v/o × 5 layers) × A, B, act_scale, act_zero_point
      expect(hasLoraInputs(s)).toBe(false);
      expect(names(s.graph!.input).filter((n) => n!.startsWith('lora.'))).toEqual([]);
      expect(s.graph!.node!.length).toBeLessThan(g.graph!.node!.length);
      expect(s.graph!.node!.filter((n) => n.name!.split('/').includes('lora'))).toEqual([]);
      const b = decodeModel(base[part].onnx, part);
      expect(s.graph!.node!.map(signature)).toEqual(b.graph!.node!.map(signature));
      expect(names(s.graph!.input)).toEqual(names(b.graph!.input));
      expect(names(s.graph!.output)).toEqual(names(g.graph!.output));
      // pure: the input graph is untouched
      expect(onnx.ModelProto.encode(onnx.ModelProto.create(g)).finish()).toEqual(before);
    }
  });

  it('gives the "no adapter" logits and new KV rows exactly, prefill and decode graphs, on TinyStories windows', async () => {
    const none = loraTensors(wiki, null);
    const windows = await storyWindows(wiki);
    for (const [part, chunks] of [['prefill', CHUNKS], ['decode', DECODE_CHUNKS]] as const) {
      const g = decodeModel(wiki[part].onnx, part);
      const [full, stripped, plain] = await Promise.all([session(wiki, g, `${part} lora`), session(wiki, withoutLora(g), `${part} stripped`), session(base, decodeModel(base[part].onnx, part), `${part} base`)]);
      try {
        for (const ids of windows) {
          const want = await trace(full, wiki, ids, chunks, none);
          expectSameTrace(await trace(stripped, wiki, ids, chunks, {}), want, `${part} stripped vs lora graph`);
          // and what the HEF compiled without the adapter computes (the base weights are the same bytes)
          expectSameTrace(await trace(plain, base, ids, chunks, {}), want, `${part} base HEF vs lora graph`);
        }
        // not vacuous: the real adapter moves the logits
        const w = await trace(full, wiki, windows[0], chunks, loraTensors(wiki, 'wiki'));
        const n = await trace(stripped, wiki, windows[0], chunks, {});
        expect(firstDiff(w[0].logits, n[0].logits)).toBeGreaterThanOrEqual(0);
      } finally {
        await Promise.all([full.release(), stripped.release(), plain.release()]);
      }
    }
  });

  it('returns a graph without adapters unchanged (the same object)', () => {
    for (const part of ['prefill', 'decode'] as const) {
      const b = decodeModel(base[part].onnx, part);
      expect(hasLoraInputs(b)).toBe(false);
      expect(withoutLora(b)).toBe(b);
    }
  });
});

describe('withoutLora on fp32 stories260K with the wiki adapter (no QDQ in the branch)', () => {
  let exe: Executable;
  let model: Model;
  beforeAll(async () => {
    const fp = loadHfModel(STORIES);
    model = await addLora(fp, loadPeftAdapter(WIKI_ADAPTER, fp.config, { baseName: 'stories260K' }), { name: 'wiki', bits: 32, groupSize: 32 }, [], silentContext);
    exe = compile(model, { prefillLen: 16 });
  });

  it('gives the "no adapter" logits and float KV exactly', async () => {
    const g = decodeModel(exe.prefill.onnx, 'prefill');
    const s = withoutLora(g);
    expect(loraInputsOf(g)).toHaveLength(40); // A and B of 20 modules
    expect(hasLoraInputs(s)).toBe(false);
    const [full, stripped] = await Promise.all([session(exe, g, 'fp32 lora'), session(exe, s, 'fp32 stripped')]);
    try {
      for (const ids of await storyWindows(exe)) expectSameTrace(await trace(stripped, exe, ids, CHUNKS, {}), await trace(full, exe, ids, CHUNKS, loraTensors(exe, null)), 'fp32 stripped vs lora graph');
    } finally {
      await Promise.all([full.release(), stripped.release()]);
    }
  });

  it('refuses a capture graph: the branch intermediate reaches a graph output with no base value', () => {
    const cap = lowerModel(model, { seqLen: 'dynamic', maxContext: 64, capture: true }).toModelProto(false);
    expect(() => withoutLora(cap)).toThrow(EdgeLLMError);
    expect(() => withoutLora(cap)).toThrow(/graph output 'capture\.lora\.model\.layers\.0\.self_attn\.q_proj' depends on a LoRA input/);
  });

  it('refuses graphs whose names disagree with the dataflow, both ways', () => {
    const g = decodeModel(exe.prefill.onnx, 'prefill');
    const renamed = (from: string, to: string): ModelProto => ({ ...g, graph: { ...g.graph!, node: g.graph!.node!.map((n) => (n.name === from ? { ...n, name: to } : n)) } });
    // a node reading a lora.* input that is not named as a branch node
    expect(() => withoutLora(renamed('/model/layers.0/attn/q_proj/lora/A', '/model/layers.0/attn/q_proj/A'))).toThrow(/node '\/model\/layers\.0\/attn\/q_proj\/A' \(Gemm\) reads LoRA value 'lora\.model\.layers\.0\.self_attn\.q_proj\.A' but is not named/);
    // a base node named as a branch node
    expect(() => withoutLora(renamed('/model/layers.0/attn/q_heads', '/model/layers.0/attn/lora/q_heads'))).toThrow(/'\/model\/layers\.0\/attn\/lora\/q_heads' \(Reshape\) is named as a LoRA branch node but does not depend on a LoRA input/);
  });
});

describe('withoutLora on a hand-built branch', () => {
  /** out = x·W + unflatten(gemm(gemm(flatten(x), A), B)): the lowering's branch, merged straight into a graph output */
  function branchGraph(): ModelProto {
    const g = new GraphBuilder('t');
    g.input('x', 'float32', [1, 'S', 4]);
    g.input('lora.l.A', 'float32', ['r', 4]);
    g.input('lora.l.B', 'float32', [3, 'r']);
    g.initializer('W', { dtype: 'F32', shape: [4, 3], data: Float32Array.from({ length: 12 }, (_, i) => (i - 5.5) / 3) });
    g.initializer('unused', { dtype: 'F32', shape: [1], data: Float32Array.of(1) });
    const y = g.node('MatMul', ['x', 'W'], { name: '/l/MatMul' });
    const flat = g.node('Reshape', ['x', g.ints([-1, 4])], { name: '/l/lora/Flatten' });
    const h = g.node('Gemm', [flat, 'lora.l.A'], { name: '/l/lora/A', attrs: { transB: 1 } });
    const d = g.node('Gemm', [h, 'lora.l.B'], { name: '/l/lora/B', attrs: { transB: 1 } });
    const u = g.node('Reshape', [d, g.ints([1, -1, 3])], { name: '/l/lora/Unflatten' });
    g.node('Add', [y, u], { name: '/l/lora/Add', outputNames: ['out'] });
    g.output('out', 'float32', [1, 'S', 3]);
    return g.toModelProto();
  }

  it('turns a merged graph output into Identity(y), drops dead nodes and initializers, and does not rely on node order', async () => {
    const m = branchGraph();
    const s = withoutLora(m);
    expect(s.graph!.node!.map((n) => `${n.opType} ${n.input!.join(',')} -> ${n.output!.join(',')}`)).toEqual(['MatMul x,W -> /l/MatMul/output_0', 'Identity /l/MatMul/output_0 -> out']);
    expect(names(s.graph!.input)).toEqual(['x']);
    expect(names(s.graph!.initializer)).toEqual(['W']);
    // the same nodes shuffled: the same result
    const shuffled: ModelProto = { ...m, graph: { ...m.graph!, node: [...m.graph!.node!].reverse() } };
    expect(withoutLora(shuffled).graph!.node!.map(signature)).toEqual(s.graph!.node!.map(signature));
    const x = new ort.Tensor('float32', Float32Array.from({ length: 8 }, (_, i) => Math.sin(i + 1)), [1, 2, 4]);
    const [a, b] = await Promise.all([CheckedSession.create(m, 'lora'), CheckedSession.create(s, 'stripped')]);
    try {
      const none = { 'lora.l.A': new ort.Tensor('float32', new Float32Array(0), [0, 4]), 'lora.l.B': new ort.Tensor('float32', new Float32Array(0), [3, 0]) };
      const want = (await a.run({ x, ...none })).out.data as Float32Array;
      expect(firstDiff((await b.run({ x })).out.data as Float32Array, want)).toBe(-1);
    } finally {
      await Promise.all([a.release(), b.release()]);
    }
  });

  it('refuses a cycle and a value produced twice', () => {
    const m = branchGraph();
    const nodes = m.graph!.node!;
    const cyclic: ModelProto = { ...m, graph: { ...m.graph!, node: nodes.map((n) => (n.name === '/l/lora/Flatten' ? { ...n, input: ['/l/lora/B/output_0', n.input![1]] } : n)) } };
    expect(() => withoutLora(cyclic)).toThrow(/form a cycle/);
    const twice: ModelProto = { ...m, graph: { ...m.graph!, node: [...nodes, { ...nodes.find((n) => n.name === '/l/MatMul')!, name: '/l/MatMul2' }] } };
    expect(() => withoutLora(twice)).toThrow(/value '\/l\/MatMul\/output_0' is produced by two nodes/);
  });
});
