/**
 * `edgellm chat` through a real pseudo-terminal (util-linux `script`, which runs the command on a
 * pty and forwards our bytes to it, so Ctrl-C is the terminal's ^C, not a signal we send), on a
 * quantized stories260K HEF with a chat template file (the model has none).
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { edgellm, STORIES, ROOT } from '../helpers/cli.js';
import { makeTempDir, removeDir } from '../helpers/tmp.js';

// The tiny fixture's template (fixtures/fixture-tokenizer.ts): its generation prompt "assistant: "
// is how an answer is rendered back, so the next turn's text extends the conversation's transcript.
const TEMPLATE = "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}";

let dir: string;
let hef: string;
let tpl: string;
beforeAll(() => {
  dir = makeTempDir('edgellm-chat-');
  hef = path.join(dir, 's.hef');
  tpl = path.join(dir, 'chat.jinja');
  fs.writeFileSync(tpl, TEMPLATE);
  const q = edgellm('quantize', STORIES, '-o', path.join(dir, 's.har'), '--calib-samples', '8', '-q');
  if (q.code !== 0) throw new Error(q.stderr);
  const c = edgellm('compile', path.join(dir, 's.har'), '-o', hef, '--prefill-len', '32');
  if (c.code !== 0) throw new Error(c.stderr);
});
afterAll(() => removeDir(dir));

/** A chat session on a pty: what it printed so far (escape sequences and CRs removed) and a way to wait for more. */
class Pty {
  private out = '';
  private readonly child: ChildProcessWithoutNullStreams;
  readonly exited: Promise<number>;
  constructor(args: string[]) {
    const cmd = [process.execPath, path.join(ROOT, 'dist/src/cli/main.js'), 'chat', ...args].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(' ');
    this.child = spawn('script', ['-qfec', cmd, '/dev/null'], { cwd: dir });
    this.child.stdout.on('data', (d: Buffer) => (this.out += d.toString('utf8')));
    this.child.stderr.on('data', (d: Buffer) => (this.out += d.toString('utf8')));
    this.exited = new Promise((r) => this.child.on('exit', (code) => r(code ?? -1)));
  }
  get text(): string {
    // eslint-disable-next-line no-control-regex
    return this.out.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '').replace(/\r/g, '');
  }
  send(s: string): void {
    this.child.stdin.write(s);
  }
  /** Waits until the output after `from` matches `re`; returns the match. */
  async waitFor(re: RegExp, from = 0, ms = 60_000): Promise<RegExpMatchArray> {
    const t0 = Date.now();
    for (;;) {
      const m = this.text.slice(from).match(re);
      if (m) return m;
      if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${re}; output so far:\n${this.text}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  kill(): void {
    this.child.kill('SIGKILL');
  }
}

describe('edgellm chat (pty)', () => {
  it('streams answers, reuses the cache across turns, saves/loads/clears', async () => {
    const pty = new Pty([hef, '--chat-template', tpl, '-t', '0', '-n', '24']);
    try {
      await pty.waitFor(/edgellm chat: 512-token context, adapter none/);
      let mark = pty.text.length;
      pty.send('Hello there\n');
      await pty.waitFor(/\n> $/, mark + 1);
      // the first answer is what `run --chat` gives for the same turn
      const run = edgellm('run', hef, '--chat', '-p', 'Hello there', '--chat-template', tpl, '-t', '0', '-n', '24', '--json');
      expect(run.code, run.stderr).toBe(0);
      const answer = JSON.parse(run.stdout).text as string;
      expect(pty.text.slice(mark)).toContain(answer.trim().slice(0, 40));

      mark = pty.text.length;
      pty.send('/stats\n');
      const s1 = await pty.waitFor(/TTFT [\d.]+ ms \((\d+) new prompt tokens, 0 from the cache\) \| decode [\d.]+ tokens\/s \(24 tokens, max_tokens\) \| context (\d+)\/512 tokens/, mark);
      const held = Number(s1[2]);
      expect(held).toBe(Number(s1[1]) + 23);

      // the second turn evaluates only what is new: the whole cache is reused
      mark = pty.text.length;
      pty.send('Tell me more\n');
      await pty.waitFor(/\n> $/, mark + 1);
      mark = pty.text.length;
      pty.send('/stats\n');
      const s2 = await pty.waitFor(/\((\d+) new prompt tokens, (\d+) from the cache\)/, mark);
      expect(Number(s2[2])).toBe(held);

      mark = pty.text.length;
      pty.send('/save conv.ctx\n');
      const saved = await pty.waitFor(/saved (\d+) tokens to conv\.ctx/, mark);
      expect(fs.existsSync(path.join(dir, 'conv.ctx'))).toBe(true);

      mark = pty.text.length;
      pty.send('/clear\n');
      await pty.waitFor(/conversation cleared/, mark);
      mark = pty.text.length;
      pty.send('/stats\n');
      await pty.waitFor(/context 0\/512 tokens/, mark);
      mark = pty.text.length;
      pty.send('/load conv.ctx\n');
      await pty.waitFor(new RegExp(`loaded ${saved[1]} tokens \\(4 messages, adapter none\\) from conv\\.ctx`), mark);
      mark = pty.text.length;
      pty.send('And then?\n');
      await pty.waitFor(/\n> $/, mark + 1);
      mark = pty.text.length;
      pty.send('/stats\n');
      const s3 = await pty.waitFor(/\((\d+) new prompt tokens, (\d+) from the cache\)/, mark);
      expect(Number(s3[2])).toBe(Number(saved[1]));

      // bad commands answer in one line and keep the session
      mark = pty.text.length;
      pty.send('/adapter nope\n/load missing.ctx\n/frobnicate\n');
      await pty.waitFor(/error: unknown command \/frobnicate/, mark);
      expect(pty.text.slice(mark)).toMatch(/error: no adapter 'nope' \(this model has: none\)/);
      expect(pty.text.slice(mark)).toMatch(/error: .*missing\.ctx: cannot read: ENOENT/);
      pty.send('\x04');
      expect(await pty.exited).toBe(0);
    } finally {
      pty.kill();
    }
  });

  it('refuses a model without a chat template in one line (exit 2); --raw chats in plain text and ^C stops an answer', async () => {
    const r = edgellm('chat', hef);
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toMatch(/^error: .*s\.hef: the model has no chat_template; give one with --chat-template FILE, or chat with --raw$/);
    // a long answer (up to the 512-token context), stopped by ^C as soon as it starts: the program stays
    const pty = new Pty([hef, '--raw', '-t', '0', '-n', '1000']);
    try {
      await pty.waitFor(/raw text/);
      let mark = pty.text.length;
      pty.send('Once upon a time\n');
      await pty.waitFor(/Once upon a time\n+\S/, mark);
      pty.send('\x03');
      await pty.waitFor(/\[stopped\]/, mark);
      mark = pty.text.length;
      pty.send('/stats\n');
      const s = await pty.waitFor(/\((\d+) tokens, aborted\) \| context (\d+)\/512/, mark);
      expect(Number(s[1])).toBeLessThan(400);
      pty.send('/exit\n');
      expect(await pty.exited).toBe(0);
    } finally {
      pty.kill();
    }
  });
});
