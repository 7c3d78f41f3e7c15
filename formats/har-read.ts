/**
 * HAR reader: parses the archive laid out in formats/har-format.ts with tar's strict Parser, checks
 * every header checksum, padding byte and the end-of-archive marker, and verifies each member's
 * sha256 against the manifest (and the manifest against manifest.sha256) as it streams past.
 */
import * as fs from 'node:fs';
import { Header, Parser, type ReadEntry } from 'tar';
import { Sha256, sha256Hex } from '../src/core/digest.js';
import { alignUp } from '../src/core/align.js';
import { FormatError } from '../src/core/errors.js';
import { HAR_FORMAT, HAR_FORMAT_VERSION, type HarContents, MANIFEST, MANIFEST_SHA, BLOCK, EOF_BYTES, USTAR_MAGICS, USTAR_MAGIC_BYTES, USTAR_MAGIC_OFFSET, CANONICAL_CKSUM, memberNameProblem } from './har-format.js';

/** One member as tar's Parser saw it; `chunks` only for members whose bytes were kept, `sha256` (hex) for those hashed as they streamed past. */
interface TarMember {
  name: string;
  size: number;
  /** byte offset of the member's data in the file (its 512-byte header precedes it), set by checkLayout */
  offset: number;
  chunks?: Buffer[];
  sha256?: string;
}

/**
 * Runs tar's Parser in strict mode over the file, so that every tar warning (bad header checksum,
 * truncated body, unrecognised format) is an error here rather than silently skipped.
 */
function parseTar(path: string, keep: (name: string) => boolean, hash: (name: string) => boolean): Promise<TarMember[]> {
  return new Promise((resolve, reject) => {
    const members: TarMember[] = [];
    const input = fs.createReadStream(path);
    const parser = new Parser({ strict: true });
    let sawEof = false;
    let settled = false;
    const fail = (error: Error): void => {
      if (settled) return;
      settled = true;
      input.unpipe();
      input.destroy();
      reject(error);
    };
    parser.on('entry', (entry: ReadEntry) => {
      if (entry.type !== 'File') {
        fail(new FormatError(path, `member '${entry.path}' is a ${entry.type}, a HAR holds only regular files`));
        entry.resume();
        return;
      }
      const member: TarMember = { name: entry.path, size: entry.size, offset: -1 };
      members.push(member);
      const chunks: Buffer[] | undefined = keep(entry.path) ? (member.chunks = []) : undefined;
      const h = hash(entry.path) ? new Sha256() : undefined;
      if (!chunks && !h) entry.resume();
      else {
        entry.on('data', (c: Buffer) => {
          chunks?.push(c);
          h?.update(c);
        });
        if (h) entry.on('end', () => (member.sha256 = h.digestHex()));
      }
    });
    parser.on('eof', () => (sawEof = true));
    parser.on('error', (e: Error & { tarCode?: string }) => fail(new FormatError(path, describeTarError(e), { cause: e })));
    parser.on('end', () => {
      if (!sawEof) return fail(new FormatError(path, 'truncated: the tar end-of-archive marker is missing'));
      if (settled) return;
      settled = true;
      resolve(members);
    });
    input.on('error', fail);
    input.pipe(parser);
  });
}

/** tar's strict-mode error as one line, e.g. "corrupt tar header (TAR_ENTRY_INVALID: checksum failure)". */
function describeTarError(e: Error & { tarCode?: string }): string {
  const message = e.message.replace(/\s+/g, ' ');
  if (/truncated/i.test(message)) return `truncated archive (${message})`;
  if (e.tarCode === 'TAR_ENTRY_INVALID') return `corrupt tar header (${message})`;
  if (e.tarCode === 'TAR_BAD_ARCHIVE') return `not a valid tar archive (${message})`;
  return `invalid tar archive (${message})`;
}

