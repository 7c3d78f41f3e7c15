/**
 * Typed errors of edgellm. Every error a user can cause is one of these: the CLI prints
 * `error: <message>` on one line and exits with {@link EdgeLLMError.exitCode}; the stack trace is
 * shown only with `--verbose`.
 *
 * Exit codes: 1 generic failure, 2 usage error, 3 bad input file ({@link FormatError}),
 * 4 unsupported model ({@link UnsupportedModelError}), 5 shape mismatch, 6 pass order.
 */
export class EdgeLLMError extends Error {
  /** Process exit code the CLI uses for this error. */
  readonly exitCode: number = 1;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A file's bytes or structure are wrong (bad magic, checksum, truncated, malformed JSON, ...). */
export class FormatError extends EdgeLLMError {
  override readonly exitCode = 3;
  /**
   * @param file path of the offending file (shown first in the message)
   * @param problem what is wrong, e.g. "header length 9999 runs past end of file (120 bytes)"
   */
  constructor(
    readonly file: string,
    readonly problem: string,
    options?: { cause?: unknown },
  ) {
    super(`${file}: ${problem}`, options);
  }
}

/** The checkpoint's architecture or an option is not supported. */
export class UnsupportedModelError extends EdgeLLMError {
  override readonly exitCode = 4;
}

/** Two tensors' shapes disagree; the message names the op, both shapes and the rule broken. */
export class ShapeMismatchError extends EdgeLLMError {
  override readonly exitCode = 5;
}

/** A pass ran before one it requires (e.g. quarot before fold-norms). */
export class PassOrderError extends EdgeLLMError {
  override readonly exitCode = 6;
}

/** Bad command-line usage (missing file, bad option value). */
export class UsageError extends EdgeLLMError {
  override readonly exitCode = 2;
}
