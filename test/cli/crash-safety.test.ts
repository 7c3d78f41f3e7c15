/**
 * Crash safety: each writing command is spawned and killed with SIGKILL at seeded random moments in
 * [0, T] (T: its measured uninterrupted duration), so many kills land while the output is written.
 * After every kill the output path either does not exist or holds a complete artifact that verifies
 * (readHar / verifyHef check every sha256), and the inputs are byte-for-byte unchanged (for the
 * in-place add-lora: the old bytes, or a complete new HAR with the adapter). Stale temporary files
 * (`.<name>.<pid>.<rand>.tmp`, src/core/atomic.ts) may remain until the next write of the same
 * output removes them; a following uninterrupted run must still succeed and verify.
 *
 * A uniform moment in [0, T] rarely hits the write itself (a few ms at the end of a run of seconds),
 * so each command also gets write-targeted kills: the test watches the output's directory and kills
 * the process a seeded moment in [0, W] after the temporary file appears (W: twice the temporary
 * file's lifetime in the measured run), i.e. while it is written, renamed, or just after.
 *
 * Per command: EDGELLM_CRASH_RUNS uniform kills (default 6 inside `npm test`; ≥ 50 for a full run)
 * plus EDGELLM_CRASH_WRITE_RUNS write-targeted kills (default 4); add-lora calibrates on
 * EDGELLM_CRASH_LORA_SAMPLES windows (default 8; 128 is the CLI's default). The default GPTQ recipe
 * (9 s a run) only with EDGELLM_CRASH_GPTQ_RUNS > 0 (default 0; its write path is the RTN recipe's
 * writeHar), with half as many write-targeted kills. EDGELLM_CRASH_SEED picks the kill moments.
 * At most 2 CLI processes run at a time. "context save" has no command yet and is not covered.
 *
 * onnxruntime-node leaves an empty `mat-debug-<pid>.log` and a `.ses` in $TMPDIR on every run that
 * creates a session (killed or not); the children get their own TMPDIR and those are not counted.
 *
 * Also: an output under a regular file (ENOTDIR, which stops root too, unlike permission bits), an
 * output that is an existing directory (EISDIR on the rename), and a full disk (ENOSPC on a small
 * tmpfs; skipped where `mount -t tmpfs` is not permitted) give a one-line error (for ENOSPC naming
 * the output), a non-zero exit code, no output, no temporary file, and untouched inputs.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, STORIES, WIKI_ADAPTER, CALIB } from '../helpers/paths.js';
import { makeTempDir, removeDir, suiteTempDir } from '../helpers/tmp.js';
import { readHar } from '../../formats/har.js';
import { verifyHef } from '../../formats/hef.js';
import { mulberry32 } from '../../src/core/rng.js';

const RUNS = Number(process.env.EDGELLM_CRASH_RUNS ?? 6);
const WRITE_RUNS = Number(process.env.EDGELLM_CRASH_WRITE_RUNS ?? 4);
const GPTQ_RUNS = Number(process.env.EDGELLM_CRASH_GPTQ_RUNS ?? 0);
const LORA_SAMPLES = process.env.EDGELLM_CRASH_LORA_SAMPLES ?? '8';
const SEED = Number(process.env.EDGELLM_CRASH_SEED ?? 20240611);
const PARALLEL = 2;
const CLI = path.join(ROOT, 'dist/src/cli/main.js');
const TMP_RE = /\.tmp$/;
/** onnxruntime-node's own leftovers in $TMPDIR (every run, not edgellm's). */
const ORT_LEFTOVER = /^(mat-debug-\d+\.log|\.ses)$/;

const dir = suiteTempDir('edgellm-crash-');

// ---- helpers ---------------------------------------------------------------------------------

/** The project's seeded PRNG (src/core/rng.ts), uniform in [0, 1). */
const rng = mulberry32;

function seedFor(name: string): number {
  let h = SEED >>> 0;
  for (const c of name) h = Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0;
  return h;
}

function sha256File(p: string): string {
  return createHash('sha256').update(fs.readFileSync(p)).digest('hex');
}

/** sha256 over a directory's files (names and bytes), for inputs that are directories. */
function sha256Dir(d: string): string {
  const h = createHash('sha256');
  for (const f of fs.readdirSync(d).sort()) {
    const p = path.join(d, f);
    if (!fs.statSync(p).isFile()) continue;
    h.update(f).update('\0').update(fs.readFileSync(p));
  }
  return h.digest('hex');
}

