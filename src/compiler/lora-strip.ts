/**
 * The base graph of a graph compiled with LoRA branches: every branch the lowering added
 * (src/compiler/lowering.ts `loraBranch`) removed, so that a runtime with no adapter selected runs
 * the same graph a HEF compiled without adapters holds, instead of feeding rank-0 ("no adapter")
 * tensors through branches that add exact zeros (LoRA, Hu et al. 2021, §4.1: h = W₀x + BAx).
 *
 * ```
 * before:  y ─┬──────────────────────────────────────────────┐
 *          x ─┴─ lora/Flatten ─ lora/A(Gemm, lora.<l>.A) ─ [QDQ(lora.<l>.act_*)] ─ lora/B(Gemm, lora.<l>.B) ─ lora/Unflatten ─ lora/Add ─> consumers
 * after:   y ─> consumers
 * ```
 *
 * Branch nodes are found by dataflow: every node that (transitively) reads a `lora.*` graph input
 * ({@link parseLoraInput}) is a branch node, up to the `Add` that merges a branch value into a
 * value that does not depend on one (the base output y). The `/lora/` path segment the lowering
 * writes into the names of those nodes is checked against the dataflow, both ways, so a graph built
 * some other way is refused rather than cut in the wrong place. Node order is not relied upon (the
 * nodes are sorted topologically here); the kept nodes keep their relative order.
 */
import type onnxProto from 'onnx-proto';
import { EdgeLLMError } from '../core/errors.js';
import { parseLoraInput } from './io-contract.js';

type ModelProto = onnxProto.onnx.IModelProto;
type NodeProto = onnxProto.onnx.INodeProto;

/** The path segment the lowering writes into the name of every LoRA branch node: `<path>/lora/<op>`. */
const LORA_SEGMENT = 'lora';
/** Attribute types holding subgraphs (AttributeProto.AttributeType GRAPH, GRAPHS): not handled. */
const GRAPH_ATTRIBUTES = new Set([5, 10]);

const isLoraNodeName = (name: string | null | undefined) => (name ?? '').split('/').includes(LORA_SEGMENT);

/** The graph's `lora.<linear>.A/B/act_scale/act_zero_point` inputs, in declaration order. */
export function loraInputsOf(model: ModelProto): string[] {
  return (model.graph?.input ?? []).map((v) => v.name ?? '').filter((n) => parseLoraInput(n) !== null);
}

/** Whether the graph has `lora.*` inputs, i.e. LoRA branches that {@link withoutLora} would remove. */
export function hasLoraInputs(model: ModelProto): boolean {
  return loraInputsOf(model).length > 0;
}

/**
 * The graph without its LoRA branches: the base graph, whose outputs equal the LoRA graph's outputs
 * with "no adapter" feeds (rank-0 A [0, in] and B [out, 0], src/compiler/lora-feeds.ts) bit for bit,
 * since there the branch value (x·Aᵀ)·Bᵀ, a contraction over rank 0, is all +0 and y + 0 = y (up to
 * the sign of a zero: −0 + 0 = +0, which compares equal).
 *
 * - every node depending on a `lora.*` input is removed, and every merging `Add(y, branch)` too:
 *   its consumers read y instead (a graph output it produced is then an `Identity` of y, so output
 *   names stay those of the contract);
 * - the `lora.*` graph inputs are dropped (the other inputs stay, used or not: they are the I/O
 *   contract), and so are the nodes, initializers and value_info entries nothing needs any more
 *   (the branch's Flatten and its shape constants);
 * - the input is not modified; kept nodes are the input's node objects (nodes whose inputs change
 *   are copies). A graph without `lora.*` inputs is returned as is (the same object).
 *
 * Works on a graph with or without its initializers attached (weights a node reads that no node
 * produces count as initializers either way), e.g. `decodeModel(exe.prefill.onnx, …)` before
 * `withInitializers`.
 * @param model an ONNX ModelProto as the lowering emits it (src/compiler/lower.ts), e.g. a HEF's
 *   prefill or decode graph
 * @returns the ModelProto of the base graph: the same inputs minus `lora.*`, the same outputs
 * @throws EdgeLLMError when the graph is not what the lowering emits: a value depending on a `lora.*`
 *   input reaches a graph output other than through a merging Add; a branch node (or a merging Add)
 *   is not named `…/lora/…`, or a node so named is left after stripping; a node has a subgraph
 *   attribute (If, Loop, Scan); two nodes produce one value; the nodes form a cycle
 */
