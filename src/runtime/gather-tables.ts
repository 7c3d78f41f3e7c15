/**
 * One RAM copy of a tied, weight-quantized embedding table (the simulator's mapped load).
 *
 * A tied model's embedding lookup (com.microsoft GatherBlockQuantized) reads lm_head's MatMulNBits
 * initializer (src/compiler/lowering.ts `embedding`). When one initializer feeds both, onnxruntime
 * prepacks a copy for MatMulNBits and keeps the original alive for the gather: the one 4-bit table of
 * the file is two in RAM (Qwen2-1.5B: +111 MiB, every page of the mapping touched by prepacking). The
 * gather's scales come through a Reshape, which constant folding turns into a third, anonymous copy
 * of lm_head's scales (+56 MiB at group 16).
 *
 * Here the gather reads its own initializers instead: aliases of the same bytes of the mapped file
 * (the same external-data offset and length, onnx/docs/ExternalData.md), the scales already in the
 * gather's [V, n_blocks, 1] shape. ORT maps each initializer on its own, so once MatMulNBits has
 * prepacked its table the last user of that mapping is gone and ORT releases it; the gather's mapping
 * keeps resident only the rows looked up. Same bytes, same kernels: the outputs are bit-identical.
 */
import type onnxProto from 'onnx-proto';
import type { MappedWeights } from '../ir/executable.js';

/** Suffix of the gather's alias initializers. */
const ALIAS = '.gather';

/**
 * `model` with every GatherBlockQuantized whose table (and, through a Reshape, scales) is a mapped
 * initializer also read by another node switched to aliases of the same file bytes, and those
 * aliases (name -> the bytes' reference in `mapped.file`, for CheckedSession.createMapped); the
 * Reshape is dropped when nothing else reads it. Unchanged (the same object, no aliases) when there
 * is none.
 */
export function ownGatherTables(
  model: onnxProto.onnx.IModelProto,
  mapped: MappedWeights,
): { model: onnxProto.onnx.IModelProto; aliases: MappedWeights['tensors'] } {
  const aliases: MappedWeights['tensors'] = new Map();
  const nodes = model.graph?.node ?? [];
  const gathers = nodes.filter((n) => n.opType === 'GatherBlockQuantized');
  if (gathers.length === 0) return { model, aliases };
  const readers = new Map<string, number>();
  for (const n of nodes) for (const i of n.input ?? []) if (i) readers.set(i, (readers.get(i) ?? 0) + 1);
  const producer = new Map<string, onnxProto.onnx.INodeProto>();
  for (const n of nodes) for (const o of n.output ?? []) producer.set(o, n);
  const dropped = new Set<onnxProto.onnx.INodeProto>();
  const rewritten = new Map<onnxProto.onnx.INodeProto, onnxProto.onnx.INodeProto>();
  for (const n of gathers) {
    const input = [...(n.input ?? [])];
    const [data, , scales] = input;
    const table = mapped.tensors.get(data);
    if (!table || (readers.get(data) ?? 0) < 2) continue;
    aliases.set(data + ALIAS, table);
    input[0] = data + ALIAS;
    // scales: a mapped initializer, or a Reshape of one to [V, n_blocks, 1]
    const reshape = producer.get(scales)?.opType === 'Reshape' ? producer.get(scales) : undefined;
    const source = reshape ? reshape.input![0] : scales;
    const sc = mapped.tensors.get(source);
    if (sc && table.shape.length === 3) {
      aliases.set(source + ALIAS, { ...sc, shape: [table.shape[0], table.shape[1], 1] });
      input[2] = source + ALIAS;
      if (reshape && readers.get(scales) === 1) dropped.add(reshape);
    }
    rewritten.set(n, { ...n, input });
  }
  if (rewritten.size === 0) return { model, aliases };
  const node = nodes.filter((n) => !dropped.has(n)).map((n) => rewritten.get(n) ?? n);
  return { model: { ...model, graph: { ...model.graph!, node } }, aliases };
}
