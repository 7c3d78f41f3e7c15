/**
 * Executable <-> HEF file. Sections:
 *
 * | section                   | kind      | contents                                               |
 * | ------------------------- | --------- | ------------------------------------------------------ |
 * | graph.prefill             | graph     | ONNX ModelProto, no initializers, `prefillLen` tokens  |
 * | graph.decode              | graph     | ONNX ModelProto, no initializers, one token            |
 * | weights                   | weights   | safetensors: the one weight copy both graphs read      |
 * | tokenizer.json            | tokenizer | HuggingFace tokenizer, gzip-compressed (format v2)     |
 * | tokenizer_config.json, generation_config.json | json | when the source has them            |
 * | adapter.<name>            | adapter   | safetensors: one LoRA adapter's A/B codes and scales   |
 *
 * The header (formats/hef.proto HefHeader) carries the config, the quantization scheme, the KV-cache
 * layout with per-layer KV8/KV16 parameters (a float layer of a 'mixed' layout: neither k nor v), both
 * graphs' I/O tables and the LoRA adapters (name, rank,
 * scaling, per-module A8 of A·x, the section holding the tensors).
 */
import { writeHef, openHef, type HefFile, type HefSectionInput } from './hef.js';
import * as fs from 'node:fs';
import { encodeSafetensors, decodeSafetensors, SafetensorsFile, typedArrayOf, readExactly, type PageAlignment } from './safetensors.js';
import { DTYPES } from '../src/ir/tensor.js';
import { EdgeLLMError, FormatError } from '../src/core/errors.js';
import { sha256FileRangeInWorker } from '../src/core/digest.js';
import type { Executable, ExecutableAdapter, GraphPart, KvLayout, MappedWeights } from '../src/ir/executable.js';
import type { PrecisionTable } from '../src/ir/precision.js';
import type { QdqParams } from '../src/ir/quant.js';
import type { Tensor } from '../src/ir/tensor.js';
import type { ValueSpec, ElemType } from './onnx.js';
import { VERSION, artifactTimestamp } from '../src/core/version.js';

/** Alignment of the weights section and of its large tensors in the file (ORT memory-maps external data at 4 KiB-aligned offsets). */
export const WEIGHTS_ALIGNMENT: PageAlignment = { bytes: 4096, minTensorBytes: 64 * 1024 };

const enc = new TextEncoder();
const dec = new TextDecoder();

const specOut = (v: ValueSpec) => ({ name: v.name, dtype: v.type, shape: (v.shape ?? []).map(String) });
const specIn = (v: { name: string; dtype: string; shape: string[] }): ValueSpec => ({
  name: v.name,
  type: v.dtype as ElemType,
  shape: v.shape.map((d) => (/^\d+$/.test(d) ? Number(d) : d)),
});

/**
 * Writes `exe` as a HEF (atomically: a temporary file beside `path`, renamed over it when complete;
 * the same Executable gives the same bytes; the header's `createdAt` is empty unless
 * SOURCE_DATE_EPOCH is set).
 * @param path target file; overwritten if it exists
 * @param exe the compiled model: `prefill.onnx` / `decode.onnx` ModelProto bytes without
 *   initializers (written as sections `graph.prefill` / `graph.decode`), `weights` (initializer name
 *   → Tensor of any dtype and shape, e.g. float32 weights, uint8 qweight [N, n_blocks, group/2] and
 *   float32 scales; written as one safetensors section, built in memory), the tokenizer JSON texts,
 *   and each adapter's tensors as section `adapter.<name>`. The config, quantization summary, KV
 *   layout (maxContext in tokens) and both graphs' I/O tables (seqLen in tokens) go into the header.
 * @throws EdgeLLMError (duplicate names, unknown dtype, bad shape) or ShapeMismatchError (a tensor's
 *   data length or typed-array kind disagrees with its dtype × shape) from encoding a safetensors
 *   section; EdgeLLMError from the HEF writer for duplicate section names (two adapters of one name)
 *   or a header that does not match HefHeader; UsageError for a SOURCE_DATE_EPOCH that is not whole
 *   seconds (nothing is written in these cases); filesystem errors as thrown by node:fs (the
 *   temporary file is removed)
 */
