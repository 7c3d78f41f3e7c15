/**
 * Reproducible artifacts: the same inputs and options give byte-identical HAR and HEF files in
 * separate processes, with no wall-clock time inside unless SOURCE_DATE_EPOCH is set (the
 * reproducible-builds convention), and `inspect` shows the artifact's own sha256.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT, STORIES } from '../helpers/paths.js';
import { sha256File } from '../../src/core/digest.js';
import { readHarManifest } from '../../formats/har.js';
import { openHef } from '../../formats/hef.js';
import { suiteTempDir } from '../helpers/tmp.js';

const dir = suiteTempDir('edgellm-repro-');

/** Runs the CLI in a fresh process with SOURCE_DATE_EPOCH set to `epoch` or removed. */
function cli(epoch: string | undefined, ...args: string[]): string {
  const env = { ...process.env };
  delete env.SOURCE_DATE_EPOCH;
  if (epoch !== undefined) env.SOURCE_DATE_EPOCH = epoch;
  const r = spawnSync(process.execPath, [path.join(ROOT, 'dist/src/cli/main.js'), ...args], { cwd: ROOT, env, encoding: 'utf8', timeout: 300_000 });
  expect(r.status, r.stderr).toBe(0);
  return r.stdout;
}

/** quantize (default recipe on 16 calibration windows) then compile, into `name`.har/.hef. */
function build(name: string, epoch?: string): { har: string; hef: string } {
  const har = path.join(dir, `${name}.har`);
  const hef = path.join(dir, `${name}.hef`);
  cli(epoch, 'quantize', STORIES, '-o', har, '--calib-samples', '16', '-q');
  cli(epoch, 'compile', har, '-o', hef, '-q');
  return { har, hef };
}

describe('reproducible artifacts', () => {
  it('two runs in separate processes give the same HAR and HEF bytes, with no time stamp inside', async () => {
    const a = build('a');
    const b = build('b');
    expect(sha256File(b.har)).toBe(sha256File(a.har));
    expect(sha256File(b.hef)).toBe(sha256File(a.hef));
    expect(await readHarManifest(a.har)).not.toHaveProperty('createdAt');
    const hef = openHef(a.hef);
    expect(hef.header.createdAt ?? '').toBe('');
    hef.close();
    // inspect names the content hash a user compares
    expect(cli(undefined, 'inspect', a.hef)).toContain(`sha256: ${sha256File(a.hef)}`);
    expect(JSON.parse(cli(undefined, 'inspect', a.har, '--json')).sha256).toBe(sha256File(a.har));
  });

  it('SOURCE_DATE_EPOCH sets the time stamp, and the bytes stay reproducible', async () => {
    const a = build('epoch-a', '1700000000');
    const b = build('epoch-b', '1700000000');
    expect(sha256File(b.har)).toBe(sha256File(a.har));
    expect(sha256File(b.hef)).toBe(sha256File(a.hef));
    expect((await readHarManifest(a.har)).createdAt).toBe('2023-11-14T22:13:20.000Z');
    const hef = openHef(a.hef);
    expect(hef.header.createdAt).toBe('2023-11-14T22:13:20.000Z');
    hef.close();
    expect(sha256File(a.hef)).not.toBe(sha256File(path.join(dir, 'a.hef'))); // the time stamp is in the bytes
    expect(fs.existsSync(a.hef)).toBe(true);
  });

  it('refuses a SOURCE_DATE_EPOCH that is not whole seconds with a one-line usage error', () => {
    const env = { ...process.env, SOURCE_DATE_EPOCH: 'yesterday' };
    const out = path.join(dir, 'bad.har');
    const r = spawnSync(process.execPath, [path.join(ROOT, 'dist/src/cli/main.js'), 'quantize', STORIES, '-o', out, '--calib-samples', '2', '-q'], { cwd: ROOT, env, encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr.trim()).toBe("error: SOURCE_DATE_EPOCH must be a whole number of seconds, got 'yesterday'");
    expect(fs.existsSync(out)).toBe(false);
  });
});
