/** The project's one seeded pseudo-random number generator. */

/**
 * mulberry32 (Tommy Ettinger's 32-bit generator, as in the widely copied JavaScript version): a
 * tiny seeded PRNG with 32 bits of state. Same seed, same stream, on every platform.
 *
 * Every call advances the state by 0x6D2B79F5 and returns the mixed state as `u / 2³²` for an
 * unsigned 32-bit integer `u`, so every value is exact: `r() * 2 ** 32` gives `u` back (e.g. for
 * random bytes or uint32 words), and `r() + 2 ** -33` is a stream in (0, 1) (never 0, for log(u)).
 *
 * @param seed any number; only its low 32 bits are used (`seed >>> 0`)
 * @returns a function giving uniform floats in [0, 1)
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
