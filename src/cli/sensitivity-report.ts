/**
 * The sensitivity analysis of a HAR (`Model.report.sensitivity`, src/ir/sensitivity.ts) as
 * `edgellm inspect --report` prints it and `--report-html` draws it.
 *
 * Candidates are ranked by gain per KiB: their KLD gain (baseline KLD − KLD with that promotion
 * alone, nats/token) divided by the device bytes they add (in KiB). A promotion that adds no bytes
 * (an activation point A8 → A16) and helps ranks first ("free"); one that does not help ranks last.
 * This is the order in which the greedy choice of src/ir/sensitivity.ts `choosePromotions` looks at
 * them (within one module it weighs the step from the option already taken).
 *
 * Text: a table (~100 columns) with the top entries marked, the baseline KLD ± its standard error,
 * windows × tokens, the adapter, and what the greedy choice would take within +10% device memory.
 * HTML: one horizontal bar per candidate (gain, nats/token, from a zero axis; colored by kind: linear
 * W8, linear g16, activation A16) and a scatter of gain against added bytes; static SVG, every string
 * escaped.
 */
import { oneLine } from '../core/errors.js';
import { choosePromotions, type PromotionChoice, type SensitivityCandidate, type SensitivityReport } from '../ir/sensitivity.js';

/** How many of the best candidates (by gain per KiB, with a positive gain) are marked. */
export const TOP_MARKED = 5;
/** The budget the greedy choice shown is computed for, relative to the baseline's device memory (+10%). */
export const SHOWN_BUDGET = 0.1;

/** A candidate in ranked order. */
export interface RankedCandidate extends SensitivityCandidate {
  /** 1-based position in the ranking */
  rank: number;
  /** position in `candidates` (model order) */
  index: number;
  /**
   * gain per KiB added, nats/token per KiB (gain / (bytes / 1024)); +Infinity for a free promotion
   * with a positive gain, −Infinity for a free one with a negative gain, 0 for a free one with none
   */
  gainPerKiB: number;
  /** the kind of promotion: 'W8' (linear, wider weights), 'g16' (linear, finer groups), 'A16' (activation point), 'KV16' (a layer's KV cache) */
  category: string;
  /** among the {@link TOP_MARKED} best with a positive gain */
  top: boolean;
  /** taken by `choosePromotions` within +{@link SHOWN_BUDGET} of the baseline's device memory */
  chosen: boolean;
}

/** The category a promotion's settings give: `W<bits>`, `g<group size>`, `A<bits>`, or its kind. */
export function promotionCategory(c: SensitivityCandidate): string {
  const s = c.settings ?? {};
  if (s.weight_bits !== undefined) return `W${s.weight_bits}`;
  if (s.group_size !== undefined) return `g${s.group_size}`;
  if (s.act_bits !== undefined) return `A${s.act_bits}`;
  if (s.kv_bits !== undefined) return `KV${s.kv_bits}`;
  return c.kind;
}

/** The greedy choice (src/ir/sensitivity.ts choosePromotions) within +{@link SHOWN_BUDGET} of the baseline's device memory. */
export function shownChoice(s: SensitivityReport): PromotionChoice {
  return choosePromotions(s, Math.floor(s.baselineBytes * SHOWN_BUDGET));
}

/** Candidates sorted by gain per KiB (best first; ties by larger gain, then model order), marked top and chosen. */
export function rankCandidates(s: SensitivityReport): RankedCandidate[] {
  const chosen = new Set(shownChoice(s).chosen);
  const perKiB = (c: SensitivityCandidate) => (c.bytes > 0 ? c.gain / (c.bytes / 1024) : c.gain > 0 ? Infinity : c.gain < 0 ? -Infinity : 0);
  const sorted = s.candidates
    .map((c, i) => ({ c, i, r: perKiB(c) }))
    .sort((a, b) => (a.r === b.r ? b.c.gain - a.c.gain || a.i - b.i : b.r - a.r));
  let marked = 0;
  return sorted.map(({ c, i, r }, k) => {
    const top = c.gain > 0 && marked < TOP_MARKED;
    if (top) marked++;
    return { ...c, rank: k + 1, index: i, gainPerKiB: r, category: promotionCategory(c), top, chosen: chosen.has(c) };
  });
}

