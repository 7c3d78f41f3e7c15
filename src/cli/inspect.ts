/** edgellm inspect (see `edgellm inspect --help`). */
import type { Command } from 'commander';
import { inspectArtifact, formatInspect } from './inspect-summary.js';
import { formatReport, renderReportHtml } from './quant-report.js';
import { writeFileAtomicSync } from '../core/atomic.js';
import { UsageError } from '../core/errors.js';
import { outputPathCheck } from './common.js';

/** `edgellm inspect`: what a HAR or HEF holds. */
export function registerInspect(program: Command): void {
  program
    .command('inspect')
    .description('print format version, sections with sizes, quantization scheme and device-memory estimate of a HAR or HEF')
    .argument('<file>', 'model.har or model.hef')
    .option('--json', 'machine-readable output')
    .option('--report', 'print the per-layer quantization report (SQNR per linear, activation and KV-cache point)')
    .option('--report-html <out.html>', 'write the per-layer report as an HTML page with a plot of error per layer')
    .action(async (file: string, o) => {
      const info = await inspectArtifact(file);
      if (o.json) process.stdout.write(JSON.stringify(info, null, 2) + '\n');
      else process.stdout.write(formatInspect(info) + (o.report ? '\n' + formatReport(info.report ?? { linears: {}, points: {} }) : ''));
      if (o.reportHtml) {
        if (!info.report) throw new UsageError(`${file}: holds no quantization report (only HARs written by \`edgellm quantize\` do)`);
        outputPathCheck(o.reportHtml);
        writeFileAtomicSync(o.reportHtml, renderReportHtml(info.report, `edgellm quantization report: ${info.modelName}`));
      }
    });
}
