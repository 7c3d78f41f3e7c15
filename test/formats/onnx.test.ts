/**
 * formats/onnx: the graph builder, TensorProto serialisation, decoding, and the initializer
 * store (referencedInitializers / withInitializers), checked on small generated graphs by decoding
 * them again and by running them in onnxruntime-node against the same computation in TypeScript.
 */
import { describe, expect, it } from 'vitest';
import * as ort from 'onnxruntime-node';
import type onnxProto from 'onnx-proto';
import { mulberry32 } from '../../src/core/rng.js';
import { GraphBuilder, OPSETS, decodeModel, elemTypeOf, onnx, referencedInitializers, tensorProto, withInitializers } from '../../formats/onnx.js';
import { EdgeLLMError, FormatError } from '../../src/core/errors.js';
import type { Tensor } from '../../src/ir/tensor.js';
import { thrownBy } from '../helpers/errors.js';

/** protobufjs decodes int64 fields as Long objects (the `long` package is installed) or numbers. */
const num = (d: unknown): number => (typeof d === 'number' ? d : Number((d as { toString(): string }).toString()));

function randF32(shape: number[], rng: () => number): Tensor & { data: Float32Array } {
  const n = shape.reduce((a, b) => a * b, 1);
  return { dtype: 'F32', shape, data: Float32Array.from({ length: n }, () => rng() * 2 - 1) };
}

const VOCAB = 5;
const D = 3;
const OUT = 4;

/**
 * ids int64 [n], x float32 [n, D]:
 *   h = E[ids] + x;  y = h·W + b;  z = 2·y;  (vals, idx) = TopK(y, 2, axis −1)
 * E [VOCAB, D] is an `initializer`, W [D, OUT] and b [OUT] are `weight`s; 2 and K are Constants.
 */
function buildGraph(store?: Map<string, Tensor>, seed = 1) {
  const rng = mulberry32(seed);
  const E = randF32([VOCAB, D], rng);
  const W = randF32([D, OUT], rng);
  const bias = randF32([OUT], rng);
  const g = new GraphBuilder('test-graph', store);
  const ids = g.input('ids', 'int64', ['n']);
  const x = g.input('x', 'float32', ['n', D]);
  g.initializer('E', E);
  const gathered = g.node('Gather', ['E', ids], { name: '/model/embed/Gather', attrs: { axis: 0 } });
  const h = g.node('Add', [gathered, x], { name: '/model/embed/Add' });
  const w = g.weight('W', () => W);
  const b = g.weight('b', () => bias);
  const m = g.node('MatMul', [h, w], { name: '/model/proj/MatMul' });
  const y = g.node('Add', [m, b], { name: '/model/proj/Add', outputNames: ['y'] });
  const two = g.floats([2], true);
  g.node('Mul', [y, two], { name: '/model/scale/Mul', outputNames: ['z'] });
  const k = g.ints([2]);
  g.nodeN('TopK', [y, k], { name: '/model/topk/TopK', attrs: { axis: -1 }, outputNames: ['vals', 'idx'] });
  g.output('y', 'float32', ['n', OUT]);
  g.output('z', 'float32', ['n', OUT]);
  g.output('vals', 'float32', ['n', 2]);
  g.output('idx', 'int64', ['n', 2]);
  return { g, E, W, bias };
}

/** The same computation in float64 TypeScript. */
function expectedOutputs(E: Float32Array, W: Float32Array, bias: Float32Array, ids: number[], x: Float32Array) {
  const n = ids.length;
  const y = new Float64Array(n * OUT);
  for (let r = 0; r < n; r++)
    for (let o = 0; o < OUT; o++) {
      let s = bias[o];
      for (let d = 0; d < D; d++) s += (E[ids[r] * D + d] + x[r * D + d]) * W[d * OUT + o];
      y[r * OUT + o] = s;
    }
  const idx: number[] = [];
  const vals: number[] = [];
  for (let r = 0; r < n; r++) {
    const row = Array.from(y.subarray(r * OUT, (r + 1) * OUT));
    const o = row.map((_, i) => i).sort((a, b) => row[b] - row[a]);
    idx.push(o[0], o[1]);
    vals.push(row[o[0]], row[o[1]]);
  }
  return { y, z: y.map((v) => 2 * v), vals, idx };
}

/**
 * float32 agreement: each output is a sum of 4 products of values in [−2, 2], computed by ORT in
 * float32 (a few ulps, ~1e-7 relative, of error) against float64 here, so 1e-5 relative (absolute
 * below magnitude 1) has two orders of magnitude of margin while any wrong weight or op shows up at
 * O(0.1).
 */
function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) expect(Math.abs(actual[i] - expected[i])).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(expected[i])));
}

