/** sha256 of in-memory bytes, for HAR members and HEF sections. */
import { createHash } from 'node:crypto';

/**
 * sha256 of `data`, fed to the hash in 1 GiB slices: one Hash.update call takes at most 2³¹ − 1
 * bytes ("data is too long"), and a 1.5B model's weights are several GB.
 */
export function sha256(data: Uint8Array): Buffer {
  const h = createHash('sha256');
  for (let o = 0; o < data.byteLength; o += 2 ** 30) h.update(data.subarray(o, Math.min(data.byteLength, o + 2 ** 30)));
  return h.digest();
}
