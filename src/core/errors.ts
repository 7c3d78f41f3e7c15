/**
 * Typed errors of edgellm. Every error a user can cause is one of these: the CLI prints
 * `error: <message>` on one line and exits with {@link EdgeLLMError.exitCode}; the stack trace is
 * shown only with `--verbose`. A message always fits on one line: names taken from a file (tensor
 * names, metadata keys, section names, JSON.parse's quote of the input) may hold newlines or other
 * control characters, so the constructor escapes them ({@link oneLine}).
 *
 * Exit codes: 1 generic failure, 2 usage error, 3 bad input file ({@link FormatError}),
 * 4 unsupported model ({@link UnsupportedModelError}), 5 shape mismatch, 6 pass order.
 */

/** C0 and C1 control characters (newline, CR, tab, NUL, ESC, ...) and U+2028/U+2029 (line breaks in some terminals and editors). */
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g;
const SHORT_ESCAPES: Readonly<Record<string, string>> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/**
 * `text` on one line: every control character written as a JSON-style escape (`\n`, `\r`, `\t`,
 * `\u001b`, ...), everything else unchanged. Applied to every {@link EdgeLLMError} message.
 */
export function oneLine(text: string): string {
  return text.replace(CONTROL, (c) => SHORT_ESCAPES[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** The base of edgellm's typed errors: a one-line message and the CLI's exit code. */
export class EdgeLLMError extends Error {
  /** Process exit code the CLI uses for this error. */
  readonly exitCode: number = 1;
  /** @param message what went wrong; control characters in it are escaped ({@link oneLine}) */
  constructor(message: string, options?: { cause?: unknown }) {
    super(oneLine(message), options);
    this.name = new.target.name;
  }
}

/** A file's bytes or structure are wrong (bad magic, checksum, truncated, malformed JSON, ...). */
export class FormatError extends EdgeLLMError {
  override readonly exitCode = 3;
  /**
   * @param file path of the offending file (shown first in the message)
   * @param problem what is wrong, e.g. "header length 9999 runs past end of file (120 bytes)"; kept
   *   as given here, while the message (`<file>: <problem>`) has its control characters escaped
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