interface RunOutcome {
  /** exit code when it exited by itself, null when killed */
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  ms: number;
  /** when watching: ms from the spawn to the first new temporary file in the watched directory */
  tmpSeenMs?: number;
  /** when watching: ms from the spawn to that file's disappearance (renamed over the output) */
  tmpGoneMs?: number;
}

interface KillPlan {
  /** SIGKILL this long after the spawn */
  afterMs?: number;
  /** watch this directory ... */
  watchDir?: string;
  /** ... and SIGKILL this long after a temporary file not in `known` appears there */
  afterTmpMs?: number;
  known?: Set<string>;
}

/** Spawns the CLI (cwd = repository root, TMPDIR = `tmpdir`), SIGKILLing it as `kill` says. */
function runCli(args: string[], tmpdir: string, kill: KillPlan = {}): Promise<RunOutcome> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: { ...process.env, TMPDIR: tmpdir }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    let tmpSeenMs: number | undefined;
    let tmpGoneMs: number | undefined;
    let tmpName: string | undefined;
    let tmpTimer: NodeJS.Timeout | undefined;
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = kill.afterMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), kill.afterMs);
    const watcher = kill.watchDir
      ? fs.watch(kill.watchDir, (_event, name) => {
          if (!name || !TMP_RE.test(name) || kill.known?.has(name)) return;
          if (tmpSeenMs !== undefined) {
            if (name === tmpName && tmpGoneMs === undefined && !fs.existsSync(path.join(kill.watchDir!, name))) tmpGoneMs = performance.now() - t0;
            return;
          }
          tmpSeenMs = performance.now() - t0;
          tmpName = name;
          if (kill.afterTmpMs !== undefined) tmpTimer = setTimeout(() => child.kill('SIGKILL'), kill.afterTmpMs);
        })
      : undefined;
    const guard = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(tmpTimer);
      clearTimeout(guard);
      watcher?.close();
      resolve({ code, signal, stderr, ms: performance.now() - t0, tmpSeenMs, tmpGoneMs });
    });
  });
}

/** Runs `jobs` with at most `n` in flight. */
async function pool<T>(n: number, jobs: Array<() => Promise<T>>): Promise<T[]> {
  const out: T[] = new Array(jobs.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, jobs.length) }, async () => {
      while (next < jobs.length) {
        const i = next++;
        out[i] = await jobs[i]();
      }
    }),
  );
  return out;
}

/** Verifies a complete artifact (every sha256); returns the problem, or null when it verifies. */
async function verifyArtifact(p: string, expectAdapter?: string): Promise<string | null> {
  try {
    if (p.endsWith('.hef')) {
      verifyHef(p).close();
      return null;
    }
    const { manifest } = await readHar(p);
    if (expectAdapter) {
      const names = ((manifest.adapters as Array<{ name: string }> | undefined) ?? []).map((a) => a.name);
      if (!names.includes(expectAdapter)) return `verifies but has no adapter '${expectAdapter}' (adapters: ${names.join(', ') || 'none'})`;
    }
    return null;
  } catch (e) {
    return (e as Error).message.split('\n')[0];
  }
}

const tempFiles = (d: string): string[] => fs.readdirSync(d).filter((f) => TMP_RE.test(f));
/** Whether a process with this pid exists now (EPERM: it does, another user's). */
function pidRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

// ---- the commands under test -----------------------------------------------------------------

interface Lane {
  name: string;
  /** kills at a uniform moment in [0, T] */
  runs: number;
  /** kills at a uniform moment in [0, W] after the temporary file appears */
  writeRuns: number;
  /** the lane whose measured T and W are used (default: its own) */
  durationOf?: string;
  /** sets up a trial in the lane's directory; returns the CLI arguments */
  prepare(laneDir: string): string[];
  /** the artifact the command writes */
  output(laneDir: string): string;
  /** the adapter a complete output must hold */
  adapter?: string;
  /** input files/dirs that must stay byte-for-byte unchanged */
  inputs(): string[];
  /** in place: the input it rewrites (old bytes or a complete new artifact) */
  inPlace?: boolean;
}

interface LaneReport {
  name: string;
  T: number;
  W: number;
  kills: number;
  writeKills: number;
  completedBeforeKill: number;
  noOutput: number;
  completeOutput: number;
  /** in place only: the old bytes left */
  oldBytes: number;
  /** kills after which a new temporary file was left (i.e. killed while writing it) */
  killedMidWrite: number;
  tempFilesLeft: number;
  strayTmpdirEntries: number;
  recovery: string;
  failures: string[];
  seconds: number;
}