/** Reads up to `length` bytes at `position`; returns how many were read. */
export function readAt(fd: number, buf: Buffer, position: number, length = buf.length): number {
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, buf, done, length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** Throws FormatError(problem) unless bytes [from, to) of the file are all zero. */
function expectZeros(path: string, fd: number, from: number, to: number, problem: () => string): void {
  const buf = Buffer.alloc(Math.min(1 << 20, Math.max(to - from, 0)));
  for (let pos = from; pos < to; ) {
    const n = readAt(fd, buf, pos, Math.min(buf.length, to - pos));
    if (n === 0) throw new FormatError(path, `truncated: file ends at byte ${pos}`);
    for (let i = 0; i < n; i++) {
      if (buf[i] !== 0) throw new FormatError(path, `${problem()}: byte ${pos + i} is 0x${buf[i].toString(16)}`);
    }
    pos += n;
  }
}

/** Before parsing: the first header block must carry the ustar magic. */
function checkMagic(path: string, fd: number, fileSize: number): void {
  if (fileSize === 0) throw new FormatError(path, 'not a tar archive (file is empty)');
  const block = Buffer.alloc(BLOCK);
  const n = readAt(fd, block, 0);
  const magic = block.subarray(USTAR_MAGIC_OFFSET, USTAR_MAGIC_OFFSET + USTAR_MAGIC_BYTES);
  if (n < USTAR_MAGIC_OFFSET + USTAR_MAGIC_BYTES || !USTAR_MAGICS.some((m) => magic.equals(m))) {
    throw new FormatError(path, `not a tar archive (bad magic: no "ustar" at byte ${USTAR_MAGIC_OFFSET})`);
  }
  if (n < BLOCK) throw new FormatError(path, `truncated: ${fileSize} bytes is less than one ${BLOCK}-byte tar block`);
}

/**
 * After parsing: cross-checks the raw blocks against what the Parser reported. Each member must be
 * one plain ustar header (no pax or GNU extension headers, canonical checksum field) followed by its
 * data and zero padding to the block size; after the last member only zeros, at least the
 * two-block end-of-archive marker. This is what makes flips in padding and in the checksum field
 * itself (which tar's own checksum does not cover) detectable.
 */
function checkLayout(path: string, fd: number, fileSize: number, members: TarMember[]): void {
  const block = Buffer.alloc(BLOCK);
  let offset = 0;
  for (const m of members) {
    if (readAt(fd, block, offset) < BLOCK) throw new FormatError(path, `truncated: file ends inside the header of member '${m.name}'`);
    const h = new Header(block);
    if (h.typeKey !== '0' || h.path !== m.name || h.size !== m.size) {
      throw new FormatError(path, `unexpected tar layout at byte ${offset}: expected a plain header for member '${m.name}' (HARs use no extension headers)`);
    }
    if (!CANONICAL_CKSUM.test(block.toString('latin1', 148, 156))) {
      throw new FormatError(path, `corrupt tar header of member '${m.name}' at byte ${offset} (malformed checksum field)`);
    }
    m.offset = offset + BLOCK;
    const dataEnd = offset + BLOCK + m.size;
    const next = offset + BLOCK + alignUp(m.size, BLOCK);
    expectZeros(path, fd, dataEnd, next, () => `non-zero tar padding after member '${m.name}'`);
    offset = next;
  }
  if (fileSize - offset < EOF_BYTES) throw new FormatError(path, 'truncated: the tar end-of-archive marker is missing');
  expectZeros(path, fd, offset, fileSize, () => `non-zero bytes in the tar end-of-archive marker (from byte ${offset})`);
}

/** Concatenates chunks into a fresh (unpooled) Uint8Array. */
function concat(chunks: Buffer[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let pos = 0;
  for (const c of chunks) {
    out.set(c.subarray(0, size - pos), pos);
    pos += c.length;
  }
  return out;
}

interface ListedFile {
  bytes: number;
  sha256: string;
}

/** Checks the manifest's `files` entry and returns it. */
function listedFiles(path: string, manifest: Record<string, unknown>): Map<string, ListedFile> {
  const files = manifest.files;
  if (typeof files !== 'object' || files === null || Array.isArray(files)) {
    throw new FormatError(path, "manifest.json has no 'files' object");
  }
  const out = new Map<string, ListedFile>();
  for (const [name, entry] of Object.entries(files as Record<string, unknown>)) {
    const e = entry as Partial<ListedFile> | null;
    const ok = typeof e === 'object' && e !== null && Number.isSafeInteger(e.bytes) && (e.bytes as number) >= 0
      && typeof e.sha256 === 'string' && /^[0-9a-f]{64}$/.test(e.sha256);
    if (!ok) throw new FormatError(path, `manifest.json entry for '${name}' is not {bytes, sha256}`);
    const problem = memberNameProblem(name);
    if (problem) throw new FormatError(path, `manifest.json lists a bad member name '${name}': ${problem}`);
    out.set(name, e as ListedFile);
  }
  return out;
}

/**
 * Parses and verifies the archive. With `withData` false, member bytes are skipped (not hashed);
 * everything else (tar structure, manifest checksum, format, version, member names and sizes) is checked.
 */
async function loadHar(path: string, withData: boolean, skip: (name: string) => boolean = () => false): Promise<HarContents> {
  const fd = fs.openSync(path, 'r');
  let members: TarMember[];
  try {
    const fileSize = fs.fstatSync(fd).size;
    checkMagic(path, fd, fileSize);
    members = await parseTar(path, (name) => (withData && !skip(name)) || name === MANIFEST || name === MANIFEST_SHA, () => withData);
    checkLayout(path, fd, fileSize, members);
  } finally {
    fs.closeSync(fd);
  }

  const byName = new Map<string, TarMember>();
  for (const m of members) {
    if (byName.has(m.name)) throw new FormatError(path, `member ${m.name} appears twice`);
    byName.set(m.name, m);
  }
  const bytesOf = (m: TarMember): Uint8Array => concat(m.chunks ?? [], m.size);

  const manifestMember = byName.get(MANIFEST);
  if (!manifestMember) throw new FormatError(path, `not an edgellm HAR: no ${MANIFEST} member`);
  const manifestBytes = bytesOf(manifestMember);
  const shaMember = byName.get(MANIFEST_SHA);
  // Checked before parsing so that a flipped byte reads as corruption, not as a wrong format or version.
  if (shaMember && Buffer.from(bytesOf(shaMember)).toString('latin1') !== sha256Hex(manifestBytes)) {
    throw new FormatError(path, `${MANIFEST} is corrupt: sha256 mismatch with ${MANIFEST_SHA}`);
  }
  let manifest: Record<string, unknown>;
  try {
    manifest = JSON.parse(Buffer.from(manifestBytes).toString('utf8'));
  } catch (e) {
    throw new FormatError(path, `${MANIFEST} is not valid JSON (${(e as Error).message})`, { cause: e });
  }
  if (typeof manifest !== 'object' || manifest === null || Array.isArray(manifest)) {
    throw new FormatError(path, `${MANIFEST} is not a JSON object`);
  }
  if (manifest.format !== HAR_FORMAT) {
    throw new FormatError(path, `not an edgellm HAR (manifest format is ${JSON.stringify(manifest.format)}, expected '${HAR_FORMAT}')`);
  }
  if (manifest.formatVersion !== HAR_FORMAT_VERSION) {
    throw new FormatError(path, `unsupported HAR format version ${JSON.stringify(manifest.formatVersion)} (this edgellm reads version ${HAR_FORMAT_VERSION})`);
  }
  if (!shaMember) throw new FormatError(path, `missing member ${MANIFEST_SHA} (checksum of ${MANIFEST})`);

  const listed = listedFiles(path, manifest);
  const missing = [...listed.keys()].filter((name) => !byName.has(name));
  const extra = members.map((m) => m.name).filter((name) => !listed.has(name) && name !== MANIFEST && name !== MANIFEST_SHA);
  const problems = [
    ...missing.map((name) => `member ${name} listed in the manifest is missing`),
    ...extra.map((name) => `member ${name} is not listed in the manifest`),
  ];
  if (problems.length > 0) throw new FormatError(path, problems.join('; '));

  const files = new Map<string, Uint8Array>();
  const ranges = new Map<string, { offset: number; size: number }>();
  for (const m of members) {
    const entry = listed.get(m.name);
    if (!entry) continue;
    ranges.set(m.name, { offset: m.offset, size: m.size });
    if (m.size !== entry.bytes) {
      throw new FormatError(path, `member ${m.name} is corrupt: ${m.size} bytes, the manifest says ${entry.bytes}`);
    }
    if (!withData) continue;
    if (m.sha256 !== entry.sha256) throw new FormatError(path, `member ${m.name} is corrupt: sha256 mismatch`);
    if (!skip(m.name)) files.set(m.name, bytesOf(m));
  }
  return { manifest, files, ranges };
}

/**
 * Reads a HAR archive and verifies all of it: tar structure (strict: header checksums, zero padding,
 * end-of-archive marker), manifest.json against manifest.sha256, `format` and `formatVersion`, and
 * every member's size and sha256 against the manifest, with no member missing or unlisted.
 *
 * @returns the manifest as stored (with `format`, `formatVersion`, `files`) and the members' bytes
 * @throws FormatError naming `path` and the problem; filesystem errors (e.g. ENOENT) as thrown by node:fs
 */
export async function readHar(path: string, opts: ReadHarOptions = {}): Promise<HarContents> {
  return loadHar(path, true, opts.skip);
}

export interface ReadHarOptions {
  /**
   * members not to keep: they are hashed as they stream past and verified like the others, but not
   * held in memory nor returned in `files`, e.g. a 1.5B model's fp32 emulation weights when only
   * the quantized model is needed
   */
  skip?: (name: string) => boolean;
}

/**
 * Reads only a HAR's manifest (for `inspect`): member bytes are skipped and not hashed, but the tar
 * structure, manifest.sha256, format, version and the member names and sizes are verified as in
 * {@link readHar}.
 *
 * @returns the manifest as stored (with `format`, `formatVersion`, `files`)
 * @throws FormatError naming `path` and the problem; filesystem errors as thrown by node:fs
 */
export async function readHarManifest(path: string): Promise<Record<string, unknown>> {
  return (await loadHar(path, false)).manifest;
}
