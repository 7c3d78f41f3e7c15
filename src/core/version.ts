/** edgellm's version, read from package.json (works from src/ under vitest and from dist/src/). */
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';
import { UsageError } from './errors.js';

function findVersion(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const p = path.join(dir, 'package.json');
    if (fs.existsSync(p)) {
      const pkg = JSON.parse(fs.readFileSync(p, 'utf8'));
      if (pkg.name === 'edgellm') return String(pkg.version);
    }
    dir = path.dirname(dir);
  }
  return '0.0.0';
}

export const VERSION = findVersion();

function sourceDateEpoch(env: NodeJS.ProcessEnv): string | undefined {
  const epoch = env.SOURCE_DATE_EPOCH;
  if (epoch == null || epoch === '') return undefined;
  if (!/^\d+$/.test(epoch)) throw new UsageError(`SOURCE_DATE_EPOCH must be a whole number of seconds, got '${epoch}'`);
  return new Date(Number(epoch) * 1000).toISOString();
}

/**
 * The time stamp written into artifacts (HAR manifest, HEF header), ISO 8601 UTC: only when
 * `SOURCE_DATE_EPOCH` is set (seconds since 1970, the reproducible-builds convention), as that
 * moment; otherwise none (undefined), so the same inputs give the same bytes on every run.
 * @throws UsageError when SOURCE_DATE_EPOCH is set but is not a whole number of seconds
 */
export function artifactTimestamp(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return sourceDateEpoch(env);
}

/**
 * The time stamp of a report (`eval --json`), ISO 8601 UTC: SOURCE_DATE_EPOCH when set, else now.
 * @throws UsageError when SOURCE_DATE_EPOCH is set but is not a whole number of seconds
 */
export function reportTimestamp(env: NodeJS.ProcessEnv = process.env): string {
  return sourceDateEpoch(env) ?? new Date().toISOString();
}
