/**
 * Chat messages -> prompt text with a model's `chat_template` (tokenizer_config.json), rendered by
 * @huggingface/jinja the way transformers' `apply_chat_template` does: variables `messages`,
 * `add_generation_prompt`, `bos_token`, `eos_token` (plus any extra ones, e.g. Qwen3's
 * `enable_thinking`). The rendered text is tokenized without adding special tokens: the template
 * writes them itself.
 */
import { Template } from '@huggingface/jinja';
import { FormatError, UsageError } from '../src/core/errors.js';

export interface ChatMessage {
  /** "system" | "user" | "assistant" | "tool" (templates may accept others) */
  role: string;
  content: string;
}

export interface RenderOptions {
  /** append the assistant turn's opening (default true; false with `continueFinalMessage`) */
  addGenerationPrompt?: boolean;
  /**
   * the last message is an assistant message to continue mid-answer: the text ends right after its
   * content, with no end-of-turn (transformers' `continue_final_message`)
   */
  continueFinalMessage?: boolean;
  bosToken?: string | null;
  eosToken?: string | null;
  /** extra template variables */
  variables?: Record<string, unknown>;
}

/** A compiled chat template. */
export class ChatTemplate {
  private readonly template: Template;

  /**
   * @param source the jinja source
   * @param origin where it came from, for messages (e.g. "tokenizer_config.json" or a file path)
   * @throws FormatError naming `origin` when the source does not parse
   */
  constructor(
    readonly source: string,
    readonly origin: string,
  ) {
    try {
      this.template = new Template(source);
    } catch (e) {
      throw new FormatError(origin, `chat_template does not parse: ${(e as Error).message}`);
    }
  }

  /**
   * Renders `messages`.
   * @throws UsageError for an empty list, a message whose role or content is not a string, or
   *   `continueFinalMessage` when the last message is not the assistant's; FormatError naming the
   *   template's origin when rendering fails (e.g. the template raises on an unsupported role)
   */
  render(messages: readonly ChatMessage[], opts: RenderOptions = {}): string {
    if (messages.length === 0) throw new UsageError('messages: at least one message is needed');
    messages.forEach((m, i) => {
      if (typeof m?.role !== 'string' || m.role === '') throw new UsageError(`messages[${i}].role: must be a non-empty string`);
      if (typeof m.content !== 'string') throw new UsageError(`messages[${i}].content: must be a string`);
    });
    const last = messages[messages.length - 1];
    const cont = opts.continueFinalMessage === true;
    if (cont && last.role !== 'assistant') throw new UsageError(`messages: continuing the final message needs it to be the assistant's, not '${last.role}'`);
    let text: string;
    try {
      text = this.template.render({
        ...opts.variables,
        messages: messages.map((m) => ({ role: m.role, content: m.content })),
        add_generation_prompt: cont ? false : (opts.addGenerationPrompt ?? true),
        bos_token: opts.bosToken ?? '',
        eos_token: opts.eosToken ?? '',
      });
    } catch (e) {
      throw new FormatError(this.origin, `chat_template failed to render: ${(e as Error).message}`);
    }
    if (!cont) return text;
    const tail = last.content.trim();
    if (tail === '') return text;
    const at = text.lastIndexOf(tail);
    if (at < 0) throw new FormatError(this.origin, 'chat_template does not write the final message content verbatim, so it cannot be continued');
    return text.slice(0, at + tail.length);
  }
}
