/**
 * Model <-> HAR. The HAR (formats/har.ts, a verified tar) holds:
 *
 * | member                          | contents                                                      |
 * | ------------------------------- | ------------------------------------------------------------- |
 * | manifest.json                   | format version, edgellm version, sha256 of the source weights,|
 * |                                 | normalised config, passes with options, quantization scheme   |
 * |                                 | and QuaRot's online rotations (`online`; their K×K factors    |
 * |                                 | are tensors `online.r3/r4.factor` in weights.safetensors);    |
 * |                                 | `precision`: the per-module precision table of a recipe       |
 * |                                 | (src/ir/precision.ts; only when quantized with --recipe)      |
 * | weights.safetensors             | every weight: float tensors, and qweight/scales of quantized  |
 * |                                 | linears (MatMulNBits layout, see src/ir/model.ts)             |
 * |                                 | (any weight set over 2 GiB is split into numbered shards,     |
 * |                                 | `weights-00001-of-00003.safetensors`, …: one JS typed array   |
 * |                                 | holds at most 4 GiB; the emulation members likewise)          |
 * | ranges.json                     | static activation ranges {scale, zeroPoint} (uint8; a 16-bit  |
 * |                                 | point's add `bits: 16`, zero point ≤ 65535; float points of a |
 * |                                 | recipe have none), per-layer KV8 ranges, K-cache offsets      |
 * | report.json                     | per-layer quantization error (when the passes measured it)    |
 * | emulation/native.safetensors    | the source fp32 weights (`eval --emulate native`)             |
 * | emulation/optimized.safetensors | fp32 weights after fold-norms/QuaRot (`--emulate optimized`)  |
 * | adapters/<name>.safetensors     | one LoRA adapter's A/B (codes + scales); its rank, scaling,   |
 * |                                 | A8 ranges are in the manifest's `adapters` list               |
 * | tokenizer/tokenizer.json (+ tokenizer_config.json, generation_config.json when present) |
 */
import { readHar, writeHar, type HarMember, type ProducedMember } from './har.js';
import { encodeSafetensors, decodeSafetensors, SafetensorsFile } from './safetensors.js';
import { FormatError } from '../src/core/errors.js';
import { checkModelManifest, checkRanges } from './har-manifest.js';
import type { Model, QuantState, ModelConfig, PassRecord, LinearQuant, QuantReport, LoraAdapter, LazyTensor } from '../src/ir/model.js';
import type { PrecisionTable } from '../src/ir/precision.js';
import { inMemory } from '../src/ir/model.js';
import { DTYPES, type Tensor } from '../src/ir/tensor.js';
import { quantSchemeOf } from '../src/ir/quant-scheme.js';
import { VERSION, artifactTimestamp } from '../src/core/version.js';

const createdAt = (): { createdAt?: string } => {
  const t = artifactTimestamp();
  return t === undefined ? {} : { createdAt: t };
};

const enc = new TextEncoder();
const dec = new TextDecoder();

export interface HarInfo {
  modelName: string;
  sourceSha256: string;
}

/** The Dataflow Compiler's emulation levels: the source model, the optimized fp32 model, the quantized one. */
export type EmulationLevel = 'native' | 'optimized' | 'quantized';

/** Float models kept in the HAR for emulation (each a full Model state before quantization). */
export interface EmulationModels {
  native?: Model;
  optimized?: Model;
}

/** Tensor bytes per safetensors member before a weight set is split into shards. */
export const SHARD_BYTES = 2 ** 31;

/** A weight-set member: `<base>.safetensors` or shard i of n `<base>-0000i-of-0000n.safetensors`. */
const WEIGHT_MEMBER = /^(weights|emulation\/[a-z]+)(?:-(\d{5})-of-(\d{5}))?\.safetensors$/;

function weightMemberName(base: string, i: number, n: number): string {
  const pad = (k: number) => String(k).padStart(5, '0');
  return n === 1 ? `${base}.safetensors` : `${base}-${pad(i + 1)}-of-${pad(n)}.safetensors`;
}

/**
 * `m`'s weights as safetensors members named `<base>.safetensors`, or, past `shardBytes` of tensor
 * data, `<base>-00001-of-0000N.safetensors` … (tensors in order, greedily filled).
 */
function encodeWeightMembers(base: string, m: Model, shardBytes: number): Map<string, ProducedMember> {
  const shards: [string, LazyTensor][][] = [[]];
  let bytes = 0;
  for (const [n, lt] of m.weights) {
    const size = lt.shape.reduce((a, b) => a * b, 1) * DTYPES[lt.dtype].bytes;
    if (bytes > 0 && bytes + size > shardBytes) {
      shards.push([]);
      bytes = 0;
    }
    shards[shards.length - 1].push([n, lt]);
    bytes += size;
  }
  // built when written (twice: for the manifest's sha256, then for the archive), one shard at a time
  const produce = (sh: [string, LazyTensor][]) => () => encodeSafetensors(sh.map(([n, lt]): [string, Tensor] => [n, lt.load()]), { producer: `edgellm ${VERSION}` });
  return new Map(shards.map((sh, i) => [weightMemberName(base, i, shards.length), { produce: produce(sh) }]));
}

