/** Spawns the built CLI as a user would and captures its output and exit code. */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { ROOT } from './paths.js';

export { ROOT, SHARED, STORIES } from './paths.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function edgellm(...args: string[]): CliResult {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'dist/src/cli/main.js'), ...args], { cwd: ROOT, encoding: 'utf8', timeout: 300_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}
