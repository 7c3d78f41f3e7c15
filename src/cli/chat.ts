/**
 * edgellm chat: an interactive terminal chat on one conversation context (see `edgellm chat --help`).
 * Each turn renders the whole conversation with the chat template; the context's KV cache already
 * holds all but the new turn, so only the new tokens are evaluated. Ctrl-C stops the answer being
 * generated; Ctrl-D (or /exit) leaves.
 */
import * as readline from 'node:readline';
import type { Command } from 'commander';
import { int, addLoadFlags, loadFlags } from './common.js';
import { openSession } from './open-session.js';
import { addGenerationFlags, paramsFromFlags } from './generation-flags.js';
import type { ChatMessage } from '../../formats/chat-template.js';
import type { GenerateResult, ModelSession, GenerationInput } from '../runtime/session.js';
import { EdgeLLMError, UsageError } from '../core/errors.js';

const CONTEXT = 'chat';
const HELP = `commands:
  /save FILE      save the conversation (its KV cache and messages) to FILE
  /load FILE      load a conversation saved with /save (same model only)
  /clear          forget the conversation (the system message stays)
  /adapter NAME   switch the LoRA adapter ("none" for the base model); the conversation is re-evaluated
  /stats          TTFT, tokens/s and context use of the last answer
  /help           this list
  /exit           leave (or Ctrl-D); Ctrl-C stops the answer being generated`;

/** `edgellm chat`: interactive chat in the terminal. */
export function registerChat(program: Command): void {
  const cmd = program
    .command('chat')
    .description('chat with a model in the terminal (streams answers; /help lists the commands)')
    .argument('<model>', 'model.hef, model.har or a HuggingFace model directory')
    .option('--system <text>', 'a system message that starts the conversation')
    .option('--adapter <name>', 'start with this LoRA adapter of the HEF/HAR')
    .option('--chat-template <file>', "a jinja chat template to use instead of the model's")
    .option('--raw', 'no chat template: the conversation is plain text, each line continues it')
    .option('--prefill-len <n>', 'prefill chunk length when compiling a directory or HAR in memory', int('--prefill-len'), 128);
  addGenerationFlags(addLoadFlags(cmd), { maxTokens: 512 }).action(async (file: string, o) => {
    const params = paramsFromFlags(o);
    const { session } = await openSession(file, { prefillLen: o.prefillLen, adapter: o.adapter, chatTemplateFile: o.chatTemplate, ...loadFlags(o) });
    if (!o.raw && !session.hasChatTemplate) {
      await session.dispose();
      throw new UsageError(`${file}: the model has no chat_template; give one with --chat-template FILE, or chat with --raw`);
    }
    try {
      await new ChatLoop(session, { system: o.system, raw: o.raw === true, params, adapter: o.adapter ?? null }).run();
    } finally {
      await session.dispose();
    }
  });
}

interface LoopOptions {
  system?: string;
  raw: boolean;
  params: ReturnType<typeof paramsFromFlags>;
  adapter: string | null;
}

class ChatLoop {
  private messages: ChatMessage[] = [];
  /** raw mode: the conversation's token ids */
  private rawIds: number[] = [];
  private adapter: string | null;
  private last: GenerateResult | null = null;
  private abort: AbortController | null = null;
  private readonly lines: string[] = [];
  private wake: (() => void) | null = null;
  private closed = false;
  private readonly rl: readline.Interface;
  private readonly out = process.stdout;

  constructor(
    private readonly session: ModelSession,
    private readonly o: LoopOptions,
  ) {
    this.adapter = o.adapter;
    this.reset();
    this.rl = readline.createInterface({ input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY === true, prompt: '> ' });
    this.rl.on('line', (l) => this.enqueue(l));
    this.rl.on('close', () => {
      this.closed = true;
      this.abort?.abort();
      this.wake?.();
    });
    // Ctrl-C: stop the answer, not the program (readline raises this instead of the signal on a TTY)
    this.rl.on('SIGINT', () => this.interrupt());
    process.on('SIGINT', () => this.interrupt());
  }

  private interrupt(): void {
    if (this.abort) this.abort.abort();
    else {
      this.out.write('\n(Ctrl-D or /exit leaves)\n');
      this.rl.prompt();
    }
  }

  private enqueue(line: string): void {
    this.lines.push(line);
    this.wake?.();
  }

  private async nextLine(): Promise<string | null> {
    while (this.lines.length === 0) {
      if (this.closed) return null;
      await new Promise<void>((r) => (this.wake = r));
      this.wake = null;
    }
    return this.lines.shift()!;
  }