/** `from → to` without a method both share: "W4 g32 → W8 g32", "A8 → A16". */
export function promotionLabel(from: string, to: string): string {
  const f = from.split(' ');
  const t = to.split(' ');
  if (f.length > 1 && t.length > 1 && f[f.length - 1] === t[t.length - 1]) return `${f.slice(0, -1).join(' ')} → ${t.slice(0, -1).join(' ')}`;
  return `${from} → ${to}`;
}

/** Bytes as "256 B", "2.0 KiB", "4.50 MiB", "1.20 GiB". */
export function formatBytes(b: number): string {
  const a = Math.abs(b);
  if (a < 1024) return `${b} B`;
  if (a < 2 ** 20) return `${(b / 1024).toFixed(1)} KiB`;
  return a < 2 ** 30 ? `${(b / 2 ** 20).toFixed(2)} MiB` : `${(b / 2 ** 30).toFixed(2)} GiB`;
}

const signed = (v: number, digits = 5) => `${v >= 0 ? '+' : '−'}${Math.abs(v).toFixed(digits)}`;
/** Gain per KiB: "free" for a promotion that adds no bytes, else signed, 3 significant digits. */
const perKiBText = (v: number) => {
  if (!Number.isFinite(v)) return 'free';
  const a = Math.abs(v);
  return `${v >= 0 ? '+' : '−'}${a >= 1e-3 || a === 0 ? a.toFixed(5) : a.toExponential(2)}`;
};

/** The header lines both views share: what was measured, on what. */
function measuredOn(s: SensitivityReport): string[] {
  return [
    `sensitivity: KLD vs the fp32 model (nats/token), ${s.windows} windows × ${s.seqLen} tokens, adapter ${s.adapter === null ? 'none' : oneLine(s.adapter)}`,
    `baseline KLD ${s.baselineKld.toFixed(5)} ± ${s.baselineKldStderr.toFixed(5)} (stderr); device memory ${formatBytes(s.baselineBytes)} (weights + KV at ${s.maxContext} tokens)`,
  ];
}

/** The sensitivity section of `inspect --report`: header lines and the ranked table (see the module doc). */
export function formatSensitivity(s: SensitivityReport): string {
  const ranked = rankCandidates(s);
  const names = ranked.map((c) => oneLine(c.module));
  const changes = ranked.map((c) => oneLine(promotionLabel(c.from, c.to)));
  const wName = Math.max(6, ...names.map((n) => n.length)) + 2;
  const wChange = Math.max(9, ...changes.map((n) => n.length)) + 2;
  const choice = shownChoice(s);
  const lines = [
    ...measuredOn(s),
    `${ranked.length} candidates by gain per KiB (* = the ${TOP_MARKED} best that help, + = taken within +${SHOWN_BUDGET * 100}%):`,
  ];
  lines.push(`${'#'.padStart(6)}  ${'module'.padEnd(wName)}${'promotion'.padEnd(wChange)}${'+bytes'.padStart(10)}${'KLD'.padStart(10)}${'gain'.padStart(10)}${'gain/KiB'.padStart(11)}`);
  ranked.forEach((c, i) =>
    lines.push(
      `${c.top ? '*' : ' '}${c.chosen ? '+' : ' '}${String(c.rank).padStart(4)}  ${names[i].padEnd(wName)}${changes[i].padEnd(wChange)}${formatBytes(c.bytes).padStart(10)}${c.kld.toFixed(5).padStart(10)}${signed(c.gain).padStart(10)}${perKiBText(c.gainPerKiB).padStart(11)}`,
    ),
  );
  const worse = ranked.filter((c) => c.gain < 0).length;
  if (worse) lines.push(`${worse} of ${ranked.length} measure worse than the baseline (gain < 0: noise, or harmful)`);
  lines.push(
    `within +${SHOWN_BUDGET * 100}% device memory (+${formatBytes(choice.budgetBytes)}) the greedy choice takes ${choice.chosen.length} promotion${choice.chosen.length === 1 ? '' : 's'}, +${formatBytes(choice.addedBytes)},`,
    `  estimated gain ${choice.estimatedGain.toFixed(5)} nats/token (gains added up: measure the result)`,
  );
  return lines.join('\n') + '\n';
}