/** Where a HAR's members are: in memory (`files`), or only as byte ranges of the archive (lazy loading). */
interface MemberSource {
  path: string;
  files: Map<string, Uint8Array>;
  ranges: Map<string, { offset: number; size: number }>;
}

/**
 * One safetensors member's tensors: decoded from memory, or opened in place in the archive and
 * read on first `load()` (only the header is read now).
 */
function memberTensors(src: MemberSource, name: string): Map<string, LazyTensor> {
  const label = `${src.path}:${name}`;
  const bytes = src.files.get(name);
  if (bytes) return new Map([...decodeSafetensors(bytes, label).tensors].map(([n, t]) => [n, inMemory(t)]));
  const f = SafetensorsFile.open(src.path, { ...src.ranges.get(name)!, label });
  return new Map([...f.entries].map(([n, e]) => [n, { dtype: e.dtype, shape: [...e.shape], load: () => f.read(n) }]));
}

/**
 * The tensors of the weight set `base` (one member or all its shards), or null when the HAR has
 * none. @throws FormatError for a missing shard, mixed shard counts or a tensor stored twice
 */
function decodeWeightMembers(src: MemberSource, base: string): Map<string, LazyTensor> | null {
  const { path } = src;
  const members = [...src.ranges.keys()].map((n) => [n, WEIGHT_MEMBER.exec(n)] as const).filter(([, m]) => m?.[1] === base) as [string, RegExpExecArray][];
  if (!members.length) return null;
  const single = members.find(([, m]) => m[2] === undefined);
  if (single && members.length > 1) throw new FormatError(path, `holds both ${base}.safetensors and shards of it`);
  if (single) return memberTensors(src, single[0]);
  const total = Number(members[0][1][3]);
  const have = new Set(members.map(([, m]) => Number(m[2])));
  for (const [n, m] of members) if (Number(m[3]) !== total) throw new FormatError(path, `shard ${n} disagrees with ${members[0][0]} on the shard count`);
  for (let i = 1; i <= total; i++) if (!have.has(i)) throw new FormatError(path, `shard ${i} of ${total} of ${base} is missing`);
  const out = new Map<string, LazyTensor>();
  for (const [n] of members.sort(([a], [b]) => a.localeCompare(b)))
    for (const [tn, t] of memberTensors(src, n)) {
      if (out.has(tn)) throw new FormatError(path, `tensor '${tn}' is stored in two shards of ${base}`);
      out.set(tn, t);
    }
  return out;
}

/**
 * Writes `model` as a HAR at `path` (atomically: a temporary file beside `path`, renamed over it when
 * complete). Materialises every weight, one safetensors member at a time, twice (once for the
 * manifest's sha256, once for the archive).
 * @param path target file; overwritten if it exists
 * @param model its weights (tensor name → LazyTensor of any dtype and shape: float tensors, and for
 *   weight-quantized linears `<linear>.qweight` uint8 [out, n_blocks, group/2] and `<linear>.scales`
 *   float32 [out, n_blocks]), quantization ranges, report, tokenizer and LoRA adapters
 * @param info model name and the sha256 (hex) of the source weights ('' when unknown), for the manifest
 * @param emulation fp32 models stored as `emulation/native` and `emulation/optimized` weight sets
 * @param opts.shardBytes tensor bytes per safetensors member before splitting (default {@link SHARD_BYTES})
 * @returns resolves once the file is in place
 * @throws FormatError when a lazily loaded weight cannot be read from its source file;
 *   EdgeLLMError (duplicate or reserved tensor names, unknown dtype, bad shape) or ShapeMismatchError
 *   (data length or typed-array kind disagrees with dtype × shape) from encoding a member;
 *   EdgeLLMError from the HAR writer for a bad member name (e.g. an adapter name with characters a
 *   member path cannot hold) or a member whose size changed between the two passes; UsageError for a
 *   SOURCE_DATE_EPOCH that is not whole seconds; filesystem errors as thrown by node:fs (the
 *   temporary file is removed)
 */
