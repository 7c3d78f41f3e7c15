/**
 * edgellm context files: one conversation's KV cache saved to disk (HailoRT GenAI's
 * `save_context()` blob, llama.cpp's slot save), to be loaded into the same model later.
 *
 * Layout (little-endian):
 *
 *   offset  bytes  field
 *   0       8      magic "EDGECTX\0"
 *   8       4      format version (u32, {@link CONTEXT_FORMAT_VERSION})
 *   12      4      header length H (u32, ≤ {@link MAX_HEADER_BYTES})
 *   16      H      header, UTF-8 JSON: { model, adapter, tokens, kv: { numLayers, numKvHeads, headDim,
 *                  dtype, layerDtypes? }, edgellm, meta?, transcript? } (dtype: 'uint8', 'uint16',
 *                  'float32', or 'mixed' with layerDtypes, each layer's; meta: the caller's JSON
 *                  object, e.g. chat messages; transcript: the text the conversation renders and its ids)
 *   16+H    4·n    the n token ids in the cache (u32)
 *   …       …      per layer, K then V: [n, num_kv_heads, head_dim] in the layer's dtype (uint8 KV8
 *                  codes, uint16 KV16 codes or float32, little-endian)
 *   end−32  32     sha256 of every byte before it
 *
 * `model` is the sha256 of the executable the context was computed by: a context loads only into
 * that model, with the same KV layout. Written atomically (temporary file, then rename).
 */
import * as fs from 'node:fs';
import { FormatError } from '../src/core/errors.js';
import { Sha256, sha256 } from '../src/core/digest.js';
import { writeAtomicSync, writeFully } from '../src/core/atomic.js';
import { kvLayerDtypes, kvSnapshotLayerBytes, type KvDtype, type KvLayout, type KvSnapshot } from '../src/ir/executable.js';

export const CONTEXT_MAGIC = Buffer.from('EDGECTX\0', 'latin1');
export const CONTEXT_FORMAT_VERSION = 2;
/** Header JSON larger than this is refused before it is read. */
export const MAX_HEADER_BYTES = 1 << 24;
const PREAMBLE = 16;
const DIGEST = 32;

/**
 * The KV-layout facts a context file records (what must match the model it is loaded into):
 * `layerDtypes` ([numLayers]) only when `dtype` is 'mixed'.
 */
export type ContextKvShape = Pick<KvLayout, 'numLayers' | 'numKvHeads' | 'headDim' | 'dtype'> & { layerDtypes?: KvDtype[] };

export interface ContextFile {
  /** sha256 (hex) of the model the context belongs to */
  model: string;
  /** token ids held in the cache, oldest first */
  tokens: number[];
  kv: ContextKvShape;
  snapshot: KvSnapshot;
  /** edgellm version that wrote it */
  edgellm: string;
  /** the caller's metadata (a JSON object), e.g. the chat messages the tokens render */
  meta?: Record<string, unknown>;
  /** the text the conversation renders so far and its token ids (src/runtime/contexts.ts HeldContext) */
  transcript?: { text: string; ids: number[] };
}

/**
 * Writes a context file atomically.
 * @param model sha256 (hex) of the model
 * @throws FormatError when `tokens` and `snap.length` disagree; node:fs errors on write failure (the
 *   target is then left as it was)
 */
