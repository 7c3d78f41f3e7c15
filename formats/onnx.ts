/**
 * A tiny ONNX graph builder over onnx.proto (the `onnx-proto` package, protobufjs-generated), in the
 * style of onnxruntime-genai's builder: every node goes through {@link GraphBuilder.node}, names are
 * required paths (`/model/layers.3/attn/q_proj/MatMul`), outputs are `${name}/output_{i}`, and every
 * graph input/output carries a dtype and a (possibly symbolic) shape.
 *
 * Initializers are kept apart from the graph so that one weight set can serve several graphs
 * (prefill and decode): {@link GraphBuilder.toModelProto} can leave them out, and
 * {@link withInitializers} adds them back from a shared store at load time.
 */
import onnxProto from 'onnx-proto';
import { DTYPES, type DType, type Tensor } from '../src/ir/tensor.js';
import { EdgeLLMError, FormatError } from '../src/core/errors.js';
import type { ElemType, Dim, ValueSpec } from '../src/ir/executable.js';

export type { ElemType, Dim, ValueSpec } from '../src/ir/executable.js';

export const onnx = onnxProto.onnx;


const ELEM: Record<ElemType, number> = { float32: 1, uint8: 2, uint16: 4, int32: 6, int64: 7, bool: 9 };

export type AttrValue = number | string | number[] | { float: number } | { floats: number[] } | Tensor;


/** Default opsets: ai.onnx 17 and com.microsoft 1 (MatMulNBits). */
export const OPSETS = { '': 17, 'com.microsoft': 1 } as const;

/** Serialises a Tensor as an ONNX TensorProto with raw little-endian data. */
export function tensorProto(name: string, t: Tensor): onnxProto.onnx.ITensorProto {
  const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  return { name, dataType: DTYPES[t.dtype].onnx, dims: t.shape, rawData: bytes };
}

function attribute(name: string, v: AttrValue): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof v === 'number') return Number.isInteger(v) ? { name, type: T.INT, i: v } : { name, type: T.FLOAT, f: v };
  if (typeof v === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(v) };
  if (Array.isArray(v)) return { name, type: T.INTS, ints: v };
  if ('float' in v) return { name, type: T.FLOAT, f: v.float };
  if ('floats' in v) return { name, type: T.FLOATS, floats: v.floats };
  return { name, type: T.TENSOR, t: tensorProto(name, v) };
}

export interface NodeOptions {
  /** required unique node name, a path like `/model/layers.0/attn/Softmax` */
  name: string;
  domain?: string;
  attrs?: Record<string, AttrValue>;
  /** number of outputs (default 1) */
  outputs?: number;
  /** explicit output names instead of `${name}/output_i` */
  outputNames?: string[];
}

/** Builds one ONNX graph. */
export class GraphBuilder {
  private readonly nodes: onnxProto.onnx.INodeProto[] = [];
  private readonly inputs: ValueSpec[] = [];
  private readonly outputs: ValueSpec[] = [];
  /** initializer name -> tensor (kept apart; see class doc) */
  readonly initializers: Map<string, Tensor>;
  private readonly nodeNames = new Set<string>();
  private readonly ownInitializers = new Set<string>();
  private constCount = 0;

  /**
   * @param shared an initializer store shared with other graphs of the same model (prefill and
   *   decode): {@link weight} reuses a tensor already in it instead of building it again.
   */
  constructor(
    readonly name: string,
    shared?: Map<string, Tensor>,
  ) {
    this.initializers = shared ?? new Map();
  }

  /** Declares a graph input; returns its name. */
  input(name: string, type: ElemType, shape: Dim[]): string {
    this.inputs.push({ name, type, shape });
    return name;
  }

  /** Declares `value` (an existing value name) as a graph output under its own name. */
  output(name: string, type: ElemType, shape: Dim[] | null): void {
    this.outputs.push({ name, type, shape });
  }

  /** Adds a named weight; throws on duplicate names. Returns its name. */
  initializer(name: string, t: Tensor): string {
    if (this.ownInitializers.has(name)) throw new EdgeLLMError(`GraphBuilder(${this.name}): duplicate initializer '${name}'`);
    this.ownInitializers.add(name);
    this.initializers.set(name, t);
    return name;
  }

  /**
   * A named weight built by `make` only if the (shared) store does not hold it yet; a weight may be
   * referenced any number of times. Returns its name.
   */
  weight(name: string, make: () => Tensor): string {
    if (!this.initializers.has(name)) this.initializers.set(name, make());
    this.ownInitializers.add(name);
    return name;
  }

  /** A small constant (kept inside the graph as a Constant node, never shared). */
  constant(t: Tensor, label = 'const'): string {
    const name = `/model/constants/${t.dtype}/${label}_${this.constCount++}`;
    return this.node('Constant', [], { name, attrs: { value: t } });
  }

  /** Scalar/1-D int64 constant. */
  ints(values: number[], scalar = false): string {
    const data = BigInt64Array.from(values.map((v) => BigInt(v)));
    return this.constant({ dtype: 'I64', shape: scalar ? [] : [values.length], data }, 'i64');
  }

  /** Scalar/1-D float32 constant. */
  floats(values: number[], scalar = false): string {
    return this.constant({ dtype: 'F32', shape: scalar ? [] : [values.length], data: Float32Array.from(values) }, 'f32');
  }

  /** Adds a node; returns its first output name (use {@link nodeN} for several outputs). */
  node(op: string, inputs: string[], opts: NodeOptions): string {
    return this.nodeN(op, inputs, opts)[0];
  }