/** `s` with `&`, `<`, `>`, `"` and `'` escaped, for HTML/SVG text and double-quoted attributes. */
export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}
const esc = escapeXml;

/** Colors of the promotion categories in both charts (others: gray). */
const COLORS: Record<string, string> = { W8: '#1f77b4', g16: '#2ca02c', A16: '#ff7f0e', KV16: '#9467bd' };
const DESCRIPTIONS: Record<string, string> = { W8: 'linear → W8', g16: 'linear → g16', A16: 'activation → A16', KV16: 'KV cache → KV16' };
const color = (cat: string) => COLORS[cat] ?? '#7f7f7f';

/** Round tick values covering [lo, hi] (about `n` of them). */
export function niceTicks(lo: number, hi: number, n = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Math.abs(v) < step * 1e-9 ? 0 : Number(v.toPrecision(12)));
  return ticks;
}

const tooltip = (c: RankedCandidate) =>
  `#${c.rank} ${c.module}: ${c.from} → ${c.to}, gain ${signed(c.gain, 6)} nats/token (KLD ${c.kld.toFixed(6)}), +${c.bytes} bytes (${formatBytes(c.bytes)}), gain/KiB ${perKiBText(c.gainPerKiB)}`;

function legend(cats: string[], x: number, y: number): string {
  return cats
    .map((cat, i) => `<rect x="${x + i * 170}" y="${y - 10}" width="12" height="12" fill="${color(cat)}"/><text x="${x + i * 170 + 16}" y="${y}" font-size="12">${esc(DESCRIPTIONS[cat] ?? cat)}</text>`)
    .join('');
}

/** One bar per candidate (ranked order): its KLD gain from a zero axis, px proportional to nats/token. */
export function sensitivityBars(ranked: RankedCandidate[]): string {
  const barH = 14;
  const left = 380;
  const width = 1000;
  const plotW = width - left - 190;
  const lo = Math.min(0, ...ranked.map((c) => c.gain));
  const hi = Math.max(0, ...ranked.map((c) => c.gain));
  const scale = plotW / (hi - lo || 1); // px per nat/token
  const x0 = left + -lo * scale;
  const top = 60;
  const h = top + ranked.length * (barH + 4) + 10;
  const cats = [...new Set(ranked.map((c) => c.category))];
  const ticks = niceTicks(lo, hi)
    .map((t) => `<line x1="${(x0 + t * scale).toFixed(2)}" y1="${top - 6}" x2="${(x0 + t * scale).toFixed(2)}" y2="${h - 10}" stroke="#ddd"/><text x="${(x0 + t * scale).toFixed(2)}" y="${top - 9}" text-anchor="middle" font-size="10">${t}</text>`)
    .join('');
  const bars = ranked
    .map((c, i) => {
      const y = top + i * (barH + 4);
      const w = Math.abs(c.gain) * scale;
      const x = c.gain >= 0 ? x0 : x0 - w;
      const label = `${signed(c.gain)} (${c.bytes ? `+${formatBytes(c.bytes)}` : 'free'})`;
      return (
        `<text x="${left - 6}" y="${y + 11}" text-anchor="end" font-size="11">${c.top ? '*' : ''}${c.chosen ? '+' : ''}${c.top || c.chosen ? ' ' : ''}${esc(c.module)} ${esc(promotionLabel(c.from, c.to))}</text>` +
        `<rect class="bar" x="${x.toFixed(2)}" y="${y}" width="${w.toFixed(2)}" height="${barH}" fill="${color(c.category)}"><title>${esc(tooltip(c))}</title></rect>` +
        `<text x="${(x0 + Math.max(0, c.gain) * scale + 4).toFixed(2)}" y="${y + 11}" font-size="10">${esc(label)}</text>`
      );
    })
    .join('\n');
  return (
    `<svg class="sensitivity-bars" width="${width}" height="${h}" xmlns="http://www.w3.org/2000/svg">` +
    `<text x="10" y="14" font-size="12">KLD gain of each promotion alone (nats/token, higher is better), in order of gain per KiB; * = the ${TOP_MARKED} best, + = chosen within +${SHOWN_BUDGET * 100}%</text>` +
    legend(cats, left, 30) +
    ticks +
    `<line x1="${x0.toFixed(2)}" y1="${top - 6}" x2="${x0.toFixed(2)}" y2="${h - 10}" stroke="#333"/>` +
    bars +
    `</svg>`
  );
}

