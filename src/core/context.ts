/**
 * What passes and long-running library code get instead of printing: a logger and progress
 * reporting. The CLI implements it with a progress bar on stderr; tests use {@link silentContext}.
 */
export interface Progress {
  /** one unit of work done */
  tick(n?: number): void;
  /** replace the status text shown next to the bar */
  status?(text: string): void;
  done(): void;
}

export interface PassContext {
  log(message: string): void;
  /** starts a progress report of `total` units labelled `label` */
  progress(label: string, total: number): Progress;
}

/** A context that discards everything (tests, library use). */
export const silentContext: PassContext = {
  log: () => {},
  progress: () => ({ tick: () => {}, done: () => {} }),
};
