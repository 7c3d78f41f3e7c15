/**
 * HAR archives, the entry point for both directions: {@link writeHar} streams the archive laid out in
 * formats/har-format.ts to a temporary file renamed over the target; reading is formats/har-read.ts,
 * re-exported here.
 *
 *   await writeHar('model.har', { model: 'tiny' }, new Map([['weights.safetensors', bytes]]));
 *   const { manifest, files } = await readHar('model.har');
 */
import * as fs from 'node:fs';
import { Header } from 'tar';
import { sha256Hex } from '../src/core/digest.js';
import { paddingLength } from '../src/core/align.js';
import { readAt } from './har-read.js';
import { EdgeLLMError, FormatError } from '../src/core/errors.js';
import { writeAtomic, writeFully } from '../src/core/atomic.js';
import { HAR_FORMAT, HAR_FORMAT_VERSION, MANIFEST, MANIFEST_SHA, RESERVED_KEYS, BLOCK, EOF_BYTES, EPOCH, memberNameProblem, type ArchiveRange, type HarMember, isRange } from './har-format.js';

export { HAR_FORMAT, HAR_FORMAT_VERSION, type HarContents, type ArchiveRange, type ProducedMember, type HarMember } from './har-format.js';
export { readHar, readHarManifest, type ReadHarOptions } from './har-read.js';

/**
 * Writes a HAR archive atomically (a temporary file beside `path`, renamed over it when complete).
 *
 * @param path target file; overwritten if it exists
 * @param manifest the caller's manifest, JSON-serialisable; must not contain `format`, `formatVersion`
 *   or `files`, which the writer adds
 * @param files member name → bytes, or an {@link ArchiveRange} to copy. Names are relative paths with
 *   '/' separators (at most 99 bytes; letters, digits, `_ . + = @ -`; no '..', '.', empty segments or
 *   leading '/'), written in the Map's order
 * @throws EdgeLLMError for a bad member name or a reserved manifest key (nothing is written);
 *   filesystem errors as thrown by node:fs (the temporary file is removed)
 */
export async function writeHar(path: string, manifest: Record<string, unknown>, files: Map<string, HarMember>): Promise<void> {
  for (const key of RESERVED_KEYS) {
    if (key in manifest) throw new EdgeLLMError(`writeHar ${path}: manifest key '${key}' is reserved (the writer sets it)`);
  }
  const listing: Record<string, { bytes: number; sha256: string }> = {};
  for (const [name, data] of files) {
    const problem = memberNameProblem(name);
    if (problem) throw new EdgeLLMError(`writeHar ${path}: bad member name '${name}': ${problem}`);
    if (isRange(data)) listing[name] = { bytes: data.size, sha256: data.sha256 };
    else {
      const bytes = data instanceof Uint8Array ? data : data.produce();
      listing[name] = { bytes: bytes.byteLength, sha256: sha256Hex(bytes) };
    }
  }
  const stored = { format: HAR_FORMAT, formatVersion: HAR_FORMAT_VERSION, ...manifest, files: listing };
  const manifestBytes = Buffer.from(JSON.stringify(stored, null, 2) + '\n', 'utf8');
  const members: Array<[string, HarMember]> = [
    [MANIFEST, manifestBytes],
    ...files,
    [MANIFEST_SHA, Buffer.from(sha256Hex(manifestBytes), 'latin1')],
  ];
  await writeAtomic(path, (tmp) => packMembers(tmp, members, listing));
}

/**
 * Writes `members` as a deterministic ustar archive to `target`, streaming: per member a 512-byte
 * header (tar's Header: regular file, mode 0644, mtime 0, no owner), its bytes, zero padding to
 * 512; then the two-block end-of-archive marker. Range members are copied from their archive,
 * produced members built again (and checked against their listed size).
 */
function packMembers(target: string, members: Array<[string, HarMember]>, listing: Record<string, { bytes: number }>): void {
  const fd = fs.openSync(target, 'w');
  try {
    const piece = Buffer.allocUnsafe(16 << 20);
    for (const [name, member] of members) {
      const data = member instanceof Uint8Array || isRange(member) ? member : member.produce();
      const size = isRange(data) ? data.size : data.byteLength;
      if (listing[name] && listing[name].bytes !== size) throw new EdgeLLMError(`writeHar: member '${name}' came out ${size} bytes on the second pass, ${listing[name].bytes} on the first`);
      const header = new Header({ path: name, type: 'File', size, mode: 0o644, mtime: EPOCH });
      if (header.encode() || !header.block) throw new EdgeLLMError(`writeHar: member '${name}' needs a tar extension header`);
      writeFully(fd, header.block);
      if (data instanceof Uint8Array) writeFully(fd, data);
      else {
        const src = fs.openSync(data.path, 'r');
        try {
          for (let o = 0; o < size; ) {
            const n = readAt(src, piece, data.offset + o, Math.min(piece.length, size - o));
            if (n === 0) throw new FormatError(data.path, `truncated: ends inside member '${name}'`);
            writeFully(fd, piece.subarray(0, n));
            o += n;
          }
        } finally {
          fs.closeSync(src);
        }
      }
      writeFully(fd, new Uint8Array(paddingLength(size, BLOCK)));
    }
    writeFully(fd, new Uint8Array(EOF_BYTES));
  } finally {
    fs.closeSync(fd);
  }
}
