/**
 * Hadamard matrices built in code (no pasted ±1 tables), for the rotations QuaRot (Ashkboos et al.
 * 2024, §4 and Appendix "Hadamard matrices") fuses into weights and runs online (passes/hadamard.ts).
 *
 * A Hadamard matrix H of order n has entries ±1 and H·Hᵀ = n·I; H/√n is orthogonal. n must be 1, 2
 * or a multiple of 4. The constructions used, tried in this order for an order K:
 *
 * - Sylvester (1867): H_1 = [1], H_2K = H_2 ⊗ H_K — every power of two, and doubling of any K below.
 * - Paley I (1933): q prime, q ≡ 3 mod 4 → order q + 1 (12, 20, 44, 60, 108, 140, ...).
 * - Paley II (1933): q prime, q ≡ 1 mod 4 → order 2(q + 1) (28, 36, ...).
 * - Goethals–Seidel array (Goethals & Seidel 1967) over four circulant ±1 matrices A, B, C, D of odd
 *   order m with A·Aᵀ + B·Bᵀ + C·Cᵀ + D·Dᵀ = 4m·I → order 4m. The circulants are found by a small
 *   exact search: first rows constant on the orbits of a multiplier group ⟨u⟩ ≤ Z_m^* (the
 *   cyclotomic idea behind Baumert & Hall's and Đoković's Williamson searches), so their periodic
 *   autocorrelations are constant on orbits too and a meet-in-the-middle over ≤ 2^10 candidates per
 *   circulant finds a solution in milliseconds. This covers 52, 140, 156 and 172 (= 4·43, which no
 *   Paley construction reaches; stories260K's intermediate size).
 *
 * Every matrix returned is verified H·Hᵀ = n·I exactly (integers) before use.
 *
 * The rotations built from them are in passes/hadamard.ts.
 */
import { EdgeLLMError, ShapeMismatchError } from '../src/core/errors.js';

/** A Hadamard matrix: entries ±1, row-major [n, n], with the construction that produced it. */
export interface HadamardMatrix {
  n: number;
  data: Int8Array;
  construction: string;
}

export function isPrime(q: number): boolean {
  if (q < 2 || !Number.isInteger(q)) return false;
  for (let d = 2; d * d <= q; d++) if (q % d === 0) return false;
  return true;
}

/** Legendre symbol χ(x) of x mod the prime q: 0, 1 (nonzero square) or −1. */
function legendre(x: number, q: number): number {
  const r = ((x % q) + q) % q;
  if (r === 0) return 0;
  let acc = 1;
  let b = r;
  let e = (q - 1) / 2;
  while (e > 0) {
    if (e & 1) acc = (acc * b) % q;
    b = (b * b) % q;
    e = Math.floor(e / 2);
  }
  return acc === 1 ? 1 : -1;
}

/** Sylvester's H_P for P a power of two: H[i, j] = (−1)^popcount(i & j). */
export function sylvester(P: number): Int8Array {
  if (!Number.isInteger(P) || P < 1 || (P & (P - 1)) !== 0) throw new ShapeMismatchError(`sylvester: order ${P} is not a power of two`);
  const h = new Int8Array(P * P);
  for (let i = 0; i < P; i++)
    for (let j = 0; j < P; j++) {
      let b = i & j;
      let parity = 0;
      while (b) {
        parity ^= b & 1;
        b >>= 1;
      }
      h[i * P + j] = parity ? -1 : 1;
    }
  return h;
}

/** A ⊗ B for square ±1 matrices of orders a and b. */
function kron(A: Int8Array, a: number, B: Int8Array, b: number): Int8Array {
  const n = a * b;
  const out = new Int8Array(n * n);
  for (let i = 0; i < a; i++)
    for (let j = 0; j < a; j++)
      for (let k = 0; k < b; k++)
        for (let l = 0; l < b; l++) out[(i * b + k) * n + j * b + l] = A[i * a + j] * B[k * b + l];
  return out;
}

/**
 * Paley I: for a prime q ≡ 3 mod 4, H = I + S of order q + 1 with S = [[0, 1ᵀ], [−1, Q]] and Q the
 * Jacobsthal matrix Q[i, j] = χ(j − i) (skew-symmetric since χ(−1) = −1).
 */