let baseHar: string;
let baseHarSha: string;
const inputSha = new Map<string, string>();
const shaOf = (p: string): string => (fs.statSync(p).isDirectory() ? sha256Dir(p) : sha256File(p));

function lanes(): Lane[] {
  const rtn = (out: string): string[] => ['quantize', STORIES, '-o', out, '--method', 'rtn', '--calib', CALIB, '--calib-samples', '8', '-q'];
  const lora = (har: string, out?: string): string[] => ['add-lora', WIKI_ADAPTER, '--har', har, '--name', 'wiki', ...(out ? ['-o', out] : []), '--calib', CALIB, '--calib-samples', LORA_SAMPLES, '-q'];
  const all: Lane[] = [
    {
      name: 'quantize --method rtn',
      runs: RUNS,
      writeRuns: WRITE_RUNS,
      prepare: (d) => rtn(path.join(d, 'out.har')),
      output: (d) => path.join(d, 'out.har'),
      inputs: () => [STORIES],
    },
    {
      name: 'compile',
      runs: RUNS,
      writeRuns: WRITE_RUNS,
      prepare: (d) => ['compile', baseHar, '-o', path.join(d, 'out.hef')],
      output: (d) => path.join(d, 'out.hef'),
      inputs: () => [baseHar],
    },
    {
      name: 'add-lora -o',
      runs: RUNS,
      writeRuns: WRITE_RUNS,
      prepare: (d) => lora(baseHar, path.join(d, 'out.har')),
      output: (d) => path.join(d, 'out.har'),
      adapter: 'wiki',
      inputs: () => [baseHar, WIKI_ADAPTER],
    },
    {
      name: 'add-lora in place',
      runs: RUNS,
      writeRuns: WRITE_RUNS,
      durationOf: 'add-lora -o',
      prepare: (d) => {
        fs.copyFileSync(baseHar, path.join(d, 'model.har'));
        return lora(path.join(d, 'model.har'));
      },
      output: (d) => path.join(d, 'model.har'),
      adapter: 'wiki',
      inputs: () => [WIKI_ADAPTER],
      inPlace: true,
    },
  ];
  if (GPTQ_RUNS > 0)
    all.push({
      name: 'quantize (default gptq)',
      runs: GPTQ_RUNS,
      writeRuns: Math.ceil(GPTQ_RUNS / 2),
      prepare: (d) => ['quantize', STORIES, '-o', path.join(d, 'out.har'), '--calib', CALIB, '-q'],
      output: (d) => path.join(d, 'out.har'),
      inputs: () => [STORIES],
    });
  return all;
}

