/** edgellm's version, read from package.json (works from src/ under vitest and from dist/src/). */
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';

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

/**
 * The time stamp written into artifacts (HAR manifest, HEF header, eval reports), ISO 8601 UTC.
 * With `SOURCE_DATE_EPOCH` set (seconds since 1970, the reproducible-builds convention) it is that
 * moment, so the same inputs give the same bytes; otherwise the current time.
 * @throws Error when SOURCE_DATE_EPOCH is set but is not a whole number of seconds
 */
export function artifactTimestamp(env: NodeJS.ProcessEnv = process.env): string {
  const epoch = env.SOURCE_DATE_EPOCH;
  if (epoch == null || epoch === '') return new Date().toISOString();
  if (!/^\d+$/.test(epoch)) throw new Error(`SOURCE_DATE_EPOCH must be a whole number of seconds, got '${epoch}'`);
  return new Date(Number(epoch) * 1000).toISOString();
}
