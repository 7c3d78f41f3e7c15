/**
 * Checks of a tokenizer.json that the Rust `tokenizers` binding does not make itself and that,
 * when they fail, make it panic, which aborts the whole Node process instead of throwing:
 *
 * - a `Precompiled` normalizer (SentencePiece's charsmap) that does not parse panics while the file
 *   loads (tokenizers' normalizers/mod.rs `.expect("Precompiled")`), and one whose double-array trie
 *   points outside itself panics on the first encode (spm_precompiled's lookups index it unchecked);
 * - a post_processor that adds a special token its TemplateProcessing `special_tokens` does not
 *   define (or `$B` in the single-sequence template) panics on encode ("no entry found for key");
 * - a TemplateProcessing inside a Sequence that receives other than 1 or 2 encodings (after another
 *   template) panics on encode ("not yet implemented", template.rs);
 * - truncation whose `stride` is not below `max_length` less the special tokens added panics on
 *   encode of a longer text (encoding.rs "`stride` must be strictly less than `max_len`").
 *
 * {@link checkBeforeLoad} runs on the parsed JSON before `Tokenizer.fromString`, {@link checkLoaded}
 * after it (it needs the token -> id lookup). Both throw a one-line FormatError naming the file.
 */
import type { Tokenizer as HfTokenizer } from 'tokenizers';
import { FormatError } from '../src/core/errors.js';
import { describe, isPlainObject as isObject } from './safetensors.js';

/**
 * tokenizer.json's text parsed, with its normalizers checked ({@link checkPrecompiled}).
 * @throws FormatError naming `file` when the text is not a JSON object or a Precompiled normalizer is bad
 */
export function checkBeforeLoad(json: string, file: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch (e) {
    throw new FormatError(file, `cannot load tokenizer: not valid JSON: ${(e as Error).message}`);
  }
  if (!isObject(v)) throw new FormatError(file, `cannot load tokenizer: must be a JSON object, got ${describe(v)}`);
  const walk = (n: unknown, where: string): void => {
    if (!isObject(n)) return; // absent, or a shape tokenizers itself refuses
    if (n.type === 'Sequence' && Array.isArray(n.normalizers)) n.normalizers.forEach((m, i) => walk(m, `${where}.normalizers[${i}]`));
    else if (n.type === 'Precompiled') checkPrecompiled(n.precompiled_charsmap, (what) => new FormatError(file, `${where} (Precompiled): ${what}`));
  };
  walk(v.normalizer, 'normalizer');
  return v;
}

/**
 * A Precompiled normalizer's `precompiled_charsmap`: base64 of [u32le trie bytes][trie: u32le units]
 * [replacement strings, UTF-8, each ending in \0]. The trie is walked from its root over every byte
 * as spm_precompiled walks it for any input: each unit it reads must exist, and each value it
 * returns must start a replacement string.
 */
function checkPrecompiled(charsmap: unknown, bad: (what: string) => FormatError): void {
  if (typeof charsmap !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(charsmap) || charsmap.length % 4 !== 0)
    throw bad(`precompiled_charsmap must be a base64 string, got ${describe(charsmap)}`);
  const bytes = Buffer.from(charsmap, 'base64');
  if (bytes.toString('base64') !== charsmap) throw bad('precompiled_charsmap is not canonical base64');
  if (bytes.length < 4) throw bad(`precompiled_charsmap holds ${bytes.length} bytes, less than its 4-byte trie size`);
  const units = Math.floor(bytes.readUInt32LE(0) / 4);
  if (4 + 4 * units > bytes.length) throw bad(`precompiled_charsmap's trie of ${units} units runs past its end (${bytes.length} bytes)`);
  const strings = bytes.subarray(4 + 4 * units);
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(strings);
  } catch {
    throw bad("precompiled_charsmap's replacement strings are not UTF-8");
  }
  const unit = (i: number) => bytes.readUInt32LE(4 + 4 * i);
  // a unit's fields (darts-clone): label in bits 0-7 (and 31), leaf flag bit 8, offset from bit 10 (<< 8 when bit 9)
  const offset = (u: number) => (u >>> 10) * (u & 512 ? 256 : 1);
  if (units === 0) throw bad("precompiled_charsmap's trie is empty");
  const seen = new Set<number>();
  const todo = [offset(unit(0))];
  while (todo.length) {
    const p = todo.pop()!;
    if (seen.has(p)) continue;
    seen.add(p);
    for (let c = 1; c < 256; c++) {
      const q = p ^ c;
      if (q >= units) throw bad(`precompiled_charsmap's trie reads unit ${q} of ${units}`);
      const u = unit(q);
      if ((u & 0x800000ff) >>> 0 !== c) continue;
      const next = q ^ offset(u);
      if ((u >>> 8) & 1) {
        if (next >= units) throw bad(`precompiled_charsmap's trie reads unit ${next} of ${units}`);
        const at = unit(next) & 0x7fffffff;
        if (at > strings.length || (at < strings.length && (strings[at] & 0xc0) === 0x80))
          throw bad(`precompiled_charsmap's trie points at byte ${at}, not the start of a replacement (${strings.length} bytes)`);
      }
      todo.push(next);
    }
  }
}

/**
 * The checks that need the loaded tokenizer: every special token the post_processor adds is one the
 * tokenizer has (model vocabulary or added_tokens) with the processor's id — TemplateProcessing
 * (`special_tokens` entries, every `single`/`pair` piece), BertProcessing and RobertaProcessing
 * (`sep`, `cls`), Sequence (each processor); and a truncation `stride` below `max_length` less the
 * special tokens added.
 * @param tok the loaded tokenizer (its token -> id lookup)
 * @param parsed tokenizer.json as {@link checkBeforeLoad} returned it
 * @throws FormatError naming `file` and the token or field
 */
