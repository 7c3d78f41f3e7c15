/** edgellm inspect (see `edgellm inspect --help`). */
import type { Command } from 'commander';
import { inspectArtifact, formatInspect } from '../inspect.js';

/** `edgellm inspect`: what a HAR or HEF holds. */
export function registerInspect(program: Command): void {
  program
    .command('inspect')
    .description('print format version, sections with sizes, quantization scheme and device-memory estimate of a HAR or HEF')
    .argument('<file>', 'model.har or model.hef')
    .option('--json', 'machine-readable output')
    .action(async (file: string, o) => {
      const info = await inspectArtifact(file);
      process.stdout.write(o.json ? JSON.stringify(info, null, 2) + '\n' : formatInspect(info));
    });
}
