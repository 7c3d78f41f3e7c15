/**
 * Fuzzing what is parsed when a HuggingFace directory loads: config.json through
 * formats/hf.ts normalizeConfig(raw, file), and tokenizer.json / tokenizer_config.json through
 * formats/tokenizer.ts TextTokenizer (readTokenizerFiles only reads them as text;
 * generation_config.json is carried as text and parsed by no reader, so there is nothing to fuzz).
 * Property: returns, or throws a one-line FormatError naming the file, or (config.json)
 * UnsupportedModelError; a tokenizer that loads also encodes (with and without special tokens) or
 * refuses with such a FormatError, and never aborts the process (a panic in the Rust binding).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { normalizeConfig } from '../../formats/hf.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { UnsupportedModelError } from '../../src/core/errors.js';
import type { ModelConfig } from '../../src/ir/model.js';
import { STORIES } from '../helpers/paths.js';
import { anyJson, anyString, applyAll, applyMutation, byteMutation, expectTyped, expectTypedSync, Outcomes, runProperty, tally, TEST_TIMEOUT_MS, withField } from './fuzz-helpers.js';

/** encode with every tokenizer that loads (EDGELLM_FUZZ_ENCODE=0 turns it off) */
const ENCODE = process.env.EDGELLM_FUZZ_ENCODE !== '0';
const TRACE = process.env.EDGELLM_FUZZ_TRACE;
const CONFIG_FILE = path.join(STORIES, 'config.json');
const realConfig = JSON.parse(fs.readFileSync(CONFIG_FILE, 'utf8')) as Record<string, unknown>;
const FIELDS = [...Object.keys(realConfig), 'rope_scaling', 'mlp_bias', 'head_dim', 'num_key_value_heads'];

/** On success the documented fields are valid (what normalizeConfig promises its callers). */
function checkConfig(c: ModelConfig): void {
  for (const k of ['hiddenSize', 'intermediateSize', 'numLayers', 'numHeads', 'numKvHeads', 'headDim', 'vocabSize', 'maxPositionEmbeddings'] as const)
    expect(Number.isInteger(c[k]) && c[k] > 0, `${k} = ${c[k]}`).toBe(true);
  expect(c.numHeads % c.numKvHeads).toBe(0);
  expect(Number.isFinite(c.rmsNormEps) && Number.isFinite(c.ropeTheta)).toBe(true);
  expect(typeof c.tieWordEmbeddings).toBe('boolean');
  expect(typeof c.modelType).toBe('string');
  for (const id of [...c.eosTokenIds, ...(c.bosTokenId === null ? [] : [c.bosTokenId])]) expect(Number.isSafeInteger(id) && id >= 0, `token id ${id}`).toBe(true);
}

/** Values a config field may be set to: any JSON, nasty values, and plausible ones. */
const fieldValue = fc.oneof(anyJson, fc.integer({ min: -3, max: 600 }), fc.constantFrom('llama', 'qwen2', 'mistral', 'silu', 'gelu', true, false, null, [1, 2], ['llama'], ['silu'], { type: 'linear', factor: 2 }));

type Edit = { key: string; value: unknown; remove: boolean };
const editArb: fc.Arbitrary<Edit> = fc.record({ key: fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...FIELDS) }, { weight: 1, arbitrary: anyString }), value: fieldValue, remove: fc.boolean() });

describe('fuzz: config.json (normalizeConfig)', () => {
  it('stories260K config.json with fields replaced, removed or added', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    await runProperty(
      'config.json mutated-real',
      fc.property(fc.array(editArb, { minLength: 1, maxLength: 4 }), (edits) => {
        let raw = realConfig;
        for (const e of edits) raw = withField(raw, e.key, e.value, e.remove);
        raw = JSON.parse(JSON.stringify(raw)); // what readJson would hand over
        const c = expectTypedSync(tally(out, () => normalizeConfig(raw, CONFIG_FILE)), { file: CONFIG_FILE, also: [UnsupportedModelError] });
        if (c) checkConfig(c);
      }),
      { seedOffset: 201, outcomes: out },
    );
  });

  it('arbitrary objects (fc.anything and JSON objects) as config.json', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    const rawArb = fc.oneof(
      fc.tuple(fc.constantFrom('llama', 'qwen2', 'mistral'), fc.dictionary(fc.constantFrom(...FIELDS), fieldValue, { maxKeys: 12 })).map(([t, d]) => ({ model_type: t, ...d })),
      fc.dictionary(fc.oneof(fc.constantFrom(...FIELDS), anyString), fieldValue, { maxKeys: 12 }),
      fc.object({ maxDepth: 2 }),
      fc.anything({ maxDepth: 2 }).filter((v): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)),
    );
    await runProperty(
      'config.json arbitrary',
      fc.property(rawArb, (raw) => {
        const c = expectTypedSync(tally(out, () => normalizeConfig(raw, CONFIG_FILE)), { file: CONFIG_FILE, also: [UnsupportedModelError] });
        if (c) checkConfig(c);
      }),
      { seedOffset: 202, outcomes: out },
    );
  });
});

