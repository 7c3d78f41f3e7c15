/**
 * Text <-> token ids through HuggingFace's Rust tokenizers (the `tokenizers` npm binding), plus
 * special tokens and chat templates from tokenizer_config.json (rendered with @huggingface/jinja).
 */
import { Tokenizer as HfTokenizer } from 'tokenizers';
import { Template } from '@huggingface/jinja';
import { FormatError } from '../src/core/errors.js';
import type { TokenizerFiles } from '../src/ir/model.js';
import { describe, isPlainObject as isObject } from './safetensors.js';
import { checkBeforeLoad, checkLoaded } from './tokenizer-check.js';

export interface ChatMessage {
  role: string;
  content: string;
}

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

  /** The chat template from tokenizer_config.json, or null. */
  get chatTemplate(): string | null {
    const t = this.config.chat_template;
    return typeof t === 'string' ? t : null;
  }

  /**
   * Renders messages with the model's chat template (jinja).
   * @throws FormatError when the model has no chat template or it fails to render
   */
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt = true): string {
    const tpl = this.chatTemplate;
    if (!tpl) throw new FormatError('tokenizer_config.json', 'the model has no chat_template');
    try {
      return new Template(tpl).render({
        messages,
        add_generation_prompt: addGenerationPrompt,
        bos_token: this.bosToken ?? '',
        eos_token: this.eosToken ?? '',
      });
    } catch (e) {
      throw new FormatError('tokenizer_config.json', `chat_template failed to render: ${(e as Error).message}`);
    }
  }
}

/**
 * Streaming detokenizer: feed ids one at a time, get the newly completed text. Decodes the whole
 * sequence and emits the new suffix, holding back text that ends in an incomplete UTF-8 sequence.
 */
export class StreamDecoder {
  private ids: number[] = [];
  private emitted = '';
  private constructor(private readonly tok: TextTokenizer) {}

  /**
   * A decoder whose text continues `context` (e.g. the prompt ids), so the first generated token keeps
   * its leading space; {@link push} returns only the new text.
   */
  static async create(tok: TextTokenizer, context: number[] = []): Promise<StreamDecoder> {
    const d = new StreamDecoder(tok);
    d.ids = [...context];
    d.emitted = context.length ? await tok.decode(context) : '';
    return d;
  }
  async push(id: number): Promise<string> {
    this.ids.push(id);
    const text = await this.tok.decode(this.ids);
    if (text.endsWith('\uFFFD')) return '';
    const delta = text.startsWith(this.emitted) ? text.slice(this.emitted.length) : '';
    this.emitted = text;
    return delta;
  }
}
