/**
 * Text <-> token ids through HuggingFace's Rust tokenizers (the `tokenizers` npm binding), plus
 * special tokens and the chat template source from tokenizer_config.json (rendered by
 * formats/chat-template.ts; streamed decoding: src/runtime/detokenizer.ts).
 */
import { Tokenizer as HfTokenizer } from 'tokenizers';
import { FormatError } from '../src/core/errors.js';
import type { TokenizerFiles } from '../src/ir/model.js';
import { describe, isPlainObject as isObject } from './safetensors.js';
import { checkBeforeLoad, checkLoaded } from './tokenizer-check.js';

/** A loaded tokenizer. Token ids are plain numbers. */
export class TextTokenizer {
  private readonly tok: HfTokenizer;
  private readonly config: Record<string, unknown>;
  private readonly label: string;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly addBosToken: boolean;

  /**
   * @param label the name tokenizer.json's errors give
   * @throws FormatError when tokenizer.json or tokenizer_config.json cannot be parsed, tokenizer.json
   *   would make `tokenizers` panic (a post_processor adding a special token the vocabulary does not
   *   hold, a bad Precompiled normalizer, a truncation stride too large: formats/tokenizer-check.ts),
   *   tokenizer_config.json is not a JSON object, or its `bos_token` / `eos_token` is not a string,
   *   null or `{"content": string}`
   */
  constructor(files: TokenizerFiles, label = 'tokenizer.json') {
    const parsed = checkBeforeLoad(files.tokenizerJson, label);
    try {
      this.tok = HfTokenizer.fromString(files.tokenizerJson);
    } catch (e) {
      throw new FormatError(label, `cannot load tokenizer: ${(e as Error).message}`);
    }
    checkLoaded(this.tok, parsed, label);
    this.label = label;
    const configFile = 'tokenizer_config.json';
    let config: unknown;
    try {
      config = files.tokenizerConfigJson ? JSON.parse(files.tokenizerConfigJson) : {};
    } catch (e) {
      throw new FormatError(configFile, `not valid JSON: ${(e as Error).message}`);
    }
    if (!isObject(config)) throw new FormatError(configFile, `must be a JSON object, got ${describe(config)}`);
    this.config = config;
    const tokenText = (key: string): string | null => {
      const v = config[key];
      if (v == null || typeof v === 'string') return v ?? null;
      if (isObject(v) && typeof v.content === 'string') return v.content;
      throw new FormatError(configFile, `field '${key}' must be a token string, null or {"content": string}, got ${describe(v)}`);
    };
    this.bosToken = tokenText('bos_token');
    this.eosToken = tokenText('eos_token');
    this.bosTokenId = this.bosToken != null ? this.tok.tokenToId(this.bosToken) : null;
    this.eosTokenId = this.eosToken != null ? this.tok.tokenToId(this.eosToken) : null;
    this.addBosToken = this.config.add_bos_token !== false;
  }

  /** Vocabulary size including added tokens. */
  get vocabSize(): number {
    return this.tok.getVocabSize(true);
  }

  /**
   * Encodes text. With `addSpecialTokens` the tokenizer's post-processor runs (for Llama
   * tokenizers that prepends BOS).
   * @throws FormatError naming tokenizer.json when the tokenizer refuses the text (e.g. a WordPiece
   *   model without its unknown token, truncation that needs a second sequence)
   */
  async encode(text: string, addSpecialTokens = true): Promise<number[]> {
    let enc;
    try {
      enc = await this.tok.encode(text, null, { addSpecialTokens });
    } catch (e) {
      throw new FormatError(this.label, `cannot encode: ${(e as Error).message}`);
    }
    return enc.getIds();
  }

  /** Decodes ids to text, skipping special tokens. */
  async decode(ids: number[]): Promise<string> {
    return this.tok.decode(ids, true);
  }

  /**
   * The chat template source from tokenizer_config.json, or null: a string, or (transformers' list
   * form) the entry named "default" of a list of { name, template }.
   */
  get chatTemplate(): string | null {
    const t = this.config.chat_template;
    if (typeof t === 'string') return t;
    if (Array.isArray(t)) {
      const d = t.find((x) => isObject(x) && x.name === 'default' && typeof x.template === 'string') as { template: string } | undefined;
      return d?.template ?? null;
    }
    return null;
  }
}
