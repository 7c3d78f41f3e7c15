/**
 * The CLI's RunContext: log lines and cli-progress bars on stderr (stdout stays for results and
 * generated text). Bars render only on a terminal; `--quiet` silences both.
 */
import cliProgress from 'cli-progress';
import type { RunContext, Progress } from '../core/context.js';

export function cliContext(opts: { quiet?: boolean; verbose?: boolean } = {}): RunContext {
  const tty = process.stderr.isTTY === true;
  return {
    log: (m) => {
      if (!opts.quiet && opts.verbose) process.stderr.write(`${m}\n`);
    },
    progress: (label: string, total: number): Progress => {
      if (opts.quiet || !tty) return { tick: () => {}, done: () => {} };
      const bar = new cliProgress.SingleBar(
        { format: `${label.padEnd(10)} [{bar}] {value}/{total} | {percentage}% | ETA {eta_formatted} | {status}`, stream: process.stderr, hideCursor: true },
        cliProgress.Presets.shades_classic,
      );
      bar.start(total, 0, { status: '' });
      return {
        tick: (n = 1) => bar.increment(n),
        status: (s) => bar.update({ status: s }),
        done: () => bar.stop(),
      };
    },
  };
}