/**
 * tokenizer.json with its post_processor, truncation and normalizer replaced by plausible but often
 * inconsistent values: TemplateProcessing / Bert / Roberta / Sequence processors naming tokens in or
 * out of the vocabulary with right or wrong ids (the real template with its special token renamed
 * among them), truncation strides around max_length, and Precompiled normalizers whose charsmap is
 * a small double-array trie with a few units set (labels, leaves, offsets).
 */
function processorEdits(tj: Record<string, any>): fc.Arbitrary<Record<string, unknown>> {
  const token = fc.constantFrom('<s>', '</s>', '<unk>', 'Ns>', 'Once', '', 'a\nb');
  const id = fc.oneof(fc.constantFrom(0, 1, 2, 511, 512, 99999), fc.integer({ min: -1, max: 600 }));
  const piece = fc.oneof(
    fc.record({ SpecialToken: fc.record({ id: token, type_id: fc.nat({ max: 2 }) }) }),
    fc.record({ Sequence: fc.record({ id: fc.constantFrom('A', 'B'), type_id: fc.nat({ max: 2 }) }) }),
  );
  const specials = fc.dictionary(token, fc.record({ ids: fc.array(id, { maxLength: 2 }), tokens: fc.array(token, { maxLength: 2 }) }), { maxKeys: 2 });
  const real = tj.post_processor;
  const processor = fc.oneof(
    fc.constant(real),
    token.map((k) => ({ ...real, special_tokens: { [k]: { ...real.special_tokens['<s>'], id: k } } })),
    fc.record({ single: fc.array(piece, { maxLength: 3 }), pair: fc.array(piece, { maxLength: 4 }), special_tokens: specials }, { requiredKeys: [] }).map((r) => ({ ...real, ...r })),
    fc.record({ type: fc.constantFrom('BertProcessing', 'RobertaProcessing'), sep: fc.tuple(token, id), cls: fc.tuple(token, id), trim_offsets: fc.boolean(), add_prefix_space: fc.boolean() }),
    fc.constant(null),
  );
  const postProcessor = fc.oneof(processor, fc.array(processor, { maxLength: 2 }).map((processors) => ({ type: 'Sequence', processors })));
  const truncation = fc.oneof(
    fc.constant(null),
    fc.record({ direction: fc.constantFrom('Left', 'Right'), max_length: fc.nat({ max: 8 }), strategy: fc.constantFrom('LongestFirst', 'OnlyFirst', 'OnlySecond'), stride: fc.nat({ max: 8 }) }),
  );
  const unitSet = fc.record({ at: fc.nat({ max: 511 }), offset: fc.nat({ max: 1023 }), leaf: fc.boolean(), wide: fc.boolean(), label: fc.option(fc.nat({ max: 255 })) });
  const charsmap = fc.record({ n: fc.constantFrom(0, 1, 255, 256, 512), sets: fc.array(unitSet, { maxLength: 4 }), strings: fc.uint8Array({ maxLength: 8 }), sizeDelta: fc.constantFrom(0, 0, 0, 4, -4, 1) }).map(({ n, sets, strings, sizeDelta }) => {
    const b = Buffer.alloc(4 + 4 * n);
    b.writeUInt32LE(Math.max(0, 4 * n + sizeDelta), 0);
    for (const s of sets) if (s.at < n) b.writeUInt32LE(((s.offset << 10) | (s.wide ? 512 : 0) | (s.leaf ? 256 : 0) | (s.label ?? s.at & 255)) >>> 0, 4 + 4 * s.at);
    return Buffer.concat([b, strings]).toString('base64');
  });
  const normalizer = fc.oneof(fc.constant(tj.normalizer), fc.constant(null), charsmap.map((precompiled_charsmap) => ({ type: 'Precompiled', precompiled_charsmap })));
  return fc.record({ post_processor: postProcessor, truncation, normalizer }, { requiredKeys: [] }).map((r) => ({ ...tj, ...r }));
}

