/**
 * HEF: edgellm's compiled executable (the analogue of Hailo's `.hef`). Layout, kept in sync with the
 * comment at the top of formats/hef.proto:
 *
 *   offset  bytes
 *   0       8      magic "EDGEHEF\0"
 *   8       4      u32le format version (HEF_FORMAT_VERSION)
 *   12      4      u32le header length H
 *   16      32     sha256 of the header bytes
 *   48      H      header: protobuf `edgellm.hef.HefHeader`, whose `sections` give each section's
 *                  name, kind, absolute offset, length and sha256
 *   48+H    ...    zero padding to SECTION_ALIGN, then the sections in the order given, each at a
 *                  SECTION_ALIGN-aligned offset with zero padding between them; the file ends where
 *                  the last section ends
 *
 * {@link openHef} checks the framing and the header and reads sections on demand (each verified
 * against its sha256); {@link verifyHef} also checks every section and every padding byte, so one
 * flipped byte anywhere in the file is a {@link FormatError}.
 *
 *   writeHef('model.hef', { modelName: 'tiny', kvCache: { numLayers: 2 } }, [{ name: 'weights', kind: 'weights', data }]);
 *   const hef = openHef('model.hef'); const weights = hef.readSection('weights'); hef.close();
 */
import { Sha256, sha256 } from '../src/core/digest.js';
import { gunzipSync, gzipSync } from 'node:zlib';
import { alignUp } from '../src/core/align.js';
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { EdgeLLMError, FormatError } from '../src/core/errors.js';
import { writeAtomicSync, writeFully } from '../src/core/atomic.js';

export const HEF_MAGIC: Uint8Array = new Uint8Array([0x45, 0x44, 0x47, 0x45, 0x48, 0x45, 0x46, 0x00]); // "EDGEHEF\0"
/** Format version written: 2 adds `Section.encoding` (gzip-compressed sections). */
export const HEF_FORMAT_VERSION = 2;
/** Format versions read: 1 (no section encodings) and 2. */
const READABLE_VERSIONS = [1, 2];
/** Section encodings: '' (stored as is) or 'gzip' (RFC 1952, zlib's default level 6: level 9 saved 0.04% more on a Qwen2 tokenizer.json, at 5× the time). */
export type SectionEncoding = '' | 'gzip';
/** Every section starts at a multiple of this many bytes. */
export const SECTION_ALIGN = 64;

/** magic (8) + version (4) + header length (4) + header sha256 (32) */
const PREAMBLE_BYTES = 48;
const SHA256_BYTES = 32;
/** Read granularity for hashing and padding checks. */
const CHUNK_BYTES = 1 << 22;

/** A section to write. */
export interface HefSectionInput {
  name: string;
  /** "weights" | "graph" | "tokenizer" | "json" */
  kind: string;
  data: Uint8Array;
  /** file-offset alignment of the section, a power of two multiple of SECTION_ALIGN (default SECTION_ALIGN), e.g. 4096 for memory-mapped weights */
  align?: number;
  /** 'gzip': store `data` gzip-compressed (readSection gives `data` back); default '' (as is) */
  encoding?: SectionEncoding;
}

/** A section as the header describes it. */
export interface HefSection {
  name: string;
  kind: string;
  /** absolute byte offset in the file, a multiple of SECTION_ALIGN */
  offset: number;
  /** bytes stored */
  length: number;
  /** of the bytes stored */
  sha256: Uint8Array;
  /** how the content is stored ('' in version 1 files) */
  encoding: SectionEncoding;
}

/** An open HEF; holds a file descriptor until {@link HefFile.close}. */
export interface HefFile {
  /** format version from the preamble */
  version: number;
  /** decoded HefHeader as a plain object (camelCase fields, uint64 as number, defaults filled in) */
  header: Record<string, any>;
  /** sections by name, in header order */
  sections: Map<string, HefSection>;
  /** bytes */
  fileSize: number;
  /**
   * Reads one section's bytes, verifies their sha256 and decodes them (a gzip section is returned
   * decompressed).
   * @throws FormatError if the section is absent, short, its sha256 does not match or it does not decompress
   */
  readSection(name: string): Uint8Array;
  /**
   * Verifies one section's sha256 by streaming it in chunks (no full-size allocation).
   * @throws FormatError if the section is short or its sha256 does not match
   */
  verifySection(s: HefSection): void;
  /** Closes the file descriptor; further readSection calls throw. */
  close(): void;
}

let headerTypeCache: protobuf.Type | undefined;