export function withoutLora(model: ModelProto): ModelProto {
  const g = model.graph;
  const loraInputs = new Set(loraInputsOf(model));
  if (!g || loraInputs.size === 0) return model;
  const label = `withoutLora(${g.name || 'graph'})`;
  const nodes = g.node ?? [];
  // a subgraph may read outer values without naming them as inputs: the dataflow below cannot follow it
  const nested = nodes.find((n) => (n.attribute ?? []).some((a) => GRAPH_ATTRIBUTES.has(a.type ?? 0)));
  if (nested) throw new EdgeLLMError(`${label}: node '${nested.name}' (${nested.opType}) has a subgraph, which the lowering never emits: cannot strip LoRA branches from it`);
  const order = topologicalOrder(nodes, label);

  // 1. dataflow from the lora.* inputs, in topological order (each node's inputs are final when it is visited)
  const tainted = new Set<string>(loraInputs);
  /** merged value -> the base value it equals with rank-0 feeds */
  const alias = new Map<string, string>();
  const resolve = (v: string) => {
    while (alias.has(v)) v = alias.get(v)!;
    return v;
  };
  const removed = new Set<number>();
  let merges = 0;
  let misnamed: { n: NodeProto; value: string } | undefined;
  for (const i of order) {
    const n = nodes[i];
    const ins = n.input ?? [];
    const hit = ins.filter((v) => tainted.has(v));
    if (hit.length === 0) continue;
    // reported after the graph outputs are checked: a branch value reaching an output is the more telling error
    if (!isLoraNodeName(n.name)) misnamed ??= { n, value: hit[0] };
    removed.add(i);
    const clean = ins.filter((v) => !tainted.has(v));
    if (n.opType === 'Add' && (n.domain ?? '') === '' && ins.length === 2 && hit.length === 1 && clean.length === 1 && (n.output ?? []).length === 1) {
      // the merge y + branch: its output is y where the branch adds zeros
      alias.set(n.output![0], clean[0]);
      merges++;
    } else for (const o of n.output ?? []) if (o) tainted.add(o);
  }

  // 2. graph outputs: a merged output becomes Identity(y); a branch value must not escape
  const names = new Set(nodes.map((n) => n.name ?? ''));
  const bypass: NodeProto[] = [];
  for (const out of g.output ?? []) {
    const name = out.name ?? '';
    if (tainted.has(name))
      throw new EdgeLLMError(`${label}: graph output '${name}' depends on a LoRA input other than through a merging Add (e.g. a capture of the branch): it has no base value`);
  }
  if (misnamed)
    throw new EdgeLLMError(
      `${label}: node '${misnamed.n.name}' (${misnamed.n.opType}) reads LoRA value '${misnamed.value}' but is not named '<path>/${LORA_SEGMENT}/…' as the lowering's LoRA branch nodes are; refusing to remove it`,
    );
  for (const out of g.output ?? []) {
    const name = out.name ?? '';
    if (!alias.has(name)) continue;
    let id = `${name}/base`;
    for (let k = 1; names.has(id); k++) id = `${name}/base_${k}`;
    names.add(id);
    bypass.push({ opType: 'Identity', name: id, domain: '', input: [resolve(name)], output: [name], attribute: [] });
  }

  // 3. rewire, then keep only what the graph outputs need
  const rewired = nodes.map((n, i) => {
    if (removed.has(i)) return null;
    const ins = n.input ?? [];
    return ins.some((v) => alias.has(v)) ? { ...n, input: ins.map(resolve) } : n;
  });
  const need = new Set<string>((g.output ?? []).map((o) => o.name ?? ''));
  for (const b of bypass) for (const v of b.input!) need.add(v);
  const live = new Set<number>();
  for (const i of [...order].reverse()) {
    const n = rewired[i];
    if (!n || !(n.output ?? []).some((o) => need.has(o))) continue;
    live.add(i);
    for (const v of n.input ?? []) if (v) need.add(v);
  }
  const kept = [...rewired.filter((n, i): n is NodeProto => n !== null && live.has(i)), ...bypass];
  const left = kept.find((n) => isLoraNodeName(n.name) && !bypass.includes(n));
  if (left)
    throw new EdgeLLMError(`${label}: node '${left.name}' (${left.opType}) is named as a LoRA branch node but does not depend on a LoRA input and is still needed after stripping ${merges} branches`);

  const inputs = (g.input ?? []).filter((v) => !loraInputs.has(v.name ?? ''));
  // an initializer may double as a graph input's default (IR >= 4): kept while the input is
  for (const v of inputs) need.add(v.name ?? '');
  const produced = new Set(kept.flatMap((n) => n.output ?? []));
  const used = (v: string) => need.has(v) || produced.has(v);
  return {
    ...model,
    graph: {
      ...g,
      node: kept,
      input: inputs,
      initializer: (g.initializer ?? []).filter((t) => need.has(t.name ?? '')),
      sparseInitializer: (g.sparseInitializer ?? []).filter((t) => need.has(t.values?.name ?? '')),
      valueInfo: (g.valueInfo ?? []).filter((v) => used(v.name ?? '')),
    },
  };
}

/**
 * Node indices in an order where every node comes after the producers of its inputs (Kahn's
 * algorithm). Values no node produces (graph inputs, initializers, weights attached later, the
 * empty name of an omitted optional input) are available from the start.
 * @throws EdgeLLMError when two nodes produce one value or the nodes form a cycle
 */
function topologicalOrder(nodes: readonly NodeProto[], label: string): number[] {
  const producer = new Map<string, number>();
  nodes.forEach((n, i) => {
    for (const o of n.output ?? []) {
      if (!o) continue;
      if (producer.has(o)) throw new EdgeLLMError(`${label}: value '${o}' is produced by two nodes ('${nodes[producer.get(o)!].name}' and '${n.name}')`);
      producer.set(o, i);
    }
  });
  const waiting = nodes.map(() => 0);
  const consumers = nodes.map((): number[] => []);
  nodes.forEach((n, i) => {
    for (const v of new Set(n.input ?? [])) {
      const p = producer.get(v);
      if (p === undefined) continue;
      waiting[i]++;
      consumers[p].push(i);
    }
  });
  const order = nodes.map((_, i) => i).filter((i) => waiting[i] === 0);
  for (let k = 0; k < order.length; k++) for (const c of consumers[order[k]]) if (--waiting[c] === 0) order.push(c);
  if (order.length !== nodes.length) {
    const stuck = nodes.findIndex((_, i) => waiting[i] > 0);
    throw new EdgeLLMError(`${label}: the nodes form a cycle (through '${nodes[stuck].name}'): not a DAG`);
  }
  return order;
}