export function writeExecutable(path: string, exe: Executable): void {
  const sections: HefSectionInput[] = [
    { name: 'graph.prefill', kind: 'graph', data: exe.prefill.onnx },
    { name: 'graph.decode', kind: 'graph', data: exe.decode.onnx },
    // page-aligned in the file (the section, and in it every tensor of 64 KiB or more) so a backend can memory-map them
    { name: 'weights', kind: 'weights', data: encodeSafetensors(exe.weights, { producer: `edgellm ${VERSION}` }, WEIGHTS_ALIGNMENT), align: WEIGHTS_ALIGNMENT.bytes },
    // gzip: the Qwen2-1.5B-shaped bench model's 5.37 MB tokenizer.json is stored in 1.08 MB (readSection decompresses it)
    { name: 'tokenizer.json', kind: 'tokenizer', data: enc.encode(exe.tokenizer.tokenizerJson), encoding: 'gzip' },
  ];
  if (exe.tokenizer.tokenizerConfigJson != null) sections.push({ name: 'tokenizer_config.json', kind: 'json', data: enc.encode(exe.tokenizer.tokenizerConfigJson) });
  if (exe.tokenizer.generationConfigJson != null) sections.push({ name: 'generation_config.json', kind: 'json', data: enc.encode(exe.tokenizer.generationConfigJson) });
  for (const a of exe.adapters ?? []) sections.push({ name: `adapter.${a.name}`, kind: 'adapter', data: encodeSafetensors(a.tensors, { producer: `edgellm ${VERSION}` }) });
  const l = exe.kvLayout;
  const graph = (g: GraphPart, section: string) => ({ section, seqLen: g.seqLen, inputs: g.inputs.map(specOut), outputs: g.outputs.map(specOut) });
  writeHef(
    path,
    {
      modelName: exe.modelName,
      edgellmVersion: VERSION,
      configJson: JSON.stringify(exe.config),
      quant: exe.quant,
      kvCache: { numLayers: l.numLayers, numKvHeads: l.numKvHeads, headDim: l.headDim, maxContext: l.maxContext, dtype: l.dtype, layers: l.layers.map((x) => x ?? {}) },
      prefill: graph(exe.prefill, 'graph.prefill'),
      decode: graph(exe.decode, 'graph.decode'),
      sourceSha256: exe.sourceSha256,
      precisionJson: exe.precision ? JSON.stringify(exe.precision) : '',
      createdAt: artifactTimestamp() ?? '', // only with SOURCE_DATE_EPOCH: no wall-clock time in the artifact
      adapters: (exe.adapters ?? []).map((a) => ({
        name: a.name,
        section: `adapter.${a.name}`,
        r: a.r,
        alpha: a.alpha,
        useRslora: a.useRslora,
        bits: a.bits,
        groupSize: a.groupSize,
        modules: a.modules.map((m) => ({ linear: m.linear, rank: m.rank, scaling: m.scaling, act: m.act })),
        baseModelNameOrPath: a.source.baseModelNameOrPath ?? '',
        transforms: a.source.transforms,
        ...(a.source.refit ? { refit: a.source.refit } : {}),
      })),
    },
    sections,
  );
}

/** KV-cache dtypes a header may state (src/ir/executable.ts KvLayout.dtype). */
const KV_DTYPES: readonly string[] = ['uint8', 'uint16', 'float32', 'mixed'];

/** Header QParams -> QdqParams: `bits: 16` for the uint16 grid, absent for uint8 (proto3 reads an unset `bits` as 0). */
const qparamsIn = (q: any): QdqParams => ({ scale: q.scale, zeroPoint: q.zeroPoint, ...(q.bits === 16 ? { bits: 16 as const } : {}) });

/** What a HEF header says, interpreted once: everything of an Executable but the section bytes. */
export interface ExecutableHeader {
  edgellmVersion: string;
  createdAt: string;
  modelName: string;
  config: Executable['config'];
  quant: Executable['quant'];
  kvLayout: KvLayout;
  prefill: GraphHeader;
  decode: GraphHeader;
  sourceSha256: string;
  /** the per-module precision table, when the header states one */
  precision?: PrecisionTable;
  /** adapters without their tensors, each with the section that holds them */
  adapters: (Omit<ExecutableAdapter, 'tensors'> & { section: string })[];
}

/** A graph as the header describes it: its section, tokens per call and I/O table. */
export interface GraphHeader extends Omit<GraphPart, 'onnx'> {
  section: string;
}

/**
 * Interprets the header of an open HEF (the one place its fields are read).
 * @throws FormatError when the config is not a JSON object, a sub-message the executable needs is
 *   absent (quant, kv_cache, prefill, decode, a kv_cache layer's k or v), or a graph/adapter section
 *   it names is absent
 */
