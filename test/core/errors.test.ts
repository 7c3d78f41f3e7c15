/**
 * src/core/errors.ts: every typed error's message fits on one line — control characters from names
 * read out of a file (tensor names, section names, JSON.parse's quote of the input) are escaped.
 */
import { describe, expect, it } from 'vitest';
import { EdgeLLMError, FormatError, oneLine, ShapeMismatchError, UnsupportedModelError, UsageError } from '../../src/core/errors.js';

describe('oneLine', () => {
  it('escapes newlines, CR, tab and other C0/C1 control characters, and U+2028/U+2029', () => {
    expect(oneLine('a\nb\rc\td')).toBe('a\\nb\\rc\\td');
    expect(oneLine('\u0000\u001b[2J\u007f\u0085\u2028\u2029')).toBe('\\u0000\\u001b[2J\\u007f\\u0085\\u2028\\u2029');
  });

  it('leaves printable text, including non-ASCII and backslashes, unchanged', () => {
    const s = "tensor 'model.layers.0.q_proj' × F32 ≤ 1 \\n ünïcode 日本 😀";
    expect(oneLine(s)).toBe(s);
  });
});

describe('typed errors', () => {
  it('a FormatError message is one line and starts with the file; `problem` is kept as given', () => {
    const e = new FormatError('x/model.safetensors', "tensor 'a\nb': unknown dtype");
    expect(e.message).toBe("x/model.safetensors: tensor 'a\\nb': unknown dtype");
    expect(e.problem).toBe("tensor 'a\nb': unknown dtype");
    expect(e.exitCode).toBe(3);
  });

  it('a JSON.parse message quoting a newline becomes one line', () => {
    let parseMessage = '';
    try {
      JSON.parse('z\n  "add_bos_token": true');
    } catch (e) {
      parseMessage = (e as Error).message;
    }
    expect(parseMessage).toContain('\n'); // V8 quotes the input around the error
    expect(new FormatError('tokenizer_config.json', `not valid JSON: ${parseMessage}`).message).not.toContain('\n');
  });

  it.each([EdgeLLMError, UnsupportedModelError, ShapeMismatchError, UsageError])('%o escapes its message too', (C) => {
    const e = new C("config.json: unsupported model_type 'lla\nma'");
    expect(e.message).toBe("config.json: unsupported model_type 'lla\\nma'");
    expect(e.name).toBe(C.name);
  });
});