describe('fuzz: tokenizer files (TextTokenizer)', () => {
  const tokenizerJson = fs.readFileSync(path.join(STORIES, 'tokenizer.json'), 'utf8');
  const tokenizerConfigJson = fs.readFileSync(path.join(STORIES, 'tokenizer_config.json'), 'utf8');
  const tokenizerConfig = JSON.parse(tokenizerConfigJson) as Record<string, unknown>;
  const generationConfigJson = fs.existsSync(path.join(STORIES, 'generation_config.json')) ? fs.readFileSync(path.join(STORIES, 'generation_config.json'), 'utf8') : null;
  const enc = new TextEncoder();
  const dec = new TextDecoder();

  it('tokenizer_config.json: mutated fields and raw text', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    const keys = [...Object.keys(tokenizerConfig), 'bos_token', 'eos_token', 'add_bos_token', 'chat_template'];
    const textArb = fc.oneof(
      fc.array(fc.record({ key: fc.oneof(fc.constantFrom(...keys), anyString), value: fc.oneof(anyJson, fc.record({ content: anyJson }), fc.constantFrom('<s>', '</s>', '<unk>')), remove: fc.boolean() }), { minLength: 1, maxLength: 4 }).map((edits) => {
        let c = tokenizerConfig;
        for (const e of edits) c = withField(c, e.key, e.value, e.remove);
        return JSON.stringify(c);
      }),
      anyJson.map((v) => JSON.stringify(v) ?? 'null'),
      byteMutation(tokenizerConfigJson.length, 512).map((m) => dec.decode(applyMutation(enc.encode(tokenizerConfigJson), m))),
      fc.string({ unit: 'binary', maxLength: 40 }),
    );
    await runProperty(
      'tokenizer_config.json',
      fc.property(textArb, (text) => {
        const tok = expectTypedSync(tally(out, () => new TextTokenizer({ tokenizerJson, tokenizerConfigJson: text, generationConfigJson }, 'tokenizer.json')), { file: 'tokenizer_config.json' });
        if (tok) expect(typeof tok.addBosToken).toBe('boolean');
      }),
      { seedOffset: 203, outcomes: out },
    );
  });

  it('tokenizer.json: byte mutations and JSON edits', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    const tj = JSON.parse(tokenizerJson) as Record<string, any>;
    const bytes = enc.encode(tokenizerJson);
    const textArb = fc.oneof(
      fc.array(byteMutation(bytes.length, 2048), { minLength: 1, maxLength: 3 }).map((ms) => dec.decode(applyAll(bytes, ms))),
      fc.array(fc.record({ key: fc.oneof(fc.constantFrom(...Object.keys(tj)), anyString), value: anyJson, remove: fc.boolean() }), { minLength: 1, maxLength: 3 }).map((edits) => {
        let c = tj;
        for (const e of edits) c = withField(c, e.key, e.value, e.remove);
        return JSON.stringify(c);
      }),
      anyJson.map((v) => JSON.stringify(v) ?? ''),
      processorEdits(tj).map((c) => JSON.stringify(c)),
    );
    await runProperty(
      'tokenizer.json',
      fc.asyncProperty(textArb, async (text) => {
        const tok = expectTypedSync(tally(out, () => new TextTokenizer({ tokenizerJson: text, tokenizerConfigJson, generationConfigJson }, 'tokenizer.json')), { file: 'tokenizer.json' });
        // Encoding with every tokenizer that loads: a tokenizer.json that makes the Rust binding
        // panic (a post_processor special token missing from the vocabulary, a bad Precompiled
        // charsmap, a truncation stride too large) aborts the whole process, so TextTokenizer must
        // refuse it when it loads (formats/tokenizer-check.ts). EDGELLM_FUZZ_TRACE=<file> writes
        // each case there first, to recover the input after an abort.
        if (tok && ENCODE) {
          if (TRACE) fs.writeFileSync(TRACE, text);
          const ids = await expectTyped(async () => {
            try {
              const sample = 'Once upon a time, 12 ünïcode ｗｉｄｅ tokens and a longer tail of words to truncate';
              const r = [...(await tok.encode(sample)), ...(await tok.encode(sample, false))];
              out.add('encode ok');
              return r;
            } catch (e) {
              out.add(`encode ${(e as Error)?.constructor?.name}`);
              throw e;
            }
          }, { file: 'tokenizer.json' });
          if (ids) expect(ids.every((id) => Number.isInteger(id) && id >= 0)).toBe(true);
        }
      }),
      { seedOffset: 204, outcomes: out },
    );
  });
});