export function executableHeader(path: string, hef: Pick<HefFile, 'header' | 'sections'>): ExecutableHeader {
  const h = hef.header;
  // protobufjs gives null for an absent message field (proto3 has no required fields)
  const need = (v: any, field: string) => {
    if (v == null) throw new FormatError(path, `header has no ${field}`);
    return v;
  };
  const graph = (g: any, field: string): GraphHeader => {
    need(g, field);
    if (!hef.sections.has(g.section)) throw new FormatError(path, `header names graph section '${g.section}', which the file does not hold`);
    return { section: g.section, seqLen: g.seqLen, inputs: (g.inputs ?? []).map(specIn), outputs: (g.outputs ?? []).map(specIn) };
  };
  let config;
  try {
    config = JSON.parse(h.configJson);
  } catch {
    throw new FormatError(path, 'header config is not valid JSON');
  }
  if (typeof config !== 'object' || config === null || Array.isArray(config)) throw new FormatError(path, 'header config is not a JSON object');
  need(h.quant, 'quant');
  const kv = need(h.kvCache, 'kv_cache');
  if (!KV_DTYPES.includes(kv.dtype)) throw new FormatError(path, `header kv_cache dtype '${kv.dtype}' is not one of ${KV_DTYPES.join(', ')}`);
  if (kv.dtype === 'mixed' && (kv.layers ?? []).length !== kv.numLayers)
    throw new FormatError(path, `header kv_cache is 'mixed' but lists ${(kv.layers ?? []).length} layers for ${kv.numLayers}`);
  let precision: PrecisionTable | undefined;
  if (h.precisionJson) {
    try {
      precision = JSON.parse(h.precisionJson);
    } catch {
      throw new FormatError(path, 'header precision is not valid JSON');
    }
    const p = precision as unknown as Record<string, unknown>;
    if (typeof p !== 'object' || p === null || typeof p.linears !== 'object' || typeof p.activations !== 'object' || !Array.isArray(p.kvCache))
      throw new FormatError(path, 'header precision is not a precision table (an object with linears, activations and kvCache)');
  }
  return {
    edgellmVersion: h.edgellmVersion,
    createdAt: h.createdAt,
    modelName: h.modelName,
    config,
    quant: { ...h.quant, lmHeadBits: h.quant?.lmHeadBits || 32 },
    kvLayout: {
      numLayers: kv.numLayers,
      numKvHeads: kv.numKvHeads,
      headDim: kv.headDim,
      maxContext: kv.maxContext,
      dtype: kv.dtype,
      layers: (kv.layers ?? []).map((x: any, i: number) => {
        if (kv.dtype === 'mixed' && x.k == null && x.v == null) return null; // a float32 layer
        const [k, v] = [need(x.k, `k in kv_cache layer ${i}`), need(x.v, `v in kv_cache layer ${i}`)];
        return { k: qparamsIn(k), v: qparamsIn(v), ...(x.kOffset?.length ? { kOffset: Array.from(x.kOffset as number[]) } : {}) };
      }),
    },
    prefill: graph(h.prefill, 'prefill graph'),
    decode: graph(h.decode, 'decode graph'),
    sourceSha256: h.sourceSha256,
    ...(precision ? { precision } : {}),
    adapters: (h.adapters ?? []).map((a: any) => {
      if (!hef.sections.has(a.section)) throw new FormatError(path, `header names adapter section '${a.section}', which the file does not hold`);
      return {
        name: a.name,
        section: a.section,
        r: a.r,
        alpha: a.alpha,
        useRslora: a.useRslora,
        bits: a.bits,
        groupSize: a.groupSize,
        modules: (a.modules ?? []).map((m: any) => ({ linear: m.linear, rank: m.rank, scaling: m.scaling, ...(m.act ? { act: { scale: m.act.scale, zeroPoint: m.act.zeroPoint } } : {}) })),
        source: {
          baseModelNameOrPath: a.baseModelNameOrPath || null,
          transforms: a.transforms ?? [],
          ...(a.refit ? { refit: { modules: a.refit.modules, windows: a.refit.windows, residualBefore: a.refit.residualBefore, residualAfter: a.refit.residualAfter } } : {}),
        },
      };
    }),
  };
}

/**
 * When the sha256 of a mapped weights section is checked: `now` (streamed through sha256 while
 * reading the HEF), `deferred` ({@link verifyMappedWeights}, by the backend that maps them: on a
 * worker thread while its onnxruntime session is created, over its RAM copy, src/engine/session.ts;
 * or before it reads them into memory; so the check adds no time to a load) or `skip`
 * (`--no-verify`; `edgellm verify FILE` checks everything).
 */
export type WeightsVerification = 'now' | 'deferred' | 'skip';

/**
 * Reads a HEF into an Executable (every section it reads is checksum-verified on read).
 * @param opts.mapWeights leave the page-aligned tensors of 64 KiB or more in the file, described by
 *   `exe.mappedWeights` for the backend to memory-map; the others are read into `exe.weights`
 * @param opts.verify when the mapped weights section's sha256 is checked (default 'now'; see
 *   {@link WeightsVerification}); sections read into memory are always checked
 * @throws FormatError for a corrupt or inconsistent file
 */