async function runGraph(bytes: Uint8Array, ids: number[], x: Float32Array) {
  const s = await ort.InferenceSession.create(bytes);
  try {
    const n = ids.length;
    return await s.run({
      ids: new ort.Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [n]),
      x: new ort.Tensor('float32', x, [n, D]),
    });
  } finally {
    await s.release();
  }
}

describe('GraphBuilder + decodeModel: structure round-trips', () => {
  it('keeps inputs, outputs, nodes, opsets and initializers exactly', () => {
    const { g, E, W, bias } = buildGraph();
    const m = decodeModel(g.encode(), 'test.onnx');
    expect(num(m.irVersion)).toBe(8);
    expect(m.producerName).toBe('edgellm');
    expect(Object.fromEntries(m.opsetImport.map((o) => [o.domain, num(o.version)]))).toEqual(OPSETS);
    const gr = m.graph!;
    const nodes = gr.node!;
    expect(gr.name).toBe('test-graph');

    const vi = (v: onnxProto.onnx.IValueInfoProto) => ({
      name: v.name,
      elem: v.type!.tensorType!.elemType,
      dims: v.type!.tensorType!.shape!.dim!.map((d: onnxProto.onnx.TensorShapeProto.IDimension) => (d.dimParam ? d.dimParam : num(d.dimValue))),
    });
    const F = onnx.TensorProto.DataType.FLOAT;
    const I64 = onnx.TensorProto.DataType.INT64;
    expect(gr.input!.map(vi)).toEqual([
      { name: 'ids', elem: I64, dims: ['n'] },
      { name: 'x', elem: F, dims: ['n', D] },
    ]);
    expect(gr.output!.map(vi)).toEqual([
      { name: 'y', elem: F, dims: ['n', OUT] },
      { name: 'z', elem: F, dims: ['n', OUT] },
      { name: 'vals', elem: F, dims: ['n', 2] },
      { name: 'idx', elem: I64, dims: ['n', 2] },
    ]);
    expect(g.inputSpecs.map((s) => s.name)).toEqual(['ids', 'x']);
    expect(g.outputSpecs.map((s) => s.type)).toEqual(['float32', 'float32', 'float32', 'int64']);

    expect(nodes.map((n) => n.opType)).toEqual(['Gather', 'Add', 'MatMul', 'Add', 'Constant', 'Mul', 'Constant', 'TopK']);
    const gather = nodes[0];
    expect(gather.name).toBe('/model/embed/Gather');
    expect(gather.input).toEqual(['E', 'ids']);
    expect(gather.output).toEqual(['/model/embed/Gather/output_0']); // the default output naming
    expect(nodes[1].input).toEqual(['/model/embed/Gather/output_0', 'x']);
    expect(nodes[7].output).toEqual(['vals', 'idx']);
    expect(nodes.every((n) => n.domain === '')).toBe(true);

    // initializers: names, dims, dtypes and bytes exactly
    const inits = new Map(gr.initializer!.map((t) => [t.name!, t]));
    expect([...inits.keys()].sort()).toEqual(['E', 'W', 'b']);
    for (const [name, t] of [
      ['E', E],
      ['W', W],
      ['b', bias],
    ] as const) {
      const p = inits.get(name)!;
      expect(p.dims!.map(num)).toEqual(t.shape);
      expect(p.dataType).toBe(F);
      const back = new Float32Array(Uint8Array.from(p.rawData!).buffer);
      expect(back).toEqual(t.data);
    }
  });

  it('encodes attributes by kind: integer → INT, non-integer and {float} → FLOAT, arrays → INTS, strings, tensors', () => {
    const g = new GraphBuilder('attrs');
    g.input('a', 'float32', [1]);
    g.node('Dummy', ['a'], {
      name: 'n',
      attrs: { i: 3, f: 0.5, f1: { float: 1 }, fs: { floats: [0.25, 2] }, is: [1, -2, 3], s: 'hello', t: { dtype: 'I32', shape: [2], data: Int32Array.from([7, -7]) } },
    });
    const a = decodeModel(g.encode(), 'attrs.onnx').graph!.node![0].attribute!;
    const T = onnx.AttributeProto.AttributeType;
    const by = Object.fromEntries(a.map((x) => [x.name!, x]));
    expect(by.i.type).toBe(T.INT);
    expect(num(by.i.i)).toBe(3);
    expect(by.f.type).toBe(T.FLOAT);
    expect(by.f.f).toBe(0.5);
    expect(by.f1.type).toBe(T.FLOAT); // 1 as a plain number would be an INT: {float} is the way to say 1.0
    expect(by.f1.f).toBe(1);
    expect(by.fs.type).toBe(T.FLOATS);
    expect(by.fs.floats).toEqual([0.25, 2]);
    expect(by.is.type).toBe(T.INTS);
    expect(by.is.ints!.map(num)).toEqual([1, -2, 3]);
    expect(by.s.type).toBe(T.STRING);
    expect(new TextDecoder().decode(by.s.s!)).toBe('hello');
    expect(by.t.type).toBe(T.TENSOR);
    expect(by.t.t!.dataType).toBe(onnx.TensorProto.DataType.INT32);
    expect(Array.from(new Int32Array(Uint8Array.from(by.t.t!.rawData!).buffer))).toEqual([7, -7]);
  });

  it('rejects a missing or duplicate node name and a duplicate initializer with EdgeLLMError', () => {
    const g = new GraphBuilder('errs');
    g.input('a', 'float32', [1]);
    g.node('Identity', ['a'], { name: '/a/Identity' });
    expect(() => g.node('Identity', ['a'], { name: '/a/Identity' })).toThrow(EdgeLLMError);
    expect(() => g.node('Identity', ['a'], { name: '' })).toThrow(/node name must be provided/);
    const t: Tensor = { dtype: 'F32', shape: [1], data: Float32Array.from([1]) };
    g.initializer('w', t);
    expect(() => g.initializer('w', t)).toThrow(/duplicate initializer 'w'/);
  });
});