  private reset(): void {
    this.messages = this.o.system !== undefined ? [{ role: 'system', content: this.o.system }] : [];
    this.rawIds = [];
    if (this.session.contexts.has(CONTEXT)) this.session.contexts.clear(CONTEXT);
  }

  async run(): Promise<void> {
    const s = this.session;
    this.out.write(`edgellm chat: ${s.capacity}-token context, adapter ${this.adapter ?? 'none'}${this.o.raw ? ', raw text' : ''} (/help for commands)\n`);
    for (;;) {
      this.rl.prompt();
      const line = await this.nextLine();
      if (line === null) break;
      const text = line.trim();
      if (text === '') continue;
      try {
        if (text.startsWith('/')) {
          if (!this.command(text)) break;
        } else await this.turn(line);
      } catch (e) {
        if (!(e instanceof EdgeLLMError)) throw e;
        this.out.write(`error: ${e.message.split('\n')[0]}\n`);
      }
    }
    this.out.write('\n');
    this.rl.close();
  }

  /** @returns false to leave */
  private command(text: string): boolean {
    const [name, ...rest] = text.split(/\s+/);
    const arg = rest.join(' ');
    const ctx = this.session.contexts;
    switch (name) {
      case '/exit':
      case '/bye':
        return false;
      case '/help':
        this.out.write(HELP + '\n');
        break;
      case '/clear':
        this.reset();
        this.out.write('conversation cleared\n');
        break;
      case '/save': {
        if (!arg) throw new UsageError('/save FILE: give a file name');
        const held = ctx.get(CONTEXT, { create: true, adapter: this.adapter });
        held.meta = { messages: this.messages, rawIds: this.o.raw ? this.rawIds : undefined };
        const n = ctx.save(CONTEXT, arg);
        this.out.write(`saved ${n} tokens to ${arg}\n`);
        break;
      }
      case '/load': {
        if (!arg) throw new UsageError('/load FILE: give a file name');
        const held = ctx.load(CONTEXT, arg);
        const m = held.meta?.messages;
        this.messages = Array.isArray(m) ? (m as ChatMessage[]) : [];
        this.rawIds = Array.isArray(held.meta?.rawIds) ? (held.meta!.rawIds as number[]) : [...held.tokens];
        this.adapter = held.kv.adapter;
        this.out.write(`loaded ${held.tokens.length} tokens (${this.messages.length} messages, adapter ${this.adapter ?? 'none'}) from ${arg}\n`);
        break;
      }
      case '/adapter': {
        const want = arg === '' || arg === 'none' ? null : arg;
        if (want !== null && !this.session.backend.adapters.includes(want))
          throw new UsageError(`no adapter '${want}' (this model has: ${this.session.backend.adapters.join(', ') || 'none'})`);
        this.adapter = want;
        this.out.write(`adapter ${want ?? 'none'}\n`);
        break;
      }
      case '/stats': {
        const r = this.last;
        const used = this.session.contexts.has(CONTEXT) ? this.session.contexts.get(CONTEXT).tokens.length : 0;
        if (!r) this.out.write(`no answer yet | context ${used}/${this.session.capacity} tokens\n`);
        else
          this.out.write(
            `TTFT ${r.ttftMs.toFixed(1)} ms (${r.promptTokens - r.cachedTokens} new prompt tokens, ${r.cachedTokens} from the cache) | ` +
              `decode ${r.decodeTokensPerSecond.toFixed(1)} tokens/s (${r.tokens.length} tokens, ${r.status}) | context ${used}/${this.session.capacity} tokens\n`,
          );
        break;
      }
      default:
        throw new UsageError(`unknown command ${name} (/help lists them)`);
    }
    return true;
  }

  private async turn(line: string): Promise<void> {
    let input: GenerationInput;
    if (this.o.raw) input = { tokens: [...this.rawIds, ...(await this.session.tokenizer.encode(line, this.rawIds.length === 0))] };
    else input = { messages: [...this.messages, { role: 'user', content: line }] };
    this.abort = new AbortController();
    try {
      const r = await this.session.generate({
        input,
        context: CONTEXT,
        adapter: this.adapter,
        params: this.o.params,
        signal: this.abort.signal,
        onText: (t) => void this.out.write(t),
      });
      this.last = r;
      this.out.write(r.status === 'aborted' ? ' [stopped]\n' : r.status === 'context_full' ? ' [context full: /clear to start again]\n' : '\n');
      if (this.o.raw) this.rawIds = r.contextIds;
      else this.messages = [...(input as { messages: ChatMessage[] }).messages, { role: 'assistant', content: r.text }];
    } finally {
      this.abort = null;
    }
  }
}