export function readExecutable(path: string, opts: { mapWeights?: boolean; verify?: WeightsVerification } = {}): Executable {
  const hef: HefFile = openHef(path);
  try {
    const h = executableHeader(path, hef);
    const text = (name: string) => (hef.sections.has(name) ? dec.decode(hef.readSection(name)) : null);
    const graph = ({ section, ...g }: GraphHeader): GraphPart => ({ onnx: hef.readSection(section), ...g });
    const { weights, mappedWeights } = opts.mapWeights ? mapWeightsSection(path, hef, opts.verify ?? 'now') : { weights: decodeSafetensors(hef.readSection('weights'), `${path}:weights`).tensors, mappedWeights: undefined };
    const tokenizerJson = text('tokenizer.json');
    if (tokenizerJson == null) throw new FormatError(path, "section 'tokenizer.json' is missing");
    return {
      modelName: h.modelName,
      config: h.config,
      quant: h.quant,
      ...(h.precision ? { precision: h.precision } : {}),
      kvLayout: h.kvLayout,
      prefill: graph(h.prefill),
      decode: graph(h.decode),
      weights,
      tokenizer: { tokenizerJson, tokenizerConfigJson: text('tokenizer_config.json'), generationConfigJson: text('generation_config.json') },
      sourceSha256: h.sourceSha256,
      adapters: h.adapters.map(({ section, ...a }) => ({ ...a, tensors: decodeSafetensors(hef.readSection(section), `${path}:${section}`).tensors })),
      ...(mappedWeights ? { mappedWeights } : {}),
    };
  } finally {
    hef.close();
  }
}

/** The weights section split into tensors to map (page-aligned, ≥ 64 KiB) and tensors read now. */
function mapWeightsSection(path: string, hef: HefFile, verify: WeightsVerification): { weights: Map<string, Tensor>; mappedWeights: MappedWeights } {
  const sec = hef.sections.get('weights');
  if (!sec) throw new FormatError(path, "section 'weights' is missing");
  if (verify === 'now') hef.verifySection(sec);
  const st = SafetensorsFile.open(path, { offset: sec.offset, size: sec.length, label: `${path}:weights` });
  try {
    const weights = new Map<string, Tensor>();
    const tensors: MappedWeights['tensors'] = new Map();
    for (const e of st.entries.values()) {
      const offset = sec.offset + e.offset;
      if (e.byteLength >= WEIGHTS_ALIGNMENT.minTensorBytes && offset % WEIGHTS_ALIGNMENT.bytes === 0) tensors.set(e.name, { dtype: e.dtype, shape: [...e.shape], offset, byteLength: e.byteLength });
      else weights.set(e.name, st.read(e.name));
    }
    const unverified = verify === 'deferred' ? { offset: sec.offset, length: sec.length, sha256: sec.sha256, label: "section 'weights'" } : undefined;
    return { weights, mappedWeights: { file: path, tensors, ...(unverified ? { unverified } : {}) } };
  } finally {
    st.close();
  }
}

/**
 * The deferred sha256 check of mapped weights (a no-op when none is pending), on a worker thread so
 * a load can create its onnxruntime session meanwhile: hashes the pending range of `copy` (a copy of
 * `m.file` holding the range at the same offsets, e.g. the backend's RAM-backed copy, so the bytes
 * checked are the bytes mapped), or of `m.file` itself. Clears `m.unverified` once it matches.
 * @throws (rejects with) FormatError naming `m.file` for a short file or a sha256 mismatch
 */
export async function verifyMappedWeights(m: MappedWeights, copy: string = m.file): Promise<void> {
  const u = m.unverified;
  if (!u) return;
  const { digest, done } = await sha256FileRangeInWorker(copy, u.offset, u.length);
  if (done !== u.length) throw new FormatError(m.file, `${u.label}: ${done} of its ${u.length} bytes were checked (the file ends first)`);
  if (!digest.equals(u.sha256)) throw new FormatError(m.file, `${u.label} is corrupt: sha256 mismatch`);
  delete m.unverified;
}

/**
 * Reads mapped weights into memory (for a backend that cannot map them): all of them, or `names`.
 * @throws FormatError when the file is shorter than a tensor's range says, or a name is not mapped
 */
export function readMappedWeights(m: MappedWeights, names: Iterable<string> = m.tensors.keys()): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  const fd = fs.openSync(m.file, 'r');
  try {
    for (const name of names) {
      const t = m.tensors.get(name);
      if (!t) throw new FormatError(m.file, `the weights section holds no tensor '${name}'`);
      const bytes = new Uint8Array(t.byteLength);
      readExactly(fd, bytes, t.offset, m.file, `tensor '${name}'`);
      out.set(name, { dtype: t.dtype, shape: [...t.shape], data: typedArrayOf(t.dtype, bytes, t.byteLength / DTYPES[t.dtype].bytes) });
    }
  } finally {
    fs.closeSync(fd);
  }
  return out;
}