describe('tensorProto', () => {
  it('serialises only the view of a typed array that sits at an offset in a larger buffer', () => {
    const buf = new Float32Array([9, 9, 1.5, -2.25, 3, 9]);
    const view = new Float32Array(buf.buffer, 2 * 4, 3);
    const p = tensorProto('v', { dtype: 'F32', shape: [3], data: view });
    expect(p.name).toBe('v');
    expect(p.dims).toEqual([3]);
    expect(p.dataType).toBe(onnx.TensorProto.DataType.FLOAT);
    expect(p.rawData!.byteLength).toBe(12);
    expect(Array.from(new Float32Array(Uint8Array.from(p.rawData!).buffer))).toEqual([1.5, -2.25, 3]);
  });

  it('uses the ONNX data type codes of each dtype, little-endian raw bytes', () => {
    const i64 = tensorProto('i', { dtype: 'I64', shape: [2], data: BigInt64Array.from([1n, -3n]) });
    expect(i64.dataType).toBe(onnx.TensorProto.DataType.INT64);
    expect(Array.from(i64.rawData!.subarray(0, 8))).toEqual([1, 0, 0, 0, 0, 0, 0, 0]);
    expect(Array.from(i64.rawData!.subarray(8))).toEqual([0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    expect(tensorProto('u', { dtype: 'U8', shape: [1], data: Uint8Array.from([5]) }).dataType).toBe(onnx.TensorProto.DataType.UINT8);
    expect(tensorProto('h', { dtype: 'F16', shape: [1], data: Uint16Array.from([0x3c00]) }).dataType).toBe(onnx.TensorProto.DataType.FLOAT16);
    expect(tensorProto('s', { dtype: 'F32', shape: [], data: Float32Array.from([1]) }).dims).toEqual([]);
  });
});

describe('running built graphs in onnxruntime-node', () => {
  const ids = [4, 0, 2, 2, 1];
  const x = (() => {
    const rng = mulberry32(99);
    return Float32Array.from({ length: ids.length * D }, () => rng() * 2 - 1);
  })();

  it('computes Gather + Add + MatMul + Add (+ Mul, TopK) as the TypeScript computation does', async () => {
    const { g, E, W, bias } = buildGraph();
    const out = await runGraph(g.encode(), ids, x);
    const ex = expectedOutputs(E.data, W.data, bias.data, ids, x);
    expect(out.y.dims).toEqual([ids.length, OUT]);
    expectClose(out.y.data as Float32Array, ex.y);
    expectClose(out.z.data as Float32Array, ex.z);
    expectClose(out.vals.data as Float32Array, ex.vals);
    expect(out.idx.type).toBe('int64');
    expect(Array.from(out.idx.data as BigInt64Array, Number)).toEqual(ex.idx);
  });

  it('encode(false) leaves the weights out; withInitializers attaches exactly the referenced ones', async () => {
    const { g, E, W, bias } = buildGraph();
    const bare = decodeModel(g.encode(false), 'bare.onnx');
    expect(bare.graph!.initializer).toHaveLength(0);
    // graph inputs and node outputs (the Constants) are not initializers
    expect(referencedInitializers(bare).sort()).toEqual(['E', 'W', 'b']);
    // a store with one tensor no graph reads
    const store = new Map<string, Tensor>([...g.initializers, ['unused', { dtype: 'F32', shape: [1], data: Float32Array.from([0]) }]]);
    const full = withInitializers(bare, store, 'bare.onnx');
    expect(full.graph!.initializer!.map((t) => t.name).sort()).toEqual(['E', 'W', 'b']);
    // tensor data shared, not copied
    const wp = full.graph!.initializer!.find((t) => t.name === 'W')!;
    expect(wp.rawData!.buffer).toBe(W.data.buffer);
    // the input model is left as it was
    expect(bare.graph!.initializer).toHaveLength(0);
    const bytes = onnx.ModelProto.encode(onnx.ModelProto.create(full)).finish();
    const out = await runGraph(bytes, ids, x);
    expectClose(out.y.data as Float32Array, expectedOutputs(E.data, W.data, bias.data, ids, x).y);
  });

  it('withInitializers adds nothing to a model that already holds its initializers', () => {
    const { g } = buildGraph();
    const m = decodeModel(g.encode(true), 'full.onnx');
    expect(referencedInitializers(m)).toEqual([]);
    expect(withInitializers(m, new Map(), 'full.onnx').graph!.initializer).toHaveLength(3);
  });

  it('withInitializers throws FormatError naming the label and the weight when one is missing', () => {
    const { g } = buildGraph();
    const bare = decodeModel(g.encode(false), 'bare.onnx');
    const store = new Map(g.initializers);
    store.delete('W');
    const err = thrownBy(() => withInitializers(bare, store, 'graph.prefill'));
    expect(err).toBeInstanceOf(FormatError);
    expect((err as FormatError).file).toBe('graph.prefill');
    expect((err as FormatError).message).toMatch(/^graph\.prefill: .*'W'/);
    expect((err as FormatError).exitCode).toBe(3);
  });

  it('two graphs over one shared store reuse a weight and each lists only its own initializers', async () => {
    const store = new Map<string, Tensor>();
    const a = buildGraph(store, 1);
    let made = 0;
    const b = new GraphBuilder('second', store);
    b.input('h', 'float32', ['n', D]);
    const w = b.weight('W', () => {
      made++;
      return randF32([D, OUT], mulberry32(5));
    });
    b.node('MatMul', ['h', w], { name: '/second/MatMul', outputNames: ['out'] });
    b.output('out', 'float32', ['n', OUT]);
    expect(made).toBe(0); // W came from the store: the first graph's tensor
    expect(b.initializers.get('W')).toBe(a.W);
    expect(decodeModel(b.encode(), 'second.onnx').graph!.initializer!.map((t) => t.name)).toEqual(['W']);
    const bare = decodeModel(b.encode(false), 'second.onnx');
    expect(referencedInitializers(bare)).toEqual(['W']);
    const full = withInitializers(bare, store, 'second.onnx');
    const s = await ort.InferenceSession.create(onnx.ModelProto.encode(onnx.ModelProto.create(full)).finish());
    const hIn = Float32Array.from([1, 0, 0, 0, 1, 0]);
    const out = await s.run({ h: new ort.Tensor('float32', hIn, [2, D]) });
    await s.release();
    // h rows are unit vectors: the output is rows 0 and 1 of W, exactly (one product by 1, adds of 0)
    expect(Array.from(out.out.data as Float32Array)).toEqual(Array.from(a.W.data.subarray(0, 2 * OUT)));
  });
});

describe('decodeModel on bytes that are not a ModelProto', () => {
  it('throws FormatError naming the label', () => {
    const cases = [
      new TextEncoder().encode('this is not an onnx model'),
      Uint8Array.from([0xff, 0xff, 0xff, 0xff]),
      // a valid model cut short in the middle of a field
      buildGraph().g.encode().subarray(0, 40),
    ];
    for (const bytes of cases) {
      const err = thrownBy(() => decodeModel(bytes, 'weights/graph.onnx'));
      expect(err).toBeInstanceOf(FormatError);
      expect((err as FormatError).file).toBe('weights/graph.onnx');
      expect((err as Error).message).toMatch(/^weights\/graph\.onnx: not a valid ONNX model/);
    }
  });
});

describe('elemTypeOf', () => {
  it('maps the graph I/O dtypes and rejects the others', () => {
    expect(elemTypeOf('F32')).toBe('float32');
    expect(elemTypeOf('I64')).toBe('int64');
    expect(elemTypeOf('U8')).toBe('uint8');
    expect(elemTypeOf('I32')).toBe('int32');
    expect(elemTypeOf('BOOL')).toBe('bool');
    expect(() => elemTypeOf('F16')).toThrow(EdgeLLMError);
    expect(() => elemTypeOf('BF16')).toThrow(/no graph I\/O element type for BF16/);
  });
});