/** One lane: `runs` kills at seeded moments in [0, T], `writeRuns` in [0, W] after the temporary file appears, then one uninterrupted run. */
async function runLane(lane: Lane, T: number, W: number, laneDir: string, tmpdir: string): Promise<LaneReport> {
  const t0 = performance.now();
  const random = rng(seedFor(lane.name));
  const r: LaneReport = {
    name: lane.name,
    T: Math.round(T),
    W: Math.round(W),
    kills: 0,
    writeKills: 0,
    completedBeforeKill: 0,
    noOutput: 0,
    completeOutput: 0,
    oldBytes: 0,
    killedMidWrite: 0,
    tempFilesLeft: 0,
    strayTmpdirEntries: 0,
    recovery: '',
    failures: [],
    seconds: 0,
  };
  const out = lane.output(laneDir);
  for (let i = 0; i < lane.runs + lane.writeRuns; i++) {
    fs.rmSync(out, { force: true }); // stale temporary files are kept on purpose
    const args = lane.prepare(laneDir);
    const before = new Set(tempFiles(laneDir));
    const write = i >= lane.runs;
    const delay = write ? Math.round(random() * W * 10) / 10 : Math.round(random() * T);
    const o = await runCli(args, tmpdir, write ? { watchDir: laneDir, afterTmpMs: delay, known: before } : { afterMs: delay });
    const tag = `${lane.name} kill #${i} at ${delay} ms${write ? ' after the temporary file appeared' : ''}`;
    if (o.signal === 'SIGKILL') write ? r.writeKills++ : r.kills++;
    else if (o.code === 0) r.completedBeforeKill++;
    else r.failures.push(`${tag}: exited ${o.code} before the kill: ${o.stderr.trim()}`);
    if (tempFiles(laneDir).some((f) => !before.has(f))) r.killedMidWrite++;

    if (lane.inPlace) {
      if (!fs.existsSync(out)) r.failures.push(`${tag}: the in-place HAR ${out} is gone`);
      else if (sha256File(out) === baseHarSha) r.oldBytes++;
      else {
        const problem = await verifyArtifact(out, lane.adapter);
        if (problem) r.failures.push(`${tag}: the in-place HAR is neither the old bytes nor a complete new HAR: ${problem}`);
        else r.completeOutput++;
      }
    } else if (!fs.existsSync(out)) r.noOutput++;
    else {
      const problem = await verifyArtifact(out, lane.adapter);
      if (problem) r.failures.push(`${tag}: ${path.basename(out)} exists but does not verify: ${problem}`);
      else r.completeOutput++;
    }
    if (o.code === 0 && !fs.existsSync(out)) r.failures.push(`${tag}: exited 0 without writing ${out}`);
    for (const p of lane.inputs()) if (shaOf(p) !== inputSha.get(p)) r.failures.push(`${tag}: input ${p} changed`);
  }
  r.tempFilesLeft = tempFiles(laneDir).length;
  r.strayTmpdirEntries = fs.readdirSync(tmpdir).filter((f) => !ORT_LEFTOVER.test(f)).length;

  // Recovery: with the stale temporary files still there, an uninterrupted run succeeds and verifies,
  // leaves no temporary file of its own and removes the stale ones of its output (their writers are gone).
  fs.rmSync(out, { force: true });
  const staleBefore = new Set(tempFiles(laneDir));
  const o = await runCli(lane.prepare(laneDir), tmpdir);
  const problem = o.code !== 0 ? `exited ${o.code ?? o.signal}: ${o.stderr.trim()}` : await verifyArtifact(out, lane.adapter);
  r.recovery = problem ?? 'ok';
  if (problem) r.failures.push(`${lane.name}: uninterrupted run after the kills: ${problem}`);
  const tempsAfter = tempFiles(laneDir);
  if (tempsAfter.some((f) => !staleBefore.has(f))) r.failures.push(`${lane.name}: the uninterrupted run left a temporary file of its own`);
  // (a killed writer's pid may have been reused by a live process meanwhile: such a file is rightly kept)
  const ofOutput = tempsAfter.filter((f) => f.startsWith(`.${path.basename(out)}.`) && !pidRunning(Number(f.split('.').at(-3))));
  if (ofOutput.length) r.failures.push(`${lane.name}: the uninterrupted run kept stale temporary files of its output: ${ofOutput.join(', ')}`);
  for (const p of lane.inputs()) if (shaOf(p) !== inputSha.get(p)) r.failures.push(`${lane.name}: input ${p} changed by the uninterrupted run`);
  r.seconds = Math.round((performance.now() - t0) / 100) / 10;
  return r;
}

// ---- tests -------------------------------------------------------------------------------------