  /** Adds a node; returns all its output names. */
  nodeN(op: string, inputs: string[], opts: NodeOptions): string[] {
    if (!opts.name) throw new EdgeLLMError(`GraphBuilder(${this.name}): node name must be provided for ${op}`);
    if (this.nodeNames.has(opts.name)) throw new EdgeLLMError(`GraphBuilder(${this.name}): duplicate node name '${opts.name}'`);
    this.nodeNames.add(opts.name);
    const outs = opts.outputNames ?? Array.from({ length: opts.outputs ?? 1 }, (_, i) => `${opts.name}/output_${i}`);
    this.nodes.push({
      opType: op,
      name: opts.name,
      domain: opts.domain ?? '',
      input: inputs,
      output: outs,
      attribute: Object.entries(opts.attrs ?? {}).map(([k, v]) => attribute(k, v)),
    });
    return outs;
  }

  /** Graph inputs (name, dtype, shape), in declaration order. */
  get inputSpecs(): readonly ValueSpec[] {
    return this.inputs;
  }
  /** Graph outputs (name, dtype, shape), in declaration order. */
  get outputSpecs(): readonly ValueSpec[] {
    return this.outputs;
  }

  /**
   * The ModelProto. With `includeInitializers: false` the weights are left out (they are attached
   * at load time by {@link withInitializers}).
   */
  toModelProto(includeInitializers = true): onnxProto.onnx.IModelProto {
    const vi = (v: ValueSpec): onnxProto.onnx.IValueInfoProto => ({
      name: v.name,
      type: {
        tensorType: {
          elemType: ELEM[v.type],
          shape: v.shape ? { dim: v.shape.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } : null,
        },
      },
    });
    return {
      irVersion: 8,
      producerName: 'edgellm',
      opsetImport: Object.entries(OPSETS).map(([domain, version]) => ({ domain, version })),
      graph: {
        name: this.name,
        node: this.nodes,
        input: this.inputs.map(vi),
        output: this.outputs.map(vi),
        initializer: includeInitializers ? [...this.ownInitializers].map((n) => tensorProto(n, this.initializers.get(n)!)) : [],
      },
    };
  }

  /** Serialised ModelProto bytes. */
  encode(includeInitializers = true): Uint8Array {
    return onnx.ModelProto.encode(onnx.ModelProto.create(this.toModelProto(includeInitializers))).finish();
  }
}

/** Decodes ModelProto bytes. @throws FormatError naming `label` */
export function decodeModel(bytes: Uint8Array, label: string): onnxProto.onnx.ModelProto {
  try {
    return onnx.ModelProto.decode(bytes);
  } catch (e) {
    throw new FormatError(label, `not a valid ONNX model: ${(e as Error).message}`);
  }
}

/** Names a graph reads that no node produces and that are not graph inputs: its initializers. */
export function referencedInitializers(model: onnxProto.onnx.IModelProto): string[] {
  const g = model.graph!;
  const produced = new Set<string>([...(g.input ?? []).map((i) => i.name!), ...(g.initializer ?? []).map((i) => i.name!)]);
  for (const n of g.node ?? []) for (const o of n.output ?? []) produced.add(o);
  const need = new Set<string>();
  for (const n of g.node ?? []) for (const i of n.input ?? []) if (i && !produced.has(i)) need.add(i);
  return [...need];
}

/**
 * The ModelProto with the graph's missing initializers taken from `weights` (tensor data shared,
 * not copied), except the names in `elsewhere` (added by {@link withExternalInitializers}).
 * @throws FormatError when a referenced initializer is not in `weights`
 */
export function withInitializers(model: onnxProto.onnx.IModelProto, weights: Map<string, Tensor>, label: string, elsewhere?: ReadonlySet<string>): onnxProto.onnx.IModelProto {
  const add: onnxProto.onnx.ITensorProto[] = [];
  for (const name of referencedInitializers(model)) {
    if (elsewhere?.has(name)) continue;
    const t = weights.get(name);
    if (!t) throw new FormatError(label, `graph reads weight '${name}', which the weights section does not hold`);
    add.push(tensorProto(name, t));
  }
  return { ...model, graph: { ...model.graph!, initializer: [...(model.graph!.initializer ?? []), ...add] } };
}

/**
 * The ModelProto with initializers stored as ONNX external data (onnx/docs/ExternalData.md): each
 * one `location` (a file name relative to the model file), `offset` and `length` in bytes; only the
 * ones the graph references are added.
 */
export function withExternalInitializers(
  model: onnxProto.onnx.IModelProto,
  refs: Map<string, { dtype: DType; shape: number[]; offset: number; byteLength: number }>,
  location: string,
): onnxProto.onnx.IModelProto {
  const add: onnxProto.onnx.ITensorProto[] = [];
  for (const name of referencedInitializers(model)) {
    const r = refs.get(name);
    if (!r) continue;
    add.push({
      name,
      dataType: DTYPES[r.dtype].onnx,
      dims: r.shape,
      dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [
        { key: 'location', value: location },
        { key: 'offset', value: String(r.offset) },
        { key: 'length', value: String(r.byteLength) },
      ],
    });
  }
  return { ...model, graph: { ...model.graph!, initializer: [...(model.graph!.initializer ?? []), ...add] } };
}

/** ONNX element type name of a DType (for TensorSpec records). */
export function elemTypeOf(dtype: DType): ElemType {
  const m: Partial<Record<DType, ElemType>> = { F32: 'float32', I64: 'int64', U8: 'uint8', U16: 'uint16', I32: 'int32', BOOL: 'bool' };
  const e = m[dtype];
  if (!e) throw new EdgeLLMError(`no graph I/O element type for ${dtype}`);
  return e;
}