/** Gain (nats/token, y) against added device bytes (KiB, x): the promotions worth their bytes sit top left. */
export function sensitivityScatter(ranked: RankedCandidate[]): string {
  const width = 900;
  const height = 456;
  const m = { left: 90, right: 30, top: 56, bottom: 55 };
  const pw = width - m.left - m.right;
  const ph = height - m.top - m.bottom;
  const xHi = Math.max(1, ...ranked.map((c) => c.bytes / 1024)) * 1.05;
  const gLo = Math.min(0, ...ranked.map((c) => c.gain));
  const gHi = Math.max(0, ...ranked.map((c) => c.gain));
  const pad = (gHi - gLo || 1) * 0.05;
  const yLo = gLo - (gLo < 0 ? pad : 0);
  const yHi = gHi + pad;
  const X = (kib: number) => m.left + (kib / xHi) * pw;
  const Y = (g: number) => m.top + ((yHi - g) / (yHi - yLo)) * ph;
  const cats = [...new Set(ranked.map((c) => c.category))];
  const xTicks = niceTicks(0, xHi)
    .map((t) => `<line x1="${X(t).toFixed(2)}" y1="${m.top}" x2="${X(t).toFixed(2)}" y2="${m.top + ph}" stroke="#eee"/><text x="${X(t).toFixed(2)}" y="${m.top + ph + 16}" text-anchor="middle" font-size="10">${t}</text>`)
    .join('');
  const yTicks = niceTicks(yLo, yHi)
    .map((t) => `<line x1="${m.left}" y1="${Y(t).toFixed(2)}" x2="${m.left + pw}" y2="${Y(t).toFixed(2)}" stroke="#eee"/><text x="${m.left - 6}" y="${(Y(t) + 3).toFixed(2)}" text-anchor="end" font-size="10">${t}</text>`)
    .join('');
  // the greedy choice's cut-off: the lowest gain per KiB it paid bytes for; points above the ray beat it
  const paid = ranked.filter((c) => c.chosen && c.bytes > 0).map((c) => c.gainPerKiB);
  const cut = paid.length ? Math.min(...paid) : 0;
  const rayKiB = cut > 0 ? Math.min(xHi, yHi / cut) : 0;
  const ray = cut > 0 ? `<line class="cutoff" x1="${X(0)}" y1="${Y(0).toFixed(2)}" x2="${X(rayKiB).toFixed(2)}" y2="${Y(cut * rayKiB).toFixed(2)}" stroke="#d62728" stroke-dasharray="6 3"><title>${esc(`gain per KiB ${perKiBText(cut)} nats/token: the least the greedy choice within +${SHOWN_BUDGET * 100}% pays bytes for`)}</title></line>` : '';
  const placed: [number, number][] = []; // rank labels, skipped where one is already near
  const points = ranked
    .map((c) => {
      const cx = X(c.bytes / 1024);
      const cy = Y(c.gain);
      const free = c.top && !placed.some(([x, y]) => Math.abs(x - cx) < 24 && Math.abs(y - cy) < 11);
      if (free) placed.push([cx, cy]);
      return (
        `<circle class="point" cx="${cx.toFixed(2)}" cy="${cy.toFixed(2)}" r="${c.top ? 5 : 3.5}" fill="${color(c.category)}" fill-opacity="0.8"${c.chosen ? ' stroke="#000"' : ''}><title>${esc(tooltip(c))}</title></circle>` +
        (free ? `<text x="${(cx + 7).toFixed(2)}" y="${(cy + 4).toFixed(2)}" font-size="10">${c.rank}</text>` : '')
      );
    })
    .join('\n');
  return (
    `<svg class="sensitivity-scatter" width="${width}" height="${height}" xmlns="http://www.w3.org/2000/svg">` +
    `<text x="${m.left}" y="14" font-size="12">KLD gain (nats/token) against added device bytes (KiB)</text>` +
    `<text x="${m.left}" y="30" font-size="11">numbered: the ${TOP_MARKED} best by gain per KiB; outlined: chosen within +${SHOWN_BUDGET * 100}%; red ray: its cut-off gain per KiB</text>` +
    legend(cats, m.left, 46) +
    xTicks +
    yTicks +
    `<line x1="${m.left}" y1="${Y(0).toFixed(2)}" x2="${m.left + pw}" y2="${Y(0).toFixed(2)}" stroke="#999" stroke-dasharray="4 3"/>` +
    `<rect x="${m.left}" y="${m.top}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>` +
    ray +
    points +
    `<text x="${m.left + pw / 2}" y="${height - 10}" text-anchor="middle" font-size="12">added device bytes (KiB)</text>` +
    `<text transform="translate(18 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle" font-size="12">KLD gain (nats/token)</text>` +
    `</svg>`
  );
}

