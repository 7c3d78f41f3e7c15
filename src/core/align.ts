/** Rounding byte offsets and sizes up to a multiple (file-format alignment, tar blocks). */

/**
 * The smallest multiple of `align` that is ≥ `n`: `Math.ceil(n / align) * align` (0 stays 0).
 * @param n a non-negative integer, e.g. a byte offset or size
 * @param align a positive integer, e.g. 8, 64, 512 or 4096
 */
export function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

/** How many padding bytes follow `n` bytes to reach the next multiple of `align`: `alignUp(n, align) − n`. */
export function paddingLength(n: number, align: number): number {
  return alignUp(n, align) - n;
}