export function writeContextFile(file: string, c: Omit<ContextFile, 'snapshot' | 'kv'> & { kv: ContextKvShape | KvLayout; snapshot: KvSnapshot }): void {
  if (c.tokens.length !== c.snapshot.length) throw new FormatError(file, `${c.tokens.length} token ids for a cache of ${c.snapshot.length} tokens`);
  const header = Buffer.from(
    JSON.stringify({ model: c.model, adapter: c.snapshot.adapter, tokens: c.tokens.length, kv: pickShape(c.kv), edgellm: c.edgellm, meta: c.meta, transcript: c.transcript }),
    'utf8',
  );
  const pre = Buffer.alloc(PREAMBLE);
  CONTEXT_MAGIC.copy(pre, 0);
  pre.writeUInt32LE(CONTEXT_FORMAT_VERSION, 8);
  pre.writeUInt32LE(header.byteLength, 12);
  const ids = Buffer.alloc(4 * c.tokens.length);
  c.tokens.forEach((t, i) => ids.writeUInt32LE(t, 4 * i));
  const parts: Uint8Array[] = [pre, header, ids];
  for (const l of c.snapshot.layers) parts.push(l.key, l.value);
  const hash = new Sha256();
  for (const p of parts) hash.update(p);
  parts.push(hash.digest());
  writeAtomicSync(file, (tmp) => {
    const fd = fs.openSync(tmp, 'w');
    try {
      for (const p of parts) writeFully(fd, p);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  });
}

/**
 * Reads and verifies a context file: framing, sizes (checked against the file size before
 * anything large is allocated), the header's fields, and the sha256 of the whole file.
 * @throws FormatError naming `file` for a bad magic, unknown version, truncation, a size that
 *   disagrees with the header, malformed header JSON or fields, or a checksum mismatch
 */
export function readContextFile(file: string): ContextFile {
  let size: number;
  try {
    size = fs.statSync(file).size;
  } catch (e) {
    throw new FormatError(file, `cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (size < PREAMBLE + DIGEST) throw new FormatError(file, `not an edgellm context file (${size} bytes)`);
  const bytes = fs.readFileSync(file);
  if (!bytes.subarray(0, 8).equals(CONTEXT_MAGIC)) throw new FormatError(file, 'not an edgellm context file (bad magic)');
  const version = bytes.readUInt32LE(8);
  if (version !== CONTEXT_FORMAT_VERSION) throw new FormatError(file, `unsupported context format version ${version} (this edgellm reads ${CONTEXT_FORMAT_VERSION})`);
  const hLen = bytes.readUInt32LE(12);
  if (hLen > MAX_HEADER_BYTES || PREAMBLE + hLen + DIGEST > size) throw new FormatError(file, `header length ${hLen} does not fit the file (${size} bytes)`);
  if (!sha256(bytes.subarray(0, size - DIGEST)).equals(bytes.subarray(size - DIGEST)))
    throw new FormatError(file, 'corrupt: sha256 mismatch (the file was modified or truncated)');
  let h: Record<string, unknown>;
  try {
    h = JSON.parse(bytes.subarray(PREAMBLE, PREAMBLE + hLen).toString('utf8'));
  } catch {
    throw new FormatError(file, 'header is not valid JSON');
  }
  if (h === null || typeof h !== 'object' || Array.isArray(h)) throw new FormatError(file, 'header is not a JSON object');
  const model = h.model;
  if (typeof model !== 'string' || !/^[0-9a-f]{64}$/.test(model)) throw new FormatError(file, 'header.model is not a sha256 hex digest');
  const adapter = h.adapter;
  if (adapter !== null && typeof adapter !== 'string') throw new FormatError(file, 'header.adapter is neither null nor a string');
  const n = h.tokens;
  if (!Number.isSafeInteger(n) || (n as number) < 0) throw new FormatError(file, 'header.tokens is not a non-negative integer');
  const kv = checkShape(file, h.kv);
  const meta = h.meta;
  if (meta !== undefined && (meta === null || typeof meta !== 'object' || Array.isArray(meta))) throw new FormatError(file, 'header.meta is not a JSON object');
  const tr = h.transcript as { text?: unknown; ids?: unknown } | undefined;
  if (tr !== undefined && (tr === null || typeof tr.text !== 'string' || !Array.isArray(tr.ids) || tr.ids.some((t) => !Number.isInteger(t) || t < 0)))
    throw new FormatError(file, 'header.transcript is not { text: string, ids: non-negative integers }');
  const layerBytes = layerDtypesOf(kv).map((d) => kvSnapshotLayerBytes({ ...kv, dtype: d, layers: [] }, n as number));
  const expected = PREAMBLE + hLen + 4 * (n as number) + 2 * layerBytes.reduce((a, b) => a + b, 0) + DIGEST;
  if (expected !== size) throw new FormatError(file, `size ${size} bytes disagrees with its header (${n} tokens × ${kv.numLayers} layers need ${expected})`);
  let o = PREAMBLE + hLen;
  const tokens: number[] = [];
  for (let i = 0; i < (n as number); i++, o += 4) tokens.push(bytes.readUInt32LE(o));
  const layers: KvSnapshot['layers'] = [];
  for (let i = 0; i < kv.numLayers; i++) {
    const key = new Uint8Array(bytes.subarray(o, o + layerBytes[i]));
    o += layerBytes[i];
    const value = new Uint8Array(bytes.subarray(o, o + layerBytes[i]));
    o += layerBytes[i];
    layers.push({ key, value });
  }
  return { model, tokens, kv, snapshot: { length: n as number, adapter: adapter as string | null, layers }, edgellm: typeof h.edgellm === 'string' ? h.edgellm : '', meta: meta as Record<string, unknown> | undefined, transcript: tr as ContextFile['transcript'] };
}

/**
 * Checks that a context file fits a model: same model digest, same KV layout.
 * @throws FormatError naming `file` and both values when they differ
 */
export function checkContextFits(file: string, c: ContextFile, model: string, layout: KvLayout): void {
  if (c.model !== model)
    throw new FormatError(file, `saved from another model (sha256 ${c.model.slice(0, 12)}…, this model is ${model.slice(0, 12)}…)`);
  const want = pickShape(layout);
  for (const k of Object.keys(want) as (keyof ContextKvShape)[])
    if (String(c.kv[k]) !== String(want[k])) throw new FormatError(file, `KV layout differs: ${k} ${c.kv[k] ?? '(none)'}, the model has ${want[k]}`);
}

/** The recorded facts of a layout (a KvLayout's per-layer dtypes when it is 'mixed'). */
function pickShape(l: ContextKvShape | KvLayout): ContextKvShape {
  const shape: ContextKvShape = { numLayers: l.numLayers, numKvHeads: l.numKvHeads, headDim: l.headDim, dtype: l.dtype };
  if (l.dtype === 'mixed') shape.layerDtypes = 'layers' in l ? kvLayerDtypes(l) : l.layerDtypes;
  return shape;
}

/** Every layer's dtype of a recorded shape. */
function layerDtypesOf(kv: ContextKvShape): KvDtype[] {
  return kv.dtype === 'mixed' ? kv.layerDtypes! : Array.from({ length: kv.numLayers }, () => kv.dtype as KvDtype);
}

const KV_DTYPES: readonly string[] = ['uint8', 'uint16', 'float32'];

function checkShape(file: string, v: unknown): ContextKvShape {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new FormatError(file, 'header.kv is not an object');
  const o = v as Record<string, unknown>;
  for (const k of ['numLayers', 'numKvHeads', 'headDim'])
    if (!Number.isSafeInteger(o[k]) || (o[k] as number) < 1 || (o[k] as number) > 1 << 20) throw new FormatError(file, `header.kv.${k} is not a positive integer`);
  const shape: ContextKvShape = { numLayers: o.numLayers as number, numKvHeads: o.numKvHeads as number, headDim: o.headDim as number, dtype: o.dtype as ContextKvShape['dtype'] };
  if (o.dtype === 'mixed') {
    const d = o.layerDtypes;
    if (!Array.isArray(d) || d.length !== shape.numLayers || d.some((x) => !KV_DTYPES.includes(x)))
      throw new FormatError(file, `header.kv.layerDtypes is not a list of ${shape.numLayers} of ${KV_DTYPES.join(', ')} (the dtype is 'mixed')`);
    shape.layerDtypes = d as KvDtype[];
  } else if (!KV_DTYPES.includes(o.dtype as string)) throw new FormatError(file, `header.kv.dtype is not one of ${KV_DTYPES.join(', ')}, 'mixed'`);
  return shape;
}
