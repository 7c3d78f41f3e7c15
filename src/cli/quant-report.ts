/**
 * The per-layer quantization report (Model.report): a text table for `edgellm inspect --report` and
 * an HTML page with an SVG bar chart per kind for `--report-html`, so the layer that hurts stands out.
 *
 * Linears are shown as SQNR in dB too: SQNR = −10·log10(relative output error), where the relative
 * error is tr((W−Q)H(W−Q)ᵀ)/tr(WHWᵀ) on calibration data; higher is better everywhere. Activation
 * points show their grid width (A8, A16) and KV caches theirs (KV8).
 *
 * When the report holds a sensitivity analysis (`report.sensitivity`, `edgellm analyze`), the text
 * and the page end with it (src/cli/sensitivity-report.ts).
 */
import type { QParams, QuantReport } from '../ir/model.js';
import { escapeXml, formatSensitivity, sensitivityHtml } from './sensitivity-report.js';

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

/**
 * Where the grid width of a point is read: the stored ranges (`model.quant.activations`, ranges.json:
 * QParams with `bits: 16` for uint16 points), when the caller has them, else the report's own entry
 * (calibration records the same QParams there, `bits: 16` included); absent means 8.
 */
export interface ReportOptions {
  activations?: Record<string, QParams>;
}

const pointBits = (name: string, p: object, o: ReportOptions): number => {
  const stored = o.activations?.[name] as { bits?: number } | undefined;
  return stored?.bits ?? (p as { bits?: number }).bits ?? 8;
};

/** Flattens a report into rows in model order. */
export function reportRows(r: QuantReport, o: ReportOptions = {}): ReportRow[] {
  const rows: ReportRow[] = [];
  for (const [name, l] of Object.entries(r.linears))
    rows.push({ kind: 'linear', name, sqnrDb: db(l.relError), rtnSqnrDb: l.rtnRelError !== undefined ? db(l.rtnRelError) : undefined, detail: l.method });
  for (const [name, p] of Object.entries(r.points)) {
    const kind = /_cache$/.test(name) ? 'kv-cache' : 'activation';
    rows.push({ kind, name, sqnrDb: p.sqnrDb, detail: `${kind === 'kv-cache' ? 'KV' : 'A'}${pointBits(name, p, o)} scale ${p.scale.toPrecision(4)} zp ${p.zeroPoint}` });
  }
  return rows;
}

/** Text table, worst SQNR of each kind flagged; then the sensitivity analysis when the report has one. */
export function formatReport(r: QuantReport, o: ReportOptions = {}): string {
  const rows = reportRows(r, o);
  const sens = r.sensitivity ? '\n' + formatSensitivity(r.sensitivity) : '';
  if (rows.length === 0) return r.sensitivity ? formatSensitivity(r.sensitivity) : 'no quantization report in this file\n';
  const worst = new Map<string, number>();
  for (const row of rows) worst.set(row.kind, Math.min(worst.get(row.kind) ?? Infinity, row.sqnrDb));
  const lines = [`${'kind'.padEnd(11)}${'name'.padEnd(44)}${'SQNR dB'.padStart(9)}${'RTN dB'.padStart(9)}  detail`];
  for (const row of rows)
    lines.push(
      `${row.kind.padEnd(11)}${row.name.padEnd(44)}${row.sqnrDb.toFixed(2).padStart(9)}${(row.rtnSqnrDb?.toFixed(2) ?? '').padStart(9)}  ${row.detail}${row.sqnrDb === worst.get(row.kind) ? '  <- worst' : ''}`,
    );
  return lines.join('\n') + '\n' + sens;
}

const esc = escapeXml;

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

/**
 * A standalone HTML page: one bar chart per kind (linears, activations, KV cache), then the
 * sensitivity charts when the report has them.
 */
export function renderReportHtml(r: QuantReport, title: string, o: ReportOptions = {}): string {
  const rows = reportRows(r, o);
  const kinds: [ReportRow['kind'], string][] = [
    ['linear', 'Linear layers: output SQNR of the quantized weights'],
    ['activation', 'Static activation points (A8, A16)'],
    ['kv-cache', 'KV8 cache (K after RoPE, V)'],
  ];
  const charts = kinds
    .map(([k, t]) => [rows.filter((row) => row.kind === k), t] as const)
    .filter(([rs]) => rs.length)
    .map(([rs, t]) => barChart(t, rs))
    .join('\n');
  const sens = r.sensitivity ? '\n' + sensitivityHtml(r.sensitivity) : '';
  return `<!doctype html><html><head><meta charset="utf-8"><title>${esc(title)}</title><style>body{font-family:sans-serif;margin:24px}</style></head><body><h1>${esc(title)}</h1>${charts}${sens}</body></html>\n`;
}
