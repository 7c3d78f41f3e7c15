/**
 * HAR: edgellm's quantized-model archive (the analogue of Hailo's `.har`), a plain POSIX ustar
 * file that any `tar` can list. This module holds its layout and the names and limits both the
 * writer (formats/har.ts) and the reader (formats/har-read.ts) use. It is the container only;
 * which members exist and what the manifest says is up to the caller (formats/har-model.ts).
 *
 * Layout, members in this order, every one a regular file:
 *   manifest.json     the caller's manifest plus `format: 'edgellm-har'`, `formatVersion: 1` and
 *                     `files: {name: {bytes, sha256}}` for every member below except manifest.sha256
 *   <files...>        the caller's members, in the Map's insertion order
 *   manifest.sha256   hex sha256 of manifest.json's bytes (64 ASCII characters)
 *   end-of-archive    two zero blocks (tar's marker)
 *
 * Determinism: plain ustar headers written with tar's Header (no uid/gid/uname/atime/ctime), mode 0644, mtime 0, no pax
 * headers, so the same input always gives the same bytes.
 *
 * Integrity, so that one flipped byte anywhere is a {@link FormatError}: tar's header checksum covers
 * every header byte except its own field, which the reader requires in canonical form; the manifest
 * lists each member's sha256; manifest.sha256 covers manifest.json; block padding and the
 * end-of-archive marker must be zero.
 *
 */

export const HAR_FORMAT = 'edgellm-har';
export const HAR_FORMAT_VERSION = 1;

/** A HAR's manifest (as stored: with `format`, `formatVersion` and `files`) and its members. */
export interface HarContents {
  manifest: Record<string, unknown>;
  /** member name → bytes, in archive order; manifest.json and manifest.sha256 are not included */
  files: Map<string, Uint8Array>;
  /** member name → where its bytes lie in the (uncompressed) archive, for every listed member */
  ranges: Map<string, { offset: number; size: number }>;
}

export const MANIFEST = 'manifest.json';
export const MANIFEST_SHA = 'manifest.sha256';
export const RESERVED_KEYS = ['format', 'formatVersion', 'files'] as const;
export const BLOCK = 512;
/** Zero blocks tar writes after the last member. */
export const EOF_BYTES = 2 * BLOCK;
/** Magic + version at this offset of every header block: POSIX ustar (what we write) or old GNU tar. */
export const USTAR_MAGICS = [Buffer.from('ustar\u000000', 'latin1'), Buffer.from('ustar  \u0000', 'latin1')];
export const USTAR_MAGIC_BYTES = 8;
export const USTAR_MAGIC_OFFSET = 257;
/** The checksum field (header bytes 148..156) as node-tar ("%06o \0") or GNU tar ("%06o\0 ") writes it. */
export const CANONICAL_CKSUM = /^[0-7]{6}( \0|\0 )$/;
/** ustar's name field holds 100 bytes including the terminating NUL; longer names would need pax. */
export const MAX_NAME_BYTES = 99;
export const NAME_SEGMENT = /^[A-Za-z0-9_.+=@-]+$/;
export const EPOCH = new Date(0);

/** Why `name` cannot be a HAR member name, or undefined if it can. */
export function memberNameProblem(name: string): string | undefined {
  if (name === MANIFEST || name === MANIFEST_SHA) return 'the name is reserved for the archive itself';
  if (name.length === 0) return 'empty name';
  if (name.startsWith('/')) return 'absolute paths are not allowed';
  if (Buffer.byteLength(name) > MAX_NAME_BYTES) return `longer than ${MAX_NAME_BYTES} bytes`;
  for (const segment of name.split('/')) {
    if (segment === '..') return "'..' is not allowed";
    if (segment === '.' || segment === '') return "empty or '.' path segments are not allowed";
    if (!NAME_SEGMENT.test(segment)) return 'only letters, digits and _ . + = @ - are allowed, with / between segments';
  }
  return undefined;
}

/**
 * A member's bytes left where they are: a byte range of an existing (verified) archive, with the
 * sha256 its manifest lists. `writeHar` copies it in 16 MiB pieces, so rewriting a HAR (e.g. adding
 * an adapter) never holds its largest members in memory.
 */
export interface ArchiveRange {
  path: string;
  offset: number;
  size: number;
  sha256: string;
}

/**
 * A member built on demand, twice: once to list its size and sha256 in the manifest (which comes
 * first in the archive), once to write it. `produce` must return the same bytes both times. Lets a
 * HAR hold several GB of weights while only one member is ever in memory.
 */
export interface ProducedMember {
  produce(): Uint8Array;
}

export type HarMember = Uint8Array | ArchiveRange | ProducedMember;

export const isRange = (m: HarMember): m is ArchiveRange => !(m instanceof Uint8Array) && 'path' in m;
