/**
 * The run context: what passes and long-running library code get instead of printing, a logger and
 * progress reporting. The CLI implements it with a progress bar on stderr (src/cli/progress.ts);
 * tests and library use take {@link silentContext}. Passes get it extended with their calibration
 * windows (passes/pass.ts `PassContext`).
 */
export interface Progress {
  /** one unit of work done */
  tick(n?: number): void;
  /** replace the status text shown next to the bar */
  status?(text: string): void;
  done(): void;
}

export interface RunContext {
  log(message: string): void;
  /** starts a progress report of `total` units labelled `label` */
  progress(label: string, total: number): Progress;
}

/** A context that discards everything (tests, library use). */
export const silentContext: RunContext = {
  log: () => {},
  progress: () => ({ tick: () => {}, done: () => {} }),
};
