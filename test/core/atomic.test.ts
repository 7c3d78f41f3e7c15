/**
 * src/core/atomic.ts: the next write of a target removes the temporary files that killed writers
 * (processes no longer running) left beside it, and keeps those of live processes and of other
 * targets; a filesystem error of a write (ENOSPC) is a one-line EdgeLLMError naming the target, and
 * leaves no temporary file.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempPathFor, writeAtomic, writeAtomicSync, writeFileAtomicSync } from '../../src/core/atomic.js';
import { EdgeLLMError } from '../../src/core/errors.js';
import { rejectionOf, thrownBy } from '../helpers/errors.js';
import { suiteTempDir } from '../helpers/tmp.js';

const dir = suiteTempDir('edgellm-atomic-');

/** The pid of a process that has exited (a child run to completion). */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', '']);
  return r.pid!;
}

describe('stale temporary files', () => {
  it('a write removes the temporary files of its target left by processes that are gone, and nothing else', () => {
    const d = fs.mkdtempSync(path.join(dir, 'stale-'));
    const dead = deadPid();
    const names = {
      dead: `.out.har.${dead}.k3j9x2ab.tmp`,
      deadToo: `.out.har.${dead}.zz.tmp`,
      live: `.out.har.${process.pid}.abc123.tmp`,
      parent: `.out.har.${process.ppid}.abc123.tmp`,
      otherTarget: `.out.hef.${dead}.k3j9x2ab.tmp`,
      prefixTarget: `.out.har.x.${dead}.k3j9x2ab.tmp`, // the temp of target "out.har.x"
      notTemp: `.out.har.${dead}.k3j9x2ab.tmp.keep`,
      user: 'notes.txt',
    };
    for (const n of Object.values(names)) fs.writeFileSync(path.join(d, n), 'x');
    writeFileAtomicSync(path.join(d, 'out.har'), 'new');
    const left = fs.readdirSync(d).sort();
    expect(left).toEqual([names.live, names.parent, names.otherTarget, names.prefixTarget, names.notTemp, names.user, 'out.har'].sort());
    expect(fs.readFileSync(path.join(d, 'out.har'), 'utf8')).toBe('new');
  });

  it('tempPathFor names the temporary file .<name>.<pid>.<rand>.tmp beside the target, and tolerates a missing directory', () => {
    const t = tempPathFor(path.join(dir, 'model.hef'));
    expect(path.dirname(t)).toBe(dir);
    expect(path.basename(t)).toMatch(new RegExp(`^\\.model\\.hef\\.${process.pid}\\.[a-z0-9]+\\.tmp$`));
    expect(() => tempPathFor(path.join(dir, 'no', 'such', 'dir', 'x.har'))).not.toThrow();
  });
});

describe('write errors', () => {
  it.skipIf(!fs.existsSync('/dev/full'))('ENOSPC (a write to /dev/full) is a one-line EdgeLLMError naming the target; no temporary file is left', async () => {
    const d = fs.mkdtempSync(path.join(dir, 'enospc-'));
    const target = path.join(d, 'out.hef');
    const fill = (tmp: string) => {
      fs.writeFileSync(tmp, 'partial');
      const fd = fs.openSync('/dev/full', 'w');
      try {
        fs.writeSync(fd, Buffer.alloc(4096));
      } finally {
        fs.closeSync(fd);
      }
    };
    for (const e of [thrownBy(() => writeAtomicSync(target, fill)), await rejectionOf(writeAtomic(target, fill))]) {
      expect(e).toBeInstanceOf(EdgeLLMError);
      expect((e as Error).message).toMatch(new RegExp(`^${target.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: cannot write: ENOSPC`));
      expect((e as Error).message).not.toContain('\n');
      expect(((e as Error).cause as NodeJS.ErrnoException).code).toBe('ENOSPC');
    }
    expect(fs.readdirSync(d)).toEqual([]);
  });

  it("passes the writer's own EdgeLLMError through unchanged", () => {
    const mine = new EdgeLLMError('writeHef x: duplicate section name');
    expect(thrownBy(() => writeAtomicSync(path.join(dir, 'y.hef'), () => { throw mine; }))).toBe(mine);
  });
});