export async function saveModelHar(path: string, model: Model, info: HarInfo, emulation: EmulationModels = {}, opts: { shardBytes?: number } = {}): Promise<void> {
  const shardBytes = opts.shardBytes ?? SHARD_BYTES;
  const files = new Map<string, HarMember>();
  for (const [n, b] of encodeWeightMembers('weights', model, shardBytes)) files.set(n, b);
  if (model.report) files.set('report.json', enc.encode(JSON.stringify(model.report, null, 1)));
  const emulationPasses: Record<string, unknown> = {};
  for (const level of ['native', 'optimized'] as const) {
    const m = emulation[level];
    if (!m) continue;
    for (const [n, b] of encodeWeightMembers(`emulation/${level}`, m, shardBytes)) files.set(n, b);
    // every Model field but the tensors, tokenizer and quantization state (config, passes, online rotations, ...)
    const { weights: _w, tokenizer: _t, quant: _q, report: _r, ...rest } = m;
    emulationPasses[level] = rest;
  }
  files.set('ranges.json', enc.encode(JSON.stringify({ activations: model.quant.activations, kvCache: model.quant.kvCache, kCacheOffset: model.quant.kCacheOffset }, null, 1)));
  files.set('tokenizer/tokenizer.json', enc.encode(model.tokenizer.tokenizerJson));
  if (model.tokenizer.tokenizerConfigJson != null) files.set('tokenizer/tokenizer_config.json', enc.encode(model.tokenizer.tokenizerConfigJson));
  if (model.tokenizer.generationConfigJson != null) files.set('tokenizer/generation_config.json', enc.encode(model.tokenizer.generationConfigJson));
  const manifest = {
    edgellmVersion: VERSION,
    ...createdAt(), // only with SOURCE_DATE_EPOCH: no wall-clock time in the artifact
    modelName: info.modelName,
    sourceSha256: info.sourceSha256,
    config: model.config,
    passes: model.passes,
    online: model.online,
    quantScheme: quantSchemeOf(model),
    linears: model.quant.linears,
    ...(model.precision ? { precision: model.precision } : {}),
    emulation: emulationPasses,
    adapters: (model.adapters ?? []).map((a) => {
      const { member, bytes, meta } = encodeAdapter(a);
      files.set(member, bytes);
      return meta;
    }),
  };
  await writeHar(path, manifest, files);
}

/** A LoRA adapter's HAR member (name and bytes) and manifest entry (everything but the tensors). */
function encodeAdapter(a: LoraAdapter): { member: string; bytes: Uint8Array; meta: Record<string, unknown> } {
  const { tensors, ...meta } = a;
  const member = `adapters/${a.name}.safetensors`;
  const bytes = encodeSafetensors([...tensors].map(([n, t]): [string, Tensor] => [n, t.load()]), { producer: `edgellm ${VERSION}` });
  return { member, bytes, meta: { ...meta, member } };
}

/**
 * Writes the HAR at `src` to `dst` (atomically; `dst` may equal `src`) with `adapter` added: every
 * existing member — base weights, ranges, other adapters — is copied byte for byte, the adapter
 * becomes member `adapters/<name>.safetensors` and an entry of the manifest's `adapters`.
 * @throws FormatError when `src` is corrupt or already has an adapter of that name
 */
export async function addAdapterToHar(src: string, dst: string, adapter: LoraAdapter): Promise<void> {
  // every member is verified as it streams past but none is held: the copy below reads them in pieces
  const { manifest, ranges } = await readHar(src, { skip: () => true });
  const { format: _f, formatVersion: _v, files: listing, ...rest } = manifest;
  const list = (rest.adapters ?? []) as { name: string }[];
  if (list.some((a) => a.name === adapter.name)) throw new FormatError(src, `already holds an adapter named '${adapter.name}'`);
  const sums = listing as Record<string, { sha256: string }>;
  const files = new Map<string, HarMember>([...ranges].map(([name, r]) => [name, { path: src, ...r, sha256: sums[name].sha256 }]));
  const { member, bytes, meta } = encodeAdapter(adapter);
  files.set(member, bytes);
  await writeHar(dst, { ...rest, adapters: [...list, meta] }, files);
}

/**
 * Writes the HAR at `src` to `dst` (atomically; `dst` may equal `src`) with its report.json replaced by
 * `report` (e.g. with the sensitivity `edgellm analyze` measured): every other member is copied byte
 * for byte, the manifest is unchanged.
 * @throws FormatError when `src` is corrupt
 */
export async function setHarReport(src: string, dst: string, report: QuantReport): Promise<void> {
  const { manifest, ranges } = await readHar(src, { skip: () => true });
  const { format: _f, formatVersion: _v, files: listing, ...rest } = manifest;
  const sums = listing as Record<string, { sha256: string }>;
  const files = new Map<string, HarMember>([...ranges].map(([name, r]) => [name, { path: src, ...r, sha256: sums[name].sha256 }]));
  files.set('report.json', enc.encode(JSON.stringify(report, null, 1)));
  await writeHar(dst, rest, files);
}