/** The sensitivity section of `inspect --report-html`: heading, what was measured, the bar chart and the scatter. */
export function sensitivityHtml(s: SensitivityReport): string {
  const ranked = rankCandidates(s);
  return (
    `<h2>Sensitivity: KLD gain of each promotion</h2>` +
    measuredOn(s)
      .map((l) => `<p>${esc(l)}</p>`)
      .join('') +
    sensitivityBars(ranked) +
    `<h2>Gain against bytes</h2>` +
    sensitivityScatter(ranked)
  );
}

/**
 * What is wrong with a report.json's `sensitivity`, or null when it has the shape of a
 * {@link SensitivityReport} (the fields the renderers read, finite numbers).
 */
export function sensitivityProblem(s: unknown): string | null {
  const isObj = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
  const num = (v: unknown) => typeof v === 'number' && Number.isFinite(v);
  if (!isObj(s)) return 'sensitivity is not an object';
  for (const k of ['windows', 'seqLen', 'baselineKld', 'baselineKldStderr', 'baselineBytes', 'maxContext']) if (!num(s[k])) return `sensitivity.${k} is not a finite number`;
  if (s.adapter !== null && typeof s.adapter !== 'string') return 'sensitivity.adapter is neither a string nor null';
  if (!Array.isArray(s.candidates)) return 'sensitivity.candidates is not an array';
  for (const [i, c] of s.candidates.entries()) {
    if (!isObj(c)) return `sensitivity.candidates[${i}] is not an object`;
    for (const k of ['module', 'kind', 'from', 'to']) if (typeof c[k] !== 'string') return `sensitivity.candidates[${i}].${k} is not a string`;
    for (const k of ['bytes', 'kld', 'gain']) if (!num(c[k])) return `sensitivity.candidates[${i}].${k} is not a finite number`;
    if (c.settings !== undefined && !isObj(c.settings)) return `sensitivity.candidates[${i}].settings is not an object`;
  }
  return null;
}