/** The HefHeader type, parsed once from hef.proto (found beside this file, or from dist/formats/). */
function headerType(): protobuf.Type {
  if (headerTypeCache) return headerTypeCache;
  const candidates = [new URL('./hef.proto', import.meta.url), new URL('../../formats/hef.proto', import.meta.url)].map((u) => fileURLToPath(u));
  const protoPath = candidates.find((p) => fs.existsSync(p));
  if (!protoPath) throw new EdgeLLMError(`hef.proto not found (looked for ${candidates.join(', ')})`);
  headerTypeCache = protobuf.loadSync(protoPath).lookupType('edgellm.hef.HefHeader');
  return headerTypeCache;
}

/** Field names in `obj` that `type` does not define (recursing into messages), e.g. "kvCache.numLayer". */
function unknownFields(type: protobuf.Type, obj: Record<string, unknown>, prefix = ''): string[] {
  const out: string[] = [];
  for (const [key, value] of Object.entries(obj)) {
    const field = type.fields[key];
    if (!field) {
      out.push(prefix + key);
      continue;
    }
    const sub = field.resolve().resolvedType;
    if (!(sub instanceof protobuf.Type) || value === null || value === undefined) continue;
    const items = Array.isArray(value) ? value : [value];
    items.forEach((item, i) => {
      if (typeof item === 'object' && item !== null) {
        const where = Array.isArray(value) ? `${prefix}${key}[${i}].` : `${prefix}${key}.`;
        out.push(...unknownFields(sub, item as Record<string, unknown>, where));
      }
    });
  }
  return out;
}

/**
 * Writes a HEF atomically (a temporary file beside `path`, renamed over it when complete). The same
 * input always gives the same bytes.
 *
 * @param header a plain object matching HefHeader without `sections` (camelCase field names as
 *   protobufjs gives them, e.g. `modelName`, `kvCache.numLayers`); the writer fills `sections`
 * @param sections written in this order, each at the next SECTION_ALIGN-aligned offset
 * @throws EdgeLLMError for duplicate or empty section names, `header.sections` set, unknown header
 *   fields or values of the wrong type (nothing is written); filesystem errors as thrown by node:fs
 *   (the temporary file is removed)
 */
export function writeHef(path: string, header: Record<string, unknown>, sections: HefSectionInput[]): void {
  const fail = (problem: string): EdgeLLMError => new EdgeLLMError(`writeHef ${path}: ${problem}`);
  if ('sections' in header) throw fail('header.sections is filled in by the writer; pass the sections separately');
  const seen = new Set<string>();
  for (const s of sections) {
    if (s.align !== undefined && (s.align < SECTION_ALIGN || (s.align & (s.align - 1)) !== 0)) throw fail(`section '${s.name}': alignment ${s.align} is not a power of two ≥ ${SECTION_ALIGN}`);
    if (!s.name) throw fail('section name must not be empty');
    if (seen.has(s.name)) throw fail(`duplicate section name '${s.name}'`);
    seen.add(s.name);
  }
  const Header = headerType();
  const unknown = unknownFields(Header, header);
  if (unknown.length > 0) throw fail(`unknown HefHeader field(s): ${unknown.join(', ')}`);
  const invalid = Header.verify(header);
  if (invalid) throw fail(`invalid header: ${invalid}`);

  const stored = sections.map((s) => (s.encoding === 'gzip' ? gzipSync(s.data) : s.data));
  const digests = stored.map((d) => sha256(d));
  // The header holds the section offsets as varints, so its length depends on where the sections
  // start, which depends on its length: grow the data start until the encoded header fits before it.
  let dataStart = alignUp(PREAMBLE_BYTES, SECTION_ALIGN);
  let offsets: number[];
  let headerBytes: Uint8Array;
  for (;;) {
    offsets = [];
    let pos = dataStart;
    sections.forEach((s, i) => {
      pos = alignUp(pos, s.align ?? SECTION_ALIGN);
      offsets.push(pos);
      pos = alignUp(pos + stored[i].byteLength, SECTION_ALIGN);
    });
    const table = sections.map((s, i) => ({ name: s.name, kind: s.kind, offset: offsets[i], length: stored[i].byteLength, sha256: digests[i], encoding: s.encoding ?? '' }));
    headerBytes = Header.encode(Header.fromObject({ ...header, sections: table })).finish();
    const needed = alignUp(PREAMBLE_BYTES + headerBytes.byteLength, SECTION_ALIGN);
    if (needed <= dataStart) break;
    dataStart = needed;
  }

  const preamble = Buffer.alloc(PREAMBLE_BYTES);
  preamble.set(HEF_MAGIC, 0);
  preamble.writeUInt32LE(HEF_FORMAT_VERSION, 8);
  preamble.writeUInt32LE(headerBytes.byteLength, 12);
  preamble.set(sha256(headerBytes), 16);

  writeAtomicSync(path, (tmp) => {
    const fd = fs.openSync(tmp, 'w');
    try {
      writeFully(fd, preamble);
      writeFully(fd, headerBytes);
      let pos = PREAMBLE_BYTES + headerBytes.byteLength;
      stored.forEach((data, i) => {
        writeFully(fd, new Uint8Array(offsets[i] - pos));
        writeFully(fd, data);
        pos = offsets[i] + data.byteLength;
      });
      writeFully(fd, new Uint8Array(Math.max(0, dataStart - pos))); // no sections: pad the header
    } finally {
      fs.closeSync(fd);
    }
  });
}