export function paleyI(q: number): Int8Array {
  if (!isPrime(q) || q % 4 !== 3) throw new EdgeLLMError(`paleyI: q = ${q} must be a prime ≡ 3 mod 4`);
  const n = q + 1;
  const h = new Int8Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let s: number;
      if (i === 0) s = j === 0 ? 0 : 1;
      else if (j === 0) s = -1;
      else s = legendre(j - i, q);
      h[i * n + j] = s + (i === j ? 1 : 0);
    }
  return h;
}

/**
 * Paley II: for a prime q ≡ 1 mod 4, the symmetric conference matrix C = [[0, 1ᵀ], [1, Q]] of order
 * q + 1 gives H = C ⊗ [[1, 1], [1, −1]] + I ⊗ [[1, −1], [−1, −1]] of order 2(q + 1).
 */
export function paleyII(q: number): Int8Array {
  if (!isPrime(q) || q % 4 !== 1) throw new EdgeLLMError(`paleyII: q = ${q} must be a prime ≡ 1 mod 4`);
  const c = q + 1;
  const n = 2 * c;
  const conf = (i: number, j: number): number => (i === 0 ? (j === 0 ? 0 : 1) : j === 0 ? 1 : legendre(j - i, q));
  const A = [1, 1, 1, -1];
  const B = [1, -1, -1, -1];
  const h = new Int8Array(n * n);
  for (let i = 0; i < c; i++)
    for (let j = 0; j < c; j++)
      for (let k = 0; k < 2; k++)
        for (let l = 0; l < 2; l++) h[(2 * i + k) * n + 2 * j + l] = conf(i, j) * A[2 * k + l] + (i === j ? B[2 * k + l] : 0);
  return h;
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/**
 * First rows a, b, c, d (each ±1 of odd length m) of circulants with A·Aᵀ + B·Bᵀ + C·Cᵀ + D·Dᵀ = 4m·I,
 * i.e. periodic autocorrelations summing to 0 at every nonzero shift; null when the orbit search
 * (multiplier groups with at most `maxOrbits` orbits) finds none.
 */
export function supplementarySequences(m: number, maxOrbits = 10): Int8Array[] | null {
  const seen = new Set<string>();
  const groups: { orbit: Int32Array; count: number }[] = [];
  for (let u = 2; u < m; u++) {
    if (gcd(u, m) !== 1) continue;
    const orbit = new Int32Array(m).fill(-1);
    let count = 0;
    for (let x = 0; x < m; x++) {
      if (orbit[x] >= 0) continue;
      let y = x;
      do {
        orbit[y] = count;
        y = (y * u) % m;
      } while (y !== x);
      count++;
    }
    const key = orbit.join(',');
    if (count <= maxOrbits && !seen.has(key)) {
      seen.add(key);
      groups.push({ orbit, count });
    }
  }
  groups.sort((x, y) => x.count - y.count);
  for (const { orbit, count } of groups) {
    // one representative shift per orbit of nonzero shifts: PAF is constant on each orbit
    const reps: number[] = [];
    const taken = new Set([orbit[0]]);
    for (let s = 1; s < m; s++) if (!taken.has(orbit[s])) taken.add(orbit[s]), reps.push(s);
    const cands = Array.from({ length: 1 << count }, (_, mask) => {
      const a = new Int8Array(m);
      for (let i = 0; i < m; i++) a[i] = (mask >> orbit[i]) & 1 ? -1 : 1;
      const paf = reps.map((s) => {
        let t = 0;
        for (let i = 0; i < m; i++) t += a[i] * a[(i + s) % m];
        return t;
      });
      return { a, paf };
    });
    const pairs = new Map<string, [number, number]>();
    for (let i = 0; i < cands.length; i++)
      for (let j = i; j < cands.length; j++) {
        const sum = cands[i].paf.map((v, t) => v + cands[j].paf[t]);
        const match = pairs.get(sum.map((v) => -v).join(','));
        if (match) return [match[0], match[1], i, j].map((t) => cands[t].a);
        const key = sum.join(',');
        if (!pairs.has(key)) pairs.set(key, [i, j]);
      }
  }
  return null;
}

/**
 * The Goethals–Seidel array of order 4m from supplementary sequences a, b, c, d (R = back-diagonal):
 *   [[ A,    BR,    CR,    DR  ],
 *    [−BR,   A,     DᵀR,  −CᵀR ],
 *    [−CR,  −DᵀR,   A,     BᵀR ],
 *    [−DR,   CᵀR,  −BᵀR,   A   ]]
 */
export function goethalsSeidel(m: number): Int8Array | null {
  if (m % 2 !== 1) return null;
  const seqs = m === 1 ? [1, 1, 1, 1].map(() => Int8Array.of(1)) : supplementarySequences(m);
  if (!seqs) return null;
  const [a, b, c, d] = seqs;
  const n = 4 * m;
  // circulant X[i, j] = x[(j − i) mod m]; (XR)[i, j] = X[i, m−1−j]; (XᵀR)[i, j] = X[m−1−j, i]
  const circ = (x: Int8Array, i: number, j: number) => x[(((j - i) % m) + m) % m];
  const R = (x: Int8Array) => (i: number, j: number) => circ(x, i, m - 1 - j);
  const TR = (x: Int8Array) => (i: number, j: number) => circ(x, m - 1 - j, i);
  const A = (i: number, j: number) => circ(a, i, j);
  const neg = (f: (i: number, j: number) => number) => (i: number, j: number) => -f(i, j);
  const blocks = [
    [A, R(b), R(c), R(d)],
    [neg(R(b)), A, TR(d), neg(TR(c))],
    [neg(R(c)), neg(TR(d)), A, TR(b)],
    [neg(R(d)), TR(c), neg(TR(b)), A],
  ];
  const h = new Int8Array(n * n);
  for (let bi = 0; bi < 4; bi++)
    for (let bj = 0; bj < 4; bj++)
      for (let i = 0; i < m; i++) for (let j = 0; j < m; j++) h[(bi * m + i) * n + bj * m + j] = blocks[bi][bj](i, j);
  return h;
}

/** True when h (±1, [n, n]) satisfies H·Hᵀ = n·I exactly. */
export function isHadamard(h: Int8Array, n: number): boolean {
  if (h.length !== n * n) return false;
  for (let i = 0; i < n; i++)
    for (let j = i; j < n; j++) {
      let dot = 0;
      for (let k = 0; k < n; k++) dot += h[i * n + k] * h[j * n + k];
      if (dot !== (i === j ? n : 0)) return false;
    }
  return true;
}

const cache = new Map<number, HadamardMatrix | null>();

/**
 * A Hadamard matrix of order n built by the constructions above (memoised), or null when none of
 * them reaches n. @throws EdgeLLMError if a construction produced a non-Hadamard matrix (a bug)
 */
export function hadamard(n: number): HadamardMatrix | null {
  if (!Number.isInteger(n) || n < 1) throw new ShapeMismatchError(`hadamard: order ${n} must be a positive integer`);
  if (cache.has(n)) return cache.get(n)!;
  // candidate constructions, first success wins (thunks: only the one used is built)
  const tries: [string, () => Int8Array | null][] = [];
  if ((n & (n - 1)) === 0) tries.push(['sylvester', () => sylvester(n)]);
  else if (n % 4 === 0) {
    const q1 = n - 1;
    const q2 = n / 2 - 1;
    if (isPrime(q1) && q1 % 4 === 3) tries.push([`paley-i(q=${q1})`, () => paleyI(q1)]);
    if (isPrime(q2) && q2 % 4 === 1) tries.push([`paley-ii(q=${q2})`, () => paleyII(q2)]);
    tries.push(['sylvester-doubling', () => {
      const half = hadamard(n / 2);
      return half && kron(sylvester(2), 2, half.data, n / 2);
    }]);
    if ((n / 4) % 2 === 1) tries.push([`goethals-seidel(m=${n / 4})`, () => goethalsSeidel(n / 4)]);
  }
  let found: HadamardMatrix | null = null;
  for (const [construction, build] of tries) {
    const data = build();
    if (!data) continue;
    // Sylvester's matrices are Hadamard by construction (and may be large); check every other one
    if (construction !== 'sylvester' && !isHadamard(data, n))
      throw new EdgeLLMError(`hadamard: construction ${construction} of order ${n} failed H·Hᵀ = nI`);
    found = { n, data, construction: construction === 'sylvester-doubling' ? `2⊗${hadamard(n / 2)!.construction}` : construction };
    break;
  }
  cache.set(n, found);
  return found;
}
