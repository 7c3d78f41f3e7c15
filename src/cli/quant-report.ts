/**
 * The per-layer quantization report (Model.report): a text table for `edgellm inspect --report` and
 * an HTML page with an SVG bar chart per kind for `--report-html`, so the layer that hurts stands out.
 *
 * Linears are shown as SQNR in dB too: SQNR = −10·log10(relative output error), where the relative
 * error is tr((W−Q)H(W−Q)ᵀ)/tr(WHWᵀ) on calibration data; higher is better everywhere.
 */
import type { QuantReport } from '../ir/model.js';

export interface ReportRow {
  kind: 'linear' | 'activation' | 'kv-cache';
  name: string;
  /** signal-to-quantization-noise ratio, dB (higher is better) */
  sqnrDb: number;
  /** for linears: the same on RTN, dB */
  rtnSqnrDb?: number;
  detail: string;
}

const db = (relError: number) => (relError > 0 ? -10 * Math.log10(relError) : Infinity);

/** Flattens a report into rows in model order. */
export function reportRows(r: QuantReport): ReportRow[] {
  const rows: ReportRow[] = [];
  for (const [name, l] of Object.entries(r.linears))
    rows.push({ kind: 'linear', name, sqnrDb: db(l.relError), rtnSqnrDb: l.rtnRelError !== undefined ? db(l.rtnRelError) : undefined, detail: l.method });
  for (const [name, p] of Object.entries(r.points))
    rows.push({
      kind: /_cache$/.test(name) ? 'kv-cache' : 'activation',
      name,
      sqnrDb: p.sqnrDb,
      detail: `scale ${p.scale.toPrecision(4)} zp ${p.zeroPoint}`,
    });
  return rows;
}

/** Text table, worst SQNR of each kind flagged. */
export function formatReport(r: QuantReport): string {
  const rows = reportRows(r);
  if (rows.length === 0) return 'no quantization report in this file\n';
  const worst = new Map<string, number>();
  for (const row of rows) worst.set(row.kind, Math.min(worst.get(row.kind) ?? Infinity, row.sqnrDb));
  const lines = [`${'kind'.padEnd(11)}${'name'.padEnd(44)}${'SQNR dB'.padStart(9)}${'RTN dB'.padStart(9)}  detail`];
  for (const row of rows)
    lines.push(
      `${row.kind.padEnd(11)}${row.name.padEnd(44)}${row.sqnrDb.toFixed(2).padStart(9)}${(row.rtnSqnrDb?.toFixed(2) ?? '').padStart(9)}  ${row.detail}${row.sqnrDb === worst.get(row.kind) ? '  <- worst' : ''}`,
    );
  return lines.join('\n') + '\n';
}

const esc = (s: string) => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

function barChart(title: string, rows: ReportRow[]): string {
  const barH = 16;
  const left = 330;
  const width = 900;
  const max = Math.max(1, ...rows.map((r) => (Number.isFinite(r.sqnrDb) ? r.sqnrDb : 0)));
  const minV = Math.min(...rows.map((r) => r.sqnrDb));
  const scale = (width - left - 80) / max;
  const h = rows.length * (barH + 4) + 40;
  const bars = rows
    .map((r, i) => {
      const y = 30 + i * (barH + 4);
      const v = Number.isFinite(r.sqnrDb) ? r.sqnrDb : max;
      const color = r.sqnrDb === minV ? '#d62728' : r.sqnrDb < minV + 3 ? '#ff7f0e' : '#1f77b4';
      return `<text x="${left - 6}" y="${y + 12}" text-anchor="end" font-size="11">${esc(r.name)}</text><rect x="${left}" y="${y}" width="${Math.max(1, v * scale).toFixed(1)}" height="${barH}" fill="${color}"><title>${esc(r.name)}: ${r.sqnrDb.toFixed(2)} dB (${esc(r.detail)})</title></rect><text x="${left + Math.max(1, v * scale) + 4}" y="${y + 12}" font-size="11">${r.sqnrDb.toFixed(1)} dB</text>`;
    })
    .join('\n');
  return `<h2>${esc(title)}</h2><svg width="${width}" height="${h}" xmlns="http://www.w3.org/2000/svg"><text x="${left}" y="18" font-size="12">SQNR (dB, higher is better; red = worst, orange = within 3 dB of it)</text>${bars}</svg>`;
}

/** A standalone HTML page: one bar chart per kind (linears, activations, KV cache). */
export function renderReportHtml(r: QuantReport, title: string): string {
  const rows = reportRows(r);
  const kinds: [ReportRow['kind'], string][] = [
    ['linear', 'Linear layers: output SQNR of the quantized weights'],
    ['activation', 'Static A8 activation points'],
    ['kv-cache', 'KV8 cache (K after RoPE, V)'],
  ];
  const charts = kinds
    .map(([k, t]) => [rows.filter((row) => row.kind === k), t] as const)
    .filter(([rs]) => rs.length)
    .map(([rs, t]) => barChart(t, rs))
    .join('\n');
  return `<!doctype html><html><head><meta charset="utf-8"><title>${esc(title)}</title><style>body{font-family:sans-serif;margin:24px}</style></head><body><h1>${esc(title)}</h1>${charts}</body></html>\n`;
}