/** Reads exactly `length` bytes at `position` into a fresh array, or throws a "truncated" FormatError. */
function readExactly(path: string, fd: number, position: number, length: number, what: string): Uint8Array {
  const out = new Uint8Array(length);
  for (let done = 0; done < length; ) {
    const n = fs.readSync(fd, out, done, Math.min(length - done, 1 << 30), position + done);
    if (n === 0) throw new FormatError(path, `truncated: file ends at byte ${position + done}, inside ${what}`);
    done += n;
  }
  return out;
}

class OpenHef implements HefFile {
  constructor(
    private readonly path: string,
    private fd: number | undefined,
    readonly version: number,
    readonly header: Record<string, any>,
    readonly sections: Map<string, HefSection>,
    readonly fileSize: number,
    /** end of the header bytes (48 + header length) */
    readonly headerEnd: number,
  ) {}

  private descriptor(): number {
    if (this.fd === undefined) throw new EdgeLLMError(`${this.path}: HEF file is closed`);
    return this.fd;
  }

  section(name: string): HefSection {
    const s = this.sections.get(name);
    if (!s) throw new FormatError(this.path, `has no section '${name}' (sections: ${[...this.sections.keys()].join(', ') || 'none'})`);
    return s;
  }

  readSection(name: string): Uint8Array {
    const s = this.section(name);
    const data = readExactly(this.path, this.descriptor(), s.offset, s.length, `section '${name}'`);
    if (!sha256(data).equals(s.sha256)) throw new FormatError(this.path, `section '${name}' is corrupt: sha256 mismatch`);
    if (s.encoding !== 'gzip') return data;
    try {
      return new Uint8Array(gunzipSync(data));
    } catch (e) {
      throw new FormatError(this.path, `section '${name}' does not decompress (gzip): ${(e as Error).message}`);
    }
  }

  /** Streams a section through sha256 in chunks (no full-size allocation). */
  verifySection(s: HefSection): void {
    const fd = this.descriptor();
    const hash = new Sha256();
    const buf = Buffer.alloc(Math.min(CHUNK_BYTES, Math.max(s.length, 1)));
    for (let pos = 0; pos < s.length; ) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, s.length - pos), s.offset + pos);
      if (n === 0) throw new FormatError(this.path, `truncated: file ends at byte ${s.offset + pos}, inside section '${s.name}'`);
      hash.update(buf.subarray(0, n));
      pos += n;
    }
    if (!hash.digest().equals(s.sha256)) throw new FormatError(this.path, `section '${s.name}' is corrupt: sha256 mismatch`);
  }

  /** Throws unless bytes [from, to) are zero. */
  expectZeros(from: number, to: number, where: string): void {
    const fd = this.descriptor();
    const buf = Buffer.alloc(Math.min(CHUNK_BYTES, Math.max(to - from, 1)));
    for (let pos = from; pos < to; ) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, to - pos), pos);
      if (n === 0) throw new FormatError(this.path, `truncated: file ends at byte ${pos}, inside ${where}`);
      const bad = buf.subarray(0, n).findIndex((b) => b !== 0);
      if (bad >= 0) throw new FormatError(this.path, `non-zero padding ${where}: byte ${pos + bad} is 0x${buf[bad].toString(16)}`);
      pos += n;
    }
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }
}

