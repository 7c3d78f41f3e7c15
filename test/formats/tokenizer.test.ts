/**
 * formats/tokenizer.ts: TextTokenizer refuses malformed tokenizer files with a one-line FormatError
 * naming the file and the field: a tokenizer_config.json that is not a JSON object or whose
 * bos/eos token is neither a string nor {"content": string}, and a tokenizer.json whose
 * post_processor adds a special token the vocabulary does not hold (which would make the Rust
 * `tokenizers` panic on the first encode and abort Node).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { STORIES } from '../helpers/paths.js';
import { expectOneLineFormatError, thrownBy } from '../helpers/errors.js';

const tokenizerJson = fs.readFileSync(path.join(STORIES, 'tokenizer.json'), 'utf8');
const tokenizerConfigJson = fs.readFileSync(path.join(STORIES, 'tokenizer_config.json'), 'utf8');
const realTokenizer = JSON.parse(tokenizerJson) as Record<string, any>;
const realConfig = JSON.parse(tokenizerConfigJson) as Record<string, unknown>;

const load = (files: { tokenizerJson?: string; tokenizerConfigJson?: string | null }) =>
  new TextTokenizer({ tokenizerJson, tokenizerConfigJson, generationConfigJson: null, ...files }, 'x/tokenizer.json');

/** tokenizer.json text with its post_processor replaced by `edit(copy of the real one)`. */
function withPostProcessor(edit: (pp: Record<string, any>) => unknown): string {
  const t = structuredClone(realTokenizer);
  const r = edit(t.post_processor);
  if (r !== undefined) t.post_processor = r;
  return JSON.stringify(t);
}

describe('tokenizer_config.json', () => {
  it.each(['null', '[]', '3', '"text"', 'true'])('refuses %s (not a JSON object)', (text) => {
    expectOneLineFormatError(thrownBy(() => load({ tokenizerConfigJson: text })), 'tokenizer_config.json', /must be a JSON object/);
  });

  it('refuses a bos/eos token that is not a string, null or {"content": string}, naming the field', () => {
    for (const key of ['bos_token', 'eos_token'])
      for (const bad of [{ content: { toString: 1 } }, { content: 5 }, {}, 7, ['</s>']]) {
        const e = thrownBy(() => load({ tokenizerConfigJson: JSON.stringify({ ...realConfig, [key]: bad }) }));
        expectOneLineFormatError(e, 'tokenizer_config.json', new RegExp(`field '${key}' must be a token string`));
      }
  });

  it('reads string, {"content"} and null tokens', () => {
    const t = load({ tokenizerConfigJson: JSON.stringify({ ...realConfig, bos_token: { content: '<s>', lstrip: false }, eos_token: null }) });
    expect([t.bosToken, t.bosTokenId, t.eosToken, t.eosTokenId]).toEqual(['<s>', 1, null, null]);
    expect(load({ tokenizerConfigJson: null }).bosToken).toBeNull();
  });

  it('keeps a multi-line JSON.parse message on one line', () => {
    const e = thrownBy(() => load({ tokenizerConfigJson: 'z\n  "add_bos_token": true,\n}' }));
    expectOneLineFormatError(e, 'tokenizer_config.json', /not valid JSON: .*\\n/);
  });
});

describe('tokenizer.json post_processor', () => {
  const cases: [string, string, RegExp][] = [
    [
      'a template piece whose special token special_tokens lacks ("<s>" renamed "Ns>")',
      withPostProcessor((pp) => void (pp.special_tokens = { 'Ns>': { ...pp.special_tokens['<s>'], id: 'Ns>' } })),
      /TemplateProcessing single adds special token "<s>", which special_tokens does not define/,
    ],
    ['a special_tokens entry whose token is not in the vocabulary', withPostProcessor((pp) => void (pp.special_tokens['<s>'].tokens = ['Ns>'])), /special token "Ns>", which is not in the vocabulary/],
    ['a special_tokens entry with the wrong id', withPostProcessor((pp) => void (pp.special_tokens['<s>'].ids = [99999])), /special token "<s>" id 99999, the vocabulary has 1/],
    ['ids and tokens of different lengths', withPostProcessor((pp) => void (pp.special_tokens['<s>'].ids = [1, 2])), /must hold as many ids as tokens/],
    ['$B in the single-sequence template', withPostProcessor((pp) => void (pp.single = [{ Sequence: { id: 'B', type_id: 0 } }])), /single names sequence "B"/],
    [
      'a pair piece naming an undefined special token',
      withPostProcessor((pp) => void pp.pair.unshift({ SpecialToken: { id: 'Nope', type_id: 0 } })),
      /pair adds special token "Nope"/,
    ],
    ['BertProcessing sep not in the vocabulary', withPostProcessor(() => ({ type: 'BertProcessing', sep: ['Nope', 2], cls: ['<s>', 1] })), /BertProcessing sep names special token "Nope"/],
    [
      'RobertaProcessing cls with the wrong id',
      withPostProcessor(() => ({ type: 'RobertaProcessing', sep: ['</s>', 2], cls: ['<s>', 5], trim_offsets: true, add_prefix_space: true })),
      /RobertaProcessing cls gives special token "<s>" id 5/,
    ],
    [
      'a bad TemplateProcessing inside a Sequence',
      withPostProcessor((pp) => ({ type: 'Sequence', processors: [{ ...pp, special_tokens: {} }] })),
      /TemplateProcessing single adds special token "<s>"/,
    ],
  ];

  it.each(cases)('refuses %s, naming tokenizer.json and the token', (_name, json, pattern) => {
    expectOneLineFormatError(thrownBy(() => load({ tokenizerJson: json })), 'x/tokenizer.json', pattern);
  });

  it('loads and encodes the real template, no post_processor, ByteLevel and valid Bert/Roberta/Sequence processors', async () => {
    const ok = [
      tokenizerJson,
      withPostProcessor(() => null),
      withPostProcessor(() => ({ type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true })),
      withPostProcessor(() => ({ type: 'BertProcessing', sep: ['</s>', 2], cls: ['<s>', 1] })),
      withPostProcessor(() => ({ type: 'RobertaProcessing', sep: ['</s>', 2], cls: ['<s>', 1], trim_offsets: true, add_prefix_space: true })),
      withPostProcessor((pp) => ({ type: 'Sequence', processors: [pp] })),
    ];
    for (const json of ok) expect((await load({ tokenizerJson: json }).encode('Once upon a time')).length).toBeGreaterThan(3);
    expect((await load({}).encode('Once upon a time'))[0]).toBe(1); // the template prepends <s>
  });
});

