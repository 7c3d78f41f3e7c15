/**
 * Stop strings over streamed text: generation ends at the first occurrence of any stop string, and
 * no text from that occurrence on is emitted. Text that could still turn out to begin a stop
 * string (a suffix of what arrived that is a prefix of some stop string) is held back until the
 * next piece decides it, as llama.cpp's server and vLLM do.
 */
export class StopMatcher {
  private held = '';

  /** @param stops non-empty strings (an empty list: nothing is ever held back) */
  constructor(private readonly stops: readonly string[]) {}

  /**
   * Takes the next piece of text.
   * @returns `text`: what may be emitted now; `stopped`: the stop string that was completed, if any
   *   (`text` then ends right before it and everything after is dropped; the earliest occurrence wins)
   */
  push(piece: string): { text: string; stopped?: string } {
    const buf = this.held + piece;
    if (this.stops.length === 0) return { text: buf };
    let at = -1;
    let hit = '';
    for (const s of this.stops) {
      const i = buf.indexOf(s);
      if (i >= 0 && (at < 0 || i < at)) {
        at = i;
        hit = s;
      }
    }
    if (at >= 0) {
      this.held = '';
      return { text: buf.slice(0, at), stopped: hit };
    }
    const keep = this.partialSuffix(buf);
    this.held = buf.slice(buf.length - keep);
    return { text: buf.slice(0, buf.length - keep) };
  }

  /** The text still held back (at the end of generation it is emitted: no stop string completed it). */
  flush(): string {
    const t = this.held;
    this.held = '';
    return t;
  }

  /** Length of the longest suffix of `buf` that is a proper prefix of a stop string. */
  private partialSuffix(buf: string): number {
    let best = 0;
    for (const s of this.stops)
      for (let n = Math.min(s.length - 1, buf.length); n > best; n--)
        if (buf.endsWith(s.slice(0, n))) {
          best = n;
          break;
        }
    return best;
  }
}