describe('crash safety (SIGKILL at random moments)', () => {
  beforeAll(async () => {
    baseHar = path.join(dir, 'base.har');
    const q = await runCli(['quantize', STORIES, '-o', baseHar, '--method', 'rtn', '--calib', CALIB, '--calib-samples', '8', '-q'], dir);
    expect(q.code, q.stderr).toBe(0);
    baseHarSha = sha256File(baseHar);
    for (const p of [baseHar, STORIES, WIKI_ADAPTER]) inputSha.set(p, shaOf(p));
  });

  it(`${RUNS} + ${WRITE_RUNS} write-targeted kills per command (quantize, compile, add-lora -o, add-lora in place${GPTQ_RUNS > 0 ? `, gptq` : ''}): no partial output, inputs untouched`, { timeout: 60_000 + ((RUNS + WRITE_RUNS) * 4 + GPTQ_RUNS * 20) * 4_000 }, async () => {
    const all = lanes();
    const setup = (lane: Lane): { laneDir: string; tmpdir: string } => {
      const slug = lane.name.replace(/[^a-z0-9]+/gi, '-');
      const laneDir = path.join(dir, slug);
      const tmpdir = path.join(dir, `${slug}.tmpdir`);
      fs.mkdirSync(laneDir, { recursive: true });
      fs.mkdirSync(tmpdir, { recursive: true });
      return { laneDir, tmpdir };
    };
    // T: one uninterrupted run per command (its output must verify too), 2 at a time.
    const measured = all.filter((l) => !l.durationOf);
    const durations = new Map<string, number>();
    const windows = new Map<string, number>();
    await pool(
      PARALLEL,
      measured.map((lane) => async () => {
        const { laneDir, tmpdir } = setup(lane);
        const o = await runCli(lane.prepare(laneDir), tmpdir, { watchDir: laneDir, known: new Set() });
        expect(o.code, `${lane.name}: ${o.stderr}`).toBe(0);
        expect(await verifyArtifact(lane.output(laneDir), lane.adapter)).toBeNull();
        expect(o.tmpSeenMs, `${lane.name}: no temporary file seen beside the output`).toBeDefined();
        durations.set(lane.name, o.ms);
        // W: twice the temporary file's lifetime (so about half the write-targeted kills land while it is
        // written, the rest between the rename and the exit), or its appearance to the exit if the
        // watcher missed the rename
        windows.set(lane.name, Math.max(1, o.tmpGoneMs !== undefined ? 2 * (o.tmpGoneMs - o.tmpSeenMs!) : o.ms - o.tmpSeenMs!));
      }),
    );
    // The kills: each command's trials in sequence in its own directory, 2 commands at a time, longest first.
    const order = [...all].sort((a, b) => durations.get(b.durationOf ?? b.name)! * b.runs - durations.get(a.durationOf ?? a.name)! * a.runs);
    const reports = await pool(
      PARALLEL,
      order.map((lane) => () => {
        const { laneDir, tmpdir } = setup(lane);
        const of = lane.durationOf ?? lane.name;
        return runLane(lane, durations.get(of)!, windows.get(of)!, laneDir, tmpdir);
      }),
    );
    console.log(
      [
        `crash safety: seed ${SEED}, ${RUNS} uniform + ${WRITE_RUNS} write-targeted kills per command${GPTQ_RUNS > 0 ? ` (gptq: ${GPTQ_RUNS} + ${Math.ceil(GPTQ_RUNS / 2)})` : ''}, add-lora --calib-samples ${LORA_SAMPLES}`,
        ...reports.map(
          (r) =>
            `  ${r.name}: T ${r.T} ms, W ${r.W} ms; ${r.kills} uniform + ${r.writeKills} write-targeted kills, ${r.completedBeforeKill} finished first; ` +
            (r.name.includes('in place') ? `${r.oldBytes} old bytes, ${r.completeOutput} complete new HAR` : `${r.noOutput} no output, ${r.completeOutput} complete output`) +
            `; ${r.killedMidWrite} killed mid-write; ${r.tempFilesLeft} stale .tmp left beside the output, ${r.strayTmpdirEntries} in TMPDIR; ` +
            `rerun ${r.recovery}; ${r.failures.length} failures; ${r.seconds} s`,
        ),
      ].join('\n'),
    );
    for (const r of reports) {
      expect(r.failures, r.name).toEqual([]);
      const lane = all.find((l) => l.name === r.name)!;
      expect(r.kills + r.writeKills + r.completedBeforeKill).toBe(lane.runs + lane.writeRuns);
      // a stale temporary file is left only by a kill while it was being written
      expect(r.tempFilesLeft).toBeLessThanOrEqual(r.killedMidWrite);
    }
  });
});

// ---- outputs that cannot be written ------------------------------------------------------------

function expectCleanFailure(r: RunOutcome, outDir: string, entriesBefore: string[]): void {
  expect(r.code, r.stderr).not.toBe(0);
  expect(r.signal).toBeNull();
  const lines = r.stderr.trim().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0].startsWith('error: ')).toBe(true);
  expect(r.stderr).not.toMatch(/\n\s+at /);
  if (fs.existsSync(outDir) && fs.statSync(outDir).isDirectory()) expect(fs.readdirSync(outDir).sort()).toEqual(entriesBefore);
}