export function checkLoaded(tok: Pick<HfTokenizer, 'tokenToId'>, parsed: Record<string, unknown>, file: string): void {
  const bad = (what: string) => new FormatError(file, `post_processor: ${what}`);
  const hasToken = (token: unknown, id: unknown, where: string) => {
    if (typeof token !== 'string' || typeof id !== 'number') throw bad(`${where} must be a token and its id, got ${describe([token, id])}`);
    const have = tok.tokenToId(token);
    if (have == null) throw bad(`${where} names special token ${JSON.stringify(token)}, which is not in the vocabulary or added_tokens`);
    if (have !== id) throw bad(`${where} gives special token ${JSON.stringify(token)} id ${id}, the vocabulary has ${have}`);
  };
  /** checks processor `p`; returns the most special tokens it adds to a single sequence or a pair */
  const check = (p: unknown, where: string): number => {
    if (p == null) return 0;
    if (!isObject(p)) throw bad(`${where} must be an object, got ${describe(p)}`);
    if (p.type === 'Sequence') {
      if (!Array.isArray(p.processors)) throw bad(`${where}.processors must be a list`);
      return p.processors.reduce((n: number, q, i) => n + check(q, `${where}.processors[${i}]`), 0);
    }
    if (p.type === 'BertProcessing' || p.type === 'RobertaProcessing') {
      for (const key of ['sep', 'cls']) {
        const pair = p[key];
        if (!Array.isArray(pair) || pair.length !== 2) throw bad(`${p.type} ${key} must be [token, id], got ${describe(pair)}`);
        hasToken(pair[0], pair[1], `${p.type} ${key}`);
      }
      return 4; // Roberta's pair: <s> A </s></s> B </s>
    }
    if (p.type === 'TemplateProcessing') return checkTemplate(p, hasToken, bad);
    return 0;
  };
  const added = check(parsed.post_processor, 'post_processor');
  for (const sequences of [1, 2]) for (const special of [true, false]) flow(parsed.post_processor, sequences, special, bad);
  const t = parsed.truncation;
  if (isObject(t) && typeof t.stride === 'number' && typeof t.max_length === 'number' && t.stride > 0 && t.stride >= t.max_length - added)
    throw new FormatError(file, `truncation: stride ${t.stride} must be less than max_length ${t.max_length} minus the ${added} special tokens the post_processor may add`);
}

/**
 * How many encodings leave processor `p` when `n` enter (tokenizers passes a list of encodings
 * through a Sequence; the caller merges them at the end): a TemplateProcessing turns them into one
 * per piece of its single (n = 1) or pair (n = 2) template, special-token pieces only with
 * `special`, and panics ("not yet implemented") on any other n, as after a template of 3 pieces.
 * Other processors keep the count. `p` is already checked by {@link checkLoaded}.
 */
function flow(p: unknown, n: number, special: boolean, bad: (what: string) => FormatError): number {
  if (!isObject(p)) return n;
  if (p.type === 'Sequence') return (p.processors as unknown[]).reduce((m: number, q) => flow(q, m, special, bad), n);
  if (p.type !== 'TemplateProcessing') return n;
  if (n !== 1 && n !== 2)
    throw bad(`a TemplateProcessing in a Sequence receives ${n} encodings from the processor before it (it takes 1 or 2)`);
  const pieces = ((n === 1 ? p.single : p.pair) ?? []) as unknown[];
  return pieces.filter((x) => special || !(isObject(x) && 'SpecialToken' in x)).length;
}

/** {@link checkLoaded} for one TemplateProcessing; returns the most special tokens a template adds. */
function checkTemplate(p: Record<string, unknown>, hasToken: (token: unknown, id: unknown, where: string) => void, bad: (what: string) => FormatError): number {
  const specials = p.special_tokens ?? {};
  if (!isObject(specials)) throw bad(`TemplateProcessing special_tokens must be an object, got ${describe(specials)}`);
  for (const [key, st] of Object.entries(specials)) {
    const where = `TemplateProcessing special_tokens[${JSON.stringify(key)}]`;
    if (!isObject(st) || !Array.isArray(st.ids) || !Array.isArray(st.tokens) || st.ids.length !== st.tokens.length)
      throw bad(`${where} must hold as many ids as tokens, got ${describe(st)}`);
    st.tokens.forEach((t, i) => hasToken(t, (st.ids as unknown[])[i], where));
  }
  let most = 0;
  for (const [name, sequences] of [['single', ['A']], ['pair', ['A', 'B']]] as const) {
    const pieces = p[name] ?? [];
    if (!Array.isArray(pieces)) throw bad(`TemplateProcessing ${name} must be a list of pieces, got ${describe(pieces)}`);
    let added = 0;
    for (const piece of pieces) {
      const special = isObject(piece) && isObject(piece.SpecialToken) ? piece.SpecialToken.id : undefined;
      const seq = isObject(piece) && isObject(piece.Sequence) ? piece.Sequence.id : undefined;
      if (special !== undefined) {
        if (!(typeof special === 'string' && Object.hasOwn(specials, special)))
          throw bad(`TemplateProcessing ${name} adds special token ${describe(special)}, which special_tokens does not define`);
        added += ((specials[special] as { ids: unknown[] }).ids).length;
      }
      if (seq !== undefined && !(sequences as readonly unknown[]).includes(seq))
        throw bad(`TemplateProcessing ${name} names sequence ${describe(seq)} (${name} has ${sequences.map((x) => `$${x}`).join(' and ')})`);
    }
    most = Math.max(most, added);
  }
  return most;
}
