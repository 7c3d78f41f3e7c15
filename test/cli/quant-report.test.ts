/**
 * `edgellm inspect --report` / `--report-html` with a sensitivity analysis (src/cli/quant-report.ts,
 * src/cli/sensitivity-report.ts), on a real stories260K HAR quantized here with one 16-bit activation
 * point (a recipe override): the SQNR table marks that point A16 and the rest A8 / KV8; the sensitivity
 * table lists every candidate once, sorted by gain per KiB, with the top 5 and the +10% greedy choice
 * (src/ir/sensitivity.ts choosePromotions) marked; the page is well-formed HTML with every name
 * escaped, bars whose widths are proportional to the gains and a scatter whose coordinates are linear
 * in bytes and gain; `--json` carries the sensitivity unchanged and a malformed one is a one-line
 * format error.
 *
 * The sensitivity object is built from the model: its candidates are the real modules of the HAR
 * (every W4 linear → g16 and → W8, every A8 point → A16), their costs the real device bytes
 * (src/ir/quant-scheme.ts linearBytes at the HAR's precision); the KLDs are drawn from a seeded
 * generator around a baseline of the magnitude `analyze` measures on this model (0.19 nats/token),
 * with some promotions worse than the baseline and a free one with a zero gain.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { edgellm, STORIES } from '../helpers/cli.js';
import { fileWriter, suiteTempDir } from '../helpers/tmp.js';
import { loadModelHar, setHarReport } from '../../formats/har-model.js';
import { formatReport, renderReportHtml, reportRows } from '../../src/cli/quant-report.js';
import { TOP_MARKED } from '../../src/cli/sensitivity-report.js';
import { choosePromotions, type SensitivityCandidate, type SensitivityReport } from '../../src/ir/sensitivity.js';
import { activationPoints, allLinears } from '../../src/ir/architectures.js';
import { linearBytes } from '../../src/ir/quant-scheme.js';
import { formatLinearPrecision, type LinearPrecision } from '../../src/ir/precision.js';
import { mulberry32 } from '../../src/core/rng.js';
import type { Model, QuantReport } from '../../src/ir/model.js';

const dir = suiteTempDir('edgellm-cli-quant-report-');
const write = fileWriter(dir);
const A16_POINT = 'model.layers.1.down_proj_in';

function ok(...args: string[]): string {
  const r = edgellm(...args);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout;
}

/** A sensitivity report over `model`'s real modules and device bytes, with seeded KLDs (see the file doc). */
function sensitivityOf(model: Model, seed = 1): SensitivityReport {
  const rand = mulberry32(seed);
  const baselineKld = 0.1877;
  const candidates: SensitivityCandidate[] = [];
  for (const spec of allLinears(model.config)) {
    const q = model.quant.linears[spec.name];
    if (!q || q.bits !== 4) continue;
    const from: LinearPrecision = { bits: 4, groupSize: q.groupSize, method: q.method as 'gptq' };
    const tos: [LinearPrecision, SensitivityCandidate['settings']][] = [[{ ...from, bits: 8 }, { weight_bits: 8 }]];
    if (q.groupSize > 16) tos.unshift([{ ...from, groupSize: 16 }, { group_size: 16 }]);
    for (const [to, settings] of tos) {
      const gain = (to.bits === 8 ? 0.006 : 0.0012) * (rand() * 1.6 - 0.3);
      candidates.push({ module: spec.name, kind: 'linear', settings, from: formatLinearPrecision(from), to: formatLinearPrecision(to), bytes: linearBytes(spec, to) - linearBytes(spec, from), kld: baselineKld - gain, gain });
    }
  }
  for (const point of activationPoints(model.config)) {
    const p = model.quant.activations[point] as { bits?: number } | undefined;
    if (!p || p.bits === 16) continue;
    const gain = point === 'model.layers.3.mlp_in' ? 0 : 0.002 * (rand() * 1.5 - 0.4);
    candidates.push({ module: point, kind: 'activation', settings: { act_bits: 16 }, from: 'A8', to: 'A16', bytes: 0, kld: baselineKld - gain, gain });
  }
  return { metric: 'kld', adapter: null, windows: 16, seqLen: 256, baselineKld, baselineKldStderr: 0.00384, baselineBytes: 353216, maxContext: 512, candidates };
}

/** The ranking the report must show, computed here from its definition: gain per KiB, ties by gain, then model order. */
function expectedOrder(s: SensitivityReport): SensitivityCandidate[] {
  const key = (c: SensitivityCandidate) => (c.bytes > 0 ? c.gain / (c.bytes / 1024) : c.gain > 0 ? Infinity : c.gain < 0 ? -Infinity : 0);
  return s.candidates
    .map((c, i) => ({ c, i }))
    .sort((a, b) => (key(a.c) === key(b.c) ? b.c.gain - a.c.gain || a.i - b.i : key(b.c) - key(a.c)))
    .map(({ c }) => c);
}