/** A Precompiled charsmap: [u32le trie bytes][trie units, u32le][replacement strings]. */
function charsmap(units: number[], strings: string): string {
  const b = Buffer.alloc(4 + 4 * units.length);
  b.writeUInt32LE(4 * units.length, 0);
  units.forEach((u, i) => b.writeUInt32LE(u >>> 0, 4 + 4 * i));
  return Buffer.concat([b, Buffer.from(strings, 'utf8')]).toString('base64');
}
/** A 512-unit trie mapping byte 'a' to the replacement at byte `at` (root at 0, the leaf in block 1). */
function mapA(at: number, units = 512): number[] {
  const t = new Array<number>(units).fill(0);
  const a = 0x61;
  t[a] = ((a ^ 256) << 10) | (1 << 8) | a; // label 'a', has a leaf, children at 256
  t[256] = at; // the leaf's value: an offset into the strings
  return t;
}
const withNormalizer = (normalizer: unknown, extra: Record<string, unknown> = {}) => JSON.stringify({ ...structuredClone(realTokenizer), normalizer, ...extra });

describe('tokenizer.json checks that keep tokenizers from panicking (which would abort Node)', () => {
  it('loads a valid Precompiled charsmap and applies it', async () => {
    const tok = load({ tokenizerJson: withNormalizer({ type: 'Sequence', normalizers: [{ type: 'Precompiled', precompiled_charsmap: charsmap(mapA(0), 'b\0') }] }) });
    const plain = load({ tokenizerJson: withNormalizer(null) });
    expect(await tok.encode('a')).toEqual(await plain.encode('b'));
    expect(await tok.encode('a')).not.toEqual(await plain.encode('a'));
  });

  it.each([
    ['not base64', '!!!!', /must be a base64 string/],
    ['shorter than its trie size', 'AAAA', /less than its 4-byte trie size/],
    ['a trie longer than the data', Buffer.from([64, 0, 0, 0, 0, 0, 0, 0]).toString('base64'), /trie of 16 units runs past its end/],
    ['an empty trie', charsmap([], ''), /trie is empty/],
    ['a trie one block too short (reads unit 255 of 255)', charsmap(new Array(255).fill(0), ''), /reads unit 255 of 255/],
    ['a leaf pointing past the replacement strings', charsmap(mapA(9), 'b\0'), /points at byte 9/],
    ['a leaf pointing inside a UTF-8 character', charsmap(mapA(1), 'é\0'), /points at byte 1/],
    ['replacement strings that are not UTF-8', Buffer.concat([Buffer.from(charsmap(mapA(0), ''), 'base64'), Buffer.from([0xff, 0])]).toString('base64'), /not UTF-8/],
  ])('refuses a Precompiled normalizer with %s', (_name, map, pattern) => {
    const e = thrownBy(() => load({ tokenizerJson: withNormalizer({ type: 'Precompiled', precompiled_charsmap: map }) }));
    expectOneLineFormatError(e, 'x/tokenizer.json', /normalizer \(Precompiled\): /);
    expect((e as Error).message).toMatch(pattern);
  });

  it('refuses a truncation stride not below max_length less the special tokens added, and accepts stride 0', async () => {
    const trunc = (max_length: number, stride: number) => JSON.stringify({ ...realTokenizer, truncation: { direction: 'Right', max_length, strategy: 'LongestFirst', stride } });
    expectOneLineFormatError(thrownBy(() => load({ tokenizerJson: trunc(2, 5) })), 'x/tokenizer.json', /truncation: stride 5 must be less than max_length 2 minus the 2 special tokens/); // the pair template adds two <s>
    expectOneLineFormatError(thrownBy(() => load({ tokenizerJson: trunc(3, 2) })), 'x/tokenizer.json', /stride 2/);
    expect(await load({ tokenizerJson: trunc(5, 2) }).encode('Once upon a time')).toHaveLength(5);
    expect(await load({ tokenizerJson: trunc(1, 0) }).encode('Once upon a time')).toHaveLength(1);
  });

  it('turns an encode the tokenizer refuses into a FormatError naming tokenizer.json', async () => {
    const json = JSON.stringify({ ...realTokenizer, truncation: { direction: 'Right', max_length: 3, strategy: 'OnlySecond', stride: 0 } });
    const e = await load({ tokenizerJson: json }).encode('Once upon a time').then(() => undefined, (x: unknown) => x);
    expectOneLineFormatError(e, 'x/tokenizer.json', /cannot encode: .*Second sequence not provided/);
  });
});