describe('unwritable output', () => {
  let base: string;
  let baseSha: string;
  let tmpdir: string;
  beforeAll(async () => {
    tmpdir = fs.mkdtempSync(path.join(dir, 'uw-tmpdir-'));
    base = path.join(dir, 'uw-base.har');
    if (baseHar && fs.existsSync(baseHar)) fs.copyFileSync(baseHar, base);
    else {
      const q = await runCli(['quantize', STORIES, '-o', base, '--method', 'rtn', '--calib', CALIB, '--calib-samples', '8', '-q'], tmpdir);
      expect(q.code, q.stderr).toBe(0);
    }
    baseSha = sha256File(base);
  });

  // Permission bits do not stop root; a path below a regular file fails for everyone (ENOTDIR).
  it('an output below a regular file (ENOTDIR): one-line error, non-zero exit, inputs untouched', async () => {
    const d = fs.mkdtempSync(path.join(dir, 'notdir-'));
    const file = path.join(d, 'afile');
    fs.writeFileSync(file, 'not a directory\n');
    const before = fs.readdirSync(d).sort();
    const cases: string[][] = [
      ['quantize', STORIES, '-o', path.join(file, 'out.har'), '--method', 'rtn', '--calib', CALIB, '--calib-samples', '8', '-q'],
      ['compile', base, '-o', path.join(file, 'out.hef')],
      ['add-lora', WIKI_ADAPTER, '--har', base, '--name', 'wiki', '-o', path.join(file, 'out.har'), '--calib', CALIB, '--calib-samples', '8', '-q'],
    ];
    const storiesSha = sha256Dir(STORIES);
    const adapterSha = sha256Dir(WIKI_ADAPTER);
    const results = await pool(PARALLEL, cases.map((args) => () => runCli(args, tmpdir)));
    for (const r of results) {
      expectCleanFailure(r, d, before);
      expect(r.stderr).toMatch(/ENOTDIR|not a directory/);
      // the write's own error, not the temporary file's cleanup masking it (was: "ENOTDIR ..., lstat '<tmp>'")
      expect(r.stderr).not.toMatch(/lstat/);
    }
    expect(fs.readFileSync(file, 'utf8')).toBe('not a directory\n');
    expect(sha256File(base)).toBe(baseSha);
    expect(sha256Dir(STORIES)).toBe(storiesSha);
    expect(sha256Dir(WIKI_ADAPTER)).toBe(adapterSha);
  });

  it('an output that is an existing directory (EISDIR on the rename): one-line error, no temporary file left', async () => {
    const d = fs.mkdtempSync(path.join(dir, 'isdir-'));
    fs.mkdirSync(path.join(d, 'out.hef'));
    const before = fs.readdirSync(d).sort();
    const r = await runCli(['compile', base, '-o', path.join(d, 'out.hef')], tmpdir);
    expectCleanFailure(r, d, before);
    expect(fs.statSync(path.join(d, 'out.hef')).isDirectory()).toBe(true);
    expect(fs.readdirSync(path.join(d, 'out.hef'))).toEqual([]);
    expect(sha256File(base)).toBe(baseSha);
  });

  describe('a full disk (ENOSPC on a small tmpfs)', () => {
    const mounts: string[] = [];
    /** A tmpfs of `size` mounted on a fresh directory, or null where mounting is not permitted. */
    function tmpfs(size: string): string | null {
      const m = makeTempDir('edgellm-enospc-');
      const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', m], { encoding: 'utf8' });
      if (r.status !== 0) {
        removeDir(m);
        return null;
      }
      mounts.push(m);
      return m;
    }
    afterAll(() => {
      for (const m of mounts) {
        spawnSync('umount', [m]);
        removeDir(m);
      }
    });

    it('compile onto a 200 KiB tmpfs: one-line error, nothing left there', async (ctx) => {
      const m = tmpfs('200k');
      if (!m) return ctx.skip();
      const r = await runCli(['compile', base, '-o', path.join(m, 'out.hef')], tmpdir);
      expectCleanFailure(r, m, []);
      expect(r.stderr).toMatch(/ENOSPC/);
      expect(r.stderr).toContain(`${path.join(m, 'out.hef')}: cannot write: ENOSPC`); // names the output, not only the syscall
      expect(sha256File(base)).toBe(baseSha);
    });

    it('add-lora in place on a tmpfs with room for the HAR but not a second copy: the HAR keeps its bytes', async (ctx) => {
      const size = fs.statSync(base).size;
      const m = tmpfs(`${Math.ceil((size + 64 * 1024) / 4096) * 4}k`);
      if (!m) return ctx.skip();
      const har = path.join(m, 'model.har');
      fs.copyFileSync(base, har);
      const r = await runCli(['add-lora', WIKI_ADAPTER, '--har', har, '--name', 'wiki', '--calib', CALIB, '--calib-samples', '8', '-q'], tmpdir);
      expectCleanFailure(r, m, ['model.har']);
      expect(r.stderr).toMatch(/ENOSPC/);
      expect(r.stderr).toContain(`${har}: cannot write: ENOSPC`);
      expect(sha256File(har)).toBe(baseSha);
    });
  });
});