const unescape = (s: string) => s.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&amp;/g, '&');

/** Asserts `html` is well-formed: tags balanced (meta void), no raw `<`/`>` in text or attribute values, every `&` an entity. */
function expectWellFormed(html: string): void {
  const body = html.replace(/^<!doctype html>/i, '');
  const tag = /<(\/?)([a-zA-Z][\w-]*)((?:\s+[\w:-]+="[^"<>]*")*)\s*(\/?)>/g;
  const stack: string[] = [];
  let last = 0;
  for (let m = tag.exec(body); m; m = tag.exec(body)) {
    const text = body.slice(last, m.index);
    expect(text, `text before <${m[2]}> at ${m.index}`).not.toMatch(/[<>]/);
    expect(text + m[3]).not.toMatch(/&(?!(amp|lt|gt|quot|#39);)/);
    last = tag.lastIndex;
    if (m[1]) expect(stack.pop(), `</${m[2]}> at ${m.index}`).toBe(m[2]);
    else if (!m[4] && m[2] !== 'meta') stack.push(m[2]);
  }
  expect(body.slice(last).trim()).toBe('');
  expect(stack).toEqual([]);
}

function svgOf(html: string, cls: string): string {
  const m = new RegExp(`<svg class="${cls}"[\\s\\S]*?</svg>`).exec(html);
  expect(m, cls).not.toBeNull();
  return m![0];
}

/** Table rows of the text's sensitivity section: markers, rank, module, promotion, +bytes, KLD, gain, gain/KiB. */
function textRows(text: string) {
  const section = text.slice(text.indexOf('\nsensitivity: '));
  const re = /^([* ])([+ ]) *(\d+) {2}(\S+) +(\S.*? → \S+(?: \S+)?) +(\d+(?:\.\d+)? (?:B|KiB|MiB|GiB)) +(\d\.\d{5}) +([+−]\d\.\d{5}) +(\S+)$/;
  return section
    .split('\n')
    .map((l) => re.exec(l))
    .filter((m): m is RegExpExecArray => !!m)
    .map((m) => ({ top: m[1] === '*', chosen: m[2] === '+', rank: Number(m[3]), module: m[4], promotion: m[5], gain: Number(m[8].replace('−', '-')), perKiB: m[9] }));
}

describe('inspect --report / --report-html with a sensitivity analysis, on a stories260K HAR with one A16 point', () => {
  const har = path.join(dir, 'a16.har');
  const withSens = path.join(dir, 'sens.har');
  let model: Model;
  let sens: SensitivityReport;
  let report: QuantReport;
  beforeAll(async () => {
    const recipe = write('a16.yaml', `overrides:\n  ${A16_POINT}: {act_bits: 16}\n`);
    ok('-q', 'quantize', STORIES, '-o', har, '--calib-samples', '8', '--no-emulation-weights', '--recipe', recipe);
    model = (await loadModelHar(har, { emulation: false })).model;
    sens = sensitivityOf(model);
    report = { ...model.report!, sensitivity: sens };
    await setHarReport(har, withSens, report);
  });

  it('the SQNR table shows each point width: A16 for the 16-bit point, A8 for the others, KV8 for the caches', () => {
    expect((model.quant.activations[A16_POINT] as { bits?: number }).bits).toBe(16);
    const rows = reportRows(model.report!);
    const points = rows.filter((r) => r.kind !== 'linear');
    expect(points.length).toBe(Object.keys(model.report!.points).length);
    for (const r of points) expect(r.detail.split(' ')[0], r.name).toBe(r.kind === 'kv-cache' ? 'KV8' : r.name === A16_POINT ? 'A16' : 'A8');
    expect(formatReport(model.report!)).toMatch(new RegExp(`${A16_POINT.replace(/\./g, '\\.')} +\\d+\\.\\d+ +A16 scale`));
    // the stored ranges, when given, are what decides (a report entry without `bits`)
    const { bits: _b, ...stripped } = model.report!.points[A16_POINT] as QuantReport['points'][string] & { bits?: number };
    const old = { ...model.report!, points: { ...model.report!.points, [A16_POINT]: stripped } };
    expect(reportRows(old).find((r) => r.name === A16_POINT)!.detail).toMatch(/^A8 /);
    expect(reportRows(old, { activations: model.quant.activations }).find((r) => r.name === A16_POINT)!.detail).toMatch(/^A16 /);
  });

  it('the text lists every candidate once, sorted by gain per KiB, with the top and the +10% choice marked', () => {
    const text = formatReport(report);
    expect(text.indexOf('SQNR dB')).toBeLessThan(text.indexOf('\nsensitivity: '));
    const rows = textRows(text);
    const order = expectedOrder(sens);
    expect(sens.candidates.length).toBeGreaterThan(80); // 5 layers × 7 linears × 2 + lm_head ×1 + 20 A8 points
    expect(rows.map((r) => `${r.module} ${r.promotion}`)).toEqual(order.map((c) => `${c.module} ${c.from.replace(/ gptq$/, '')} → ${c.to.replace(/ gptq$/, '')}`));
    expect(rows.map((r) => r.rank)).toEqual(order.map((_, i) => i + 1));
    for (const [i, r] of rows.entries()) expect(r.gain).toBeCloseTo(order[i].gain, 5);
    for (const name of new Set(sens.candidates.map((c) => c.module))) expect(text).toContain(name);
    // gain per KiB is non-increasing down the table where it is a number; free ones that help come first
    const numeric = rows.filter((r) => r.perKiB !== 'free').map((r) => Number(r.perKiB.replace('−', '-')));
    for (let i = 1; i < numeric.length; i++) expect(numeric[i]).toBeLessThanOrEqual(numeric[i - 1] * (1 + 1e-2) + 1e-9);
    expect(rows[0].perKiB).toBe('free');
    // markers: * on the first TOP_MARKED that help, + on exactly what choosePromotions takes within +10%
    expect(rows.filter((r) => r.top).map((r) => r.rank)).toEqual(rows.filter((r) => r.gain > 0).slice(0, TOP_MARKED).map((r) => r.rank));
    const choice = choosePromotions(sens, Math.floor(sens.baselineBytes * 0.1));
    expect(rows.filter((r) => r.chosen).length).toBe(choice.chosen.length);
    for (const c of choice.chosen) expect(rows.find((r) => r.chosen && r.module === c.module)!.promotion).toContain(c.to.replace(/ gptq$/, ''));
    expect(text).toContain(`the greedy choice takes ${choice.chosen.length} promotions`);
    expect(text).toContain(`estimated gain ${choice.estimatedGain.toFixed(5)} nats/token`);
    // baseline ± stderr, windows × seqLen, adapter; readable at ~100 columns
    expect(text).toContain('baseline KLD 0.18770 ± 0.00384 (stderr)');
    expect(text).toContain('16 windows × 256 tokens, adapter none');
    const worse = sens.candidates.filter((c) => c.gain < 0).length;
    expect(worse).toBeGreaterThan(0);
    expect(text).toContain(`${worse} of ${sens.candidates.length} measure worse than the baseline`);
    for (const l of text.slice(text.indexOf('\nsensitivity: ')).split('\n')) expect(l.length, l).toBeLessThanOrEqual(100);
    // and with Qwen2-1.5B-sized names and bytes (28 layers, MiB per promotion, GiB of device memory)
    const big = { ...sens, baselineBytes: 1.2 * 2 ** 30, candidates: sens.candidates.map((c) => ({ ...c, module: c.module.replace('layers.', 'layers.2'), bytes: c.bytes * 6000 })) };
    for (const l of formatReport({ linears: {}, points: {}, sensitivity: big }).split('\n')) expect(l.length, l).toBeLessThanOrEqual(100);
    // an adapter is named; a report with only a sensitivity still prints it
    expect(formatReport({ linears: {}, points: {}, sensitivity: { ...sens, adapter: 'wiki' } })).toMatch(/^sensitivity: .*adapter wiki\n/);
  });

  it('the page is well-formed with every name escaped, bars proportional to the gains, colored by kind', () => {
    const evil = '<script>alert("x")</script>&amp';
    const s: SensitivityReport = { ...sens, adapter: `a&b<c>`, candidates: [...sens.candidates, { ...sens.candidates[0], module: `model.layers.0.${evil}` }] };
    const html = renderReportHtml({ ...report, sensitivity: s }, 'stories260K <A16> & "sens"');
    expectWellFormed(html);
    expect(html).not.toMatch(/<script/i);
    expect(html).toContain('model.layers.0.&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;amp');
    expect(html).toContain('adapter a&amp;b&lt;c&gt;');
    expect((html.match(/<svg /g) ?? []).length).toBe((html.match(/<\/svg>/g) ?? []).length);

    const order = expectedOrder(s);
    const bars = [...svgOf(html, 'sensitivity-bars').matchAll(/<rect class="bar" x="([\d.]+)" y="(\d+)" width="([\d.]+)" height="\d+" fill="(#\w+)"><title>([^<]*)<\/title><\/rect>/g)].map((m) => ({
      x: Number(m[1]),
      y: Number(m[2]),
      w: Number(m[3]),
      fill: m[4],
      title: unescape(m[5]),
    }));
    expect(bars.length).toBe(s.candidates.length);
    const pxPerNat = Math.max(...bars.map((b) => b.w)) / Math.max(...order.map((c) => Math.abs(c.gain)));
    const axis = bars[0].x; // the first bar helps: it starts on the zero axis
    for (const [i, b] of bars.entries()) {
      const c = order[i];
      expect(b.title.startsWith(`#${i + 1} ${c.module}: ${c.from} → ${c.to}, gain `), b.title).toBe(true);
      expect(b.title).toContain(`+${c.bytes} bytes`);
      expect(Math.abs(b.w - Math.abs(c.gain) * pxPerNat)).toBeLessThan(0.011); // widths printed to 0.01 px
      expect(c.gain >= 0 ? b.x : b.x + b.w).toBeCloseTo(axis, 1); // gains right of the axis, losses left
      if (i) expect(b.y).toBeGreaterThan(bars[i - 1].y);
    }
    const fillOf = (cat: (c: SensitivityCandidate) => boolean) => new Set(bars.filter((_, i) => cat(order[i])).map((b) => b.fill));
    const w8 = fillOf((c) => c.settings.weight_bits === 8);
    const g16 = fillOf((c) => c.settings.group_size === 16);
    const a16 = fillOf((c) => c.settings.act_bits === 16);
    for (const f of [w8, g16, a16]) expect(f.size).toBe(1);
    expect(new Set([...w8, ...g16, ...a16]).size).toBe(3);
    for (const legend of ['linear → W8', 'linear → g16', 'activation → A16']) expect(html).toContain(legend);
  });

  it('the scatter plots every candidate at x linear in its bytes and y linear in its gain', () => {
    const html = renderReportHtml(report, 'stories260K');
    expectWellFormed(html);
    const svg = svgOf(html, 'sensitivity-scatter');
    const pts = [...svg.matchAll(/<circle class="point" cx="([\d.]+)" cy="([\d.]+)"[^>]*><title>#(\d+) /g)].map((m) => ({ cx: Number(m[1]), cy: Number(m[2]), rank: Number(m[3]) }));
    const order = expectedOrder(sens);
    expect(pts.length).toBe(order.length);
    const [a, b] = [0, pts.length - 1].map((i) => ({ p: pts[i], c: order[pts[i].rank - 1] }));
    const fit = (va: number, vb: number, pa: number, pb: number) => (v: number) => pa + ((v - va) * (pb - pa)) / (vb - va);
    const biggest = order.reduce((m, c, i) => (c.bytes > order[m].bytes ? i : m), 0);
    const X = fit(0, order[biggest].bytes, pts.find((p) => order[p.rank - 1].bytes === 0)!.cx, pts[biggest].cx);
    const Y = fit(a.c.gain, b.c.gain, a.p.cy, b.p.cy);
    for (const p of pts) {
      expect(p.cx).toBeCloseTo(X(order[p.rank - 1].bytes), 1);
      expect(p.cy).toBeCloseTo(Y(order[p.rank - 1].gain), 1);
    }
    expect(svg).toContain('added device bytes (KiB)');
    expect(svg).toContain('KLD gain (nats/token)');
    expect(svg).toMatch(/<line class="cutoff" /);
  });

  it('the CLI: --report prints it, --report-html writes the charts, --json carries it unchanged', () => {
    const text = ok('inspect', withSens, '--report');
    expect(text).toMatch(new RegExp(`${A16_POINT.replace(/\./g, '\\.')} +\\d+\\.\\d+ +A16 scale`));
    expect(textRows(text).length).toBe(sens.candidates.length);
    const out = path.join(dir, 'report.html');
    ok('inspect', withSens, '--report-html', out);
    const html = fs.readFileSync(out, 'utf8');
    expectWellFormed(html);
    for (const cls of ['sensitivity-bars', 'sensitivity-scatter']) svgOf(html, cls);
    expect(JSON.parse(ok('inspect', withSens, '--json')).report.sensitivity).toEqual(sens);
    // without a sensitivity the report is the SQNR table alone
    expect(ok('inspect', har, '--report')).not.toContain('sensitivity:');
  });

  it('a malformed sensitivity in report.json is a one-line format error naming the HAR and the field', async () => {
    const bad = path.join(dir, 'bad.har');
    const candidates = sens.candidates.map((c, i) => (i === 3 ? { ...c, gain: null } : c)) as unknown as SensitivityCandidate[];
    await setHarReport(har, bad, { ...report, sensitivity: { ...sens, candidates } });
    const r = edgellm('inspect', bad, '--report');
    expect(r.code).toBe(3);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/bad\.har: member report\.json: sensitivity\.candidates\[3\]\.gain is not a finite number/);
  });
});
