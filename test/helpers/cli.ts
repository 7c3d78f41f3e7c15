/** Spawns the built CLI as a user would and captures its output and exit code. */
import { spawn, spawnSync } from 'node:child_process';
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

/**
 * {@link edgellm} without blocking the test worker (a run of a minute or more starves vitest's RPC
 * with the worker and fails the file with "Timeout calling onTaskUpdate").
 */
export function edgellmAsync(...args: string[]): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(ROOT, 'dist/src/cli/main.js'), ...args], { cwd: ROOT, timeout: 600_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}