/** Checks the preamble, the header and the section table; the caller closes `fd` on error. */
function readFraming(path: string, fd: number): OpenHef {
  const fileSize = fs.fstatSync(fd).size;
  const preamble = Buffer.alloc(PREAMBLE_BYTES);
  const n = fs.readSync(fd, preamble, 0, PREAMBLE_BYTES, 0);
  const magicSeen = preamble.subarray(0, Math.min(n, HEF_MAGIC.length));
  if (!magicSeen.equals(HEF_MAGIC.subarray(0, magicSeen.length)) || n === 0) {
    throw new FormatError(path, 'not an edgellm HEF (bad magic)');
  }
  if (n < PREAMBLE_BYTES) {
    throw new FormatError(path, `file too short: ${fileSize} bytes, an edgellm HEF needs at least ${PREAMBLE_BYTES} (magic, version, header length, header sha256)`);
  }
  const version = preamble.readUInt32LE(8);
  if (!READABLE_VERSIONS.includes(version)) {
    throw new FormatError(path, `unsupported HEF format version ${version} (this edgellm reads versions ${READABLE_VERSIONS.join(' and ')})`);
  }
  const headerLength = preamble.readUInt32LE(12);
  const headerEnd = PREAMBLE_BYTES + headerLength;
  if (headerEnd > fileSize) {
    throw new FormatError(path, `header length ${headerLength} runs past end of file (header would end at byte ${headerEnd}, file has ${fileSize} bytes)`);
  }
  const headerBytes = readExactly(path, fd, PREAMBLE_BYTES, headerLength, 'the header');
  if (!sha256(headerBytes).equals(preamble.subarray(16, 16 + SHA256_BYTES))) {
    throw new FormatError(path, 'header is corrupt (sha256 mismatch)');
  }
  const Header = headerType();
  let header: Record<string, any>;
  try {
    header = Header.toObject(Header.decode(headerBytes), { longs: Number, defaults: true, arrays: true, objects: true });
  } catch (e) {
    throw new FormatError(path, `header is not a decodable HefHeader (${(e as Error).message})`, { cause: e });
  }

  const sections = new Map<string, HefSection>();
  for (const raw of header.sections as Array<Record<string, any>>) {
    const s: HefSection = { name: raw.name, kind: raw.kind, offset: raw.offset, length: raw.length, sha256: new Uint8Array(raw.sha256), encoding: raw.encoding };
    if (!s.name) throw new FormatError(path, 'header lists a section with an empty name');
    if (s.encoding !== '' && (s.encoding !== 'gzip' || version < 2))
      throw new FormatError(path, `section '${s.name}' has encoding '${s.encoding}' (format version ${version} allows ${version < 2 ? 'none' : "'' and 'gzip'"})`);
    if (sections.has(s.name)) throw new FormatError(path, `header lists section '${s.name}' twice`);
    if (s.sha256.length !== SHA256_BYTES) throw new FormatError(path, `section '${s.name}' has a ${s.sha256.length}-byte sha256 (expected ${SHA256_BYTES})`);
    if (s.offset % SECTION_ALIGN !== 0) {
      throw new FormatError(path, `section '${s.name}' is misaligned: offset ${s.offset} is not a multiple of ${SECTION_ALIGN}`);
    }
    if (s.offset < headerEnd) throw new FormatError(path, `section '${s.name}' at byte ${s.offset} overlaps the header (which ends at byte ${headerEnd})`);
    if (s.offset + s.length > fileSize) {
      throw new FormatError(path, `truncated: section '${s.name}' ends at byte ${s.offset + s.length} but file has ${fileSize} bytes`);
    }
    sections.set(s.name, s);
  }
  const byOffset = [...sections.values()].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < byOffset.length; i++) {
    const [a, b] = [byOffset[i - 1], byOffset[i]];
    if (a.offset + a.length > b.offset) {
      throw new FormatError(path, `sections '${a.name}' (bytes ${a.offset}..${a.offset + a.length}) and '${b.name}' (from byte ${b.offset}) overlap`);
    }
  }
  return new OpenHef(path, fd, version, header, sections, fileSize, headerEnd);
}

/**
 * Opens a HEF and verifies its framing and header: magic, format version, header length, header
 * sha256, header decoding, and that every section is aligned, inside the file and not overlapping
 * another. Sections are not read; {@link HefFile.readSection} verifies each one as it is read.
 *
 * @returns an open file; call close() when done
 * @throws FormatError naming `path` and the problem; filesystem errors (e.g. ENOENT) as thrown by node:fs
 */
export function openHef(path: string): HefFile {
  const fd = fs.openSync(path, 'r');
  try {
    return readFraming(path, fd);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/**
 * Full integrity check: {@link openHef}, then every section's sha256 (streamed), every padding byte
 * (between the header and the first section and between sections) is zero, and nothing follows
 * the last section.
 *
 * @returns the open file (call close() when done)
 * @throws FormatError naming `path` and the problem; filesystem errors as thrown by node:fs
 */
export function verifyHef(path: string): HefFile {
  const file = openHef(path) as OpenHef;
  try {
    let pos = file.headerEnd;
    for (const s of [...file.sections.values()].sort((a, b) => a.offset - b.offset)) {
      file.expectZeros(pos, s.offset, `before section '${s.name}'`);
      file.verifySection(s);
      pos = s.offset + s.length;
    }
    const end = Math.max(pos, alignUp(file.headerEnd, SECTION_ALIGN));
    file.expectZeros(pos, end, 'after the header');
    if (file.fileSize > end) throw new FormatError(path, `${file.fileSize - end} unexpected bytes after the last section (file should end at byte ${end})`);
    return file;
  } catch (e) {
    file.close();
    throw e;
  }
}
