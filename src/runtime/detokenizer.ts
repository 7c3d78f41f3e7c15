/**
 * Incremental detokenization: token ids in, text out, one piece per token, never a broken UTF-8
 * character. The algorithm is vLLM's `detokenize_incrementally` (and HF's TextStreamer idea): decode
 * a short window of the latest ids twice, with and without the new ones, and emit the difference,
 * so tokenizers whose decoders depend on the neighbours (SentencePiece's leading-space marker,
 * byte-level BPE's split multi-byte characters) come out exactly as decoding the whole sequence.
 * Each step decodes O(window) ids, not the whole sequence.
 */
import type { TextTokenizer } from '../../formats/tokenizer.js';

/** ids of context decoded before the first new id (enough to settle a leading space or a split character) */
const CONTEXT_IDS = 6;

export class IncrementalDetokenizer {
  private readonly ids: number[];
  /** start of the window decoded as "already emitted" */
  private prefixOffset: number;
  /** ids before this index have been emitted */
  private readOffset: number;

  /**
   * @param context ids already shown (e.g. the prompt): the first new id's text continues them,
   *   keeping its leading space; they are not emitted
   */
  constructor(
    private readonly tok: TextTokenizer,
    context: readonly number[] = [],
  ) {
    this.ids = [...context.slice(-CONTEXT_IDS)];
    this.prefixOffset = 0;
    this.readOffset = this.ids.length;
  }

  /**
   * Adds one id.
   * @returns the newly completed text ('' while the id ends inside a multi-byte character)
   */
  async push(id: number): Promise<string> {
    this.ids.push(id);
    const prefix = await this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = await this.tok.decode(this.ids.slice(this.prefixOffset));
    if (full.length <= prefix.length || full.endsWith('\uFFFD')) return '';
    const delta = full.startsWith(prefix) ? full.slice(prefix.length) : full.slice(commonPrefixLength(prefix, full));
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    this.compact();
    return delta;
  }

  /** The text of ids not yet emitted (an incomplete character at the very end comes out as U+FFFD). */
  async flush(): Promise<string> {
    if (this.readOffset >= this.ids.length) return '';
    const prefix = await this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = await this.tok.decode(this.ids.slice(this.prefixOffset));
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return full.startsWith(prefix) ? full.slice(prefix.length) : full.slice(commonPrefixLength(prefix, full));
  }

  /** Drops ids before the window so memory stays O(window). */
  private compact(): void {
    if (this.prefixOffset > 64) {
      this.ids.splice(0, this.prefixOffset);
      this.readOffset -= this.prefixOffset;
      this.prefixOffset = 0;
    }
  }
}

function commonPrefixLength(a: string, b: string): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}