/** A Model read back from a HAR, with the manifest's provenance. */
export interface LoadedHar {
  model: Model;
  /** float models stored for `--emulate native|optimized`, when the HAR has them */
  emulation: EmulationModels;
  manifest: Record<string, unknown>;
  info: HarInfo;
}

/**
 * Reads a HAR (verified by formats/har.ts) into a Model held in memory.
 * @param opts.emulation also load the fp32 emulation weights (default true); false leaves
 *   `emulation` empty and only hashes those members in passing (by far the largest: 6 GB for a
 *   rotated 1.5B model), so the whole archive is still verified
 * @param opts.lazy leave the weight members in the archive: every member is still verified (hashed
 *   as it streams past), but tensors are read from the file on `load()`, one at a time
 * @throws FormatError for any corrupt or inconsistent member, or a manifest / ranges.json field of
 *   the wrong shape (formats/har-manifest.ts), naming the HAR and the member or field
 */
export async function loadModelHar(path: string, opts: { emulation?: boolean; lazy?: boolean } = {}): Promise<LoadedHar> {
  const withEmulation = opts.emulation ?? true;
  const har = await readHar(path, { skip: (n) => (!withEmulation && n.startsWith('emulation/')) || (!!opts.lazy && WEIGHT_MEMBER.test(n)) });
  const { manifest, files } = har;
  const src: MemberSource = { path, files, ranges: har.ranges };
  const need = (name: string): Uint8Array => {
    const f = files.get(name);
    if (!f) throw new FormatError(path, `member '${name}' is missing`);
    return f;
  };
  const json = (name: string): unknown => {
    try {
      return JSON.parse(dec.decode(need(name)));
    } catch (e) {
      throw new FormatError(path, `member '${name}' is not valid JSON: ${(e as Error).message}`);
    }
  };
  checkModelManifest(path, manifest);
  const config = manifest.config as ModelConfig;
  const weights = decodeWeightMembers(src, 'weights');
  if (!weights) throw new FormatError(path, `member 'weights.safetensors' is missing`);
  const rawRanges = json('ranges.json');
  checkRanges(path, rawRanges, config.numLayers, config.numKvHeads * config.headDim);
  const ranges = rawRanges as Pick<QuantState, 'activations' | 'kvCache' | 'kCacheOffset'>;
  const opt = (name: string) => (files.has(name) ? dec.decode(files.get(name)!) : null);
  const model: Model = {
    config,
    weights,
    quant: { linears: (manifest.linears ?? {}) as Record<string, LinearQuant>, activations: ranges.activations ?? {}, kvCache: ranges.kvCache ?? [], ...(ranges.kCacheOffset ? { kCacheOffset: ranges.kCacheOffset } : {}) },
    passes: (manifest.passes ?? []) as PassRecord[],
    tokenizer: {
      tokenizerJson: dec.decode(need('tokenizer/tokenizer.json')),
      tokenizerConfigJson: opt('tokenizer/tokenizer_config.json'),
      generationConfigJson: opt('tokenizer/generation_config.json'),
    },
  };
  if (files.has('report.json')) model.report = json('report.json') as unknown as QuantReport;
  if (manifest.online) model.online = manifest.online as Model['online']; // QuaRot's online R3/R4 (factors are weights)
  if (manifest.precision) model.precision = manifest.precision as PrecisionTable; // checked by checkModelManifest
  const adapterList = (manifest.adapters ?? []) as (Omit<LoraAdapter, 'tensors'> & { member: string })[];
  if (adapterList.length)
    model.adapters = adapterList.map(({ member, ...a }) => ({
      ...a,
      tensors: new Map([...decodeSafetensors(need(member), `${path}:${member}`).tensors].map(([n, t]) => [n, inMemory(t)])),
    }));
  const emulation: EmulationModels = {};
  const emuMeta = (manifest.emulation ?? {}) as Record<string, Omit<Model, 'weights' | 'tokenizer' | 'quant'>>;
  for (const level of withEmulation ? (['native', 'optimized'] as const) : []) {
    const t = decodeWeightMembers(src, `emulation/${level}`);
    if (!t || !emuMeta[level]) continue;
    emulation[level] = {
      ...emuMeta[level],
      tokenizer: model.tokenizer,
      weights: t,
      quant: { linears: {}, activations: {}, kvCache: [] },
    };
  }
  // Without fold-norms/QuaRot the optimized fp32 model is the native one (nothing transformed it).
  const FP32_TRANSFORMS = ['fold-norms', 'quarot'];
  if (emulation.native && !emulation.optimized && !model.passes.some((p) => FP32_TRANSFORMS.includes(p.name))) emulation.optimized = emulation.native;
  return { model, emulation, manifest, info: { modelName: String(manifest.modelName ?? ''), sourceSha256: String(manifest.sourceSha256 ?? '') } };
}
