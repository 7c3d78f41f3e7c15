/**
 * Issue 11's figure: decode speed with an adapter compiled in but none selected, against the same
 * model compiled without adapters (acceptance: ≥ 0.95×). Three executables in one process, on the
 * simulator backend, alternating rounds (the order rotates each round) so machine noise hits all
 * alike:
 *
 * - `base`: the HEF compiled without adapters;
 * - `lora-rank0`: the HEF with the adapter, "no adapter" selected: rank-0 `lora.*` feeds through
 *   every branch (src/compiler/lora-feeds.ts);
 * - `stripped`: the same HEF with its graphs passed through withoutLora (src/compiler/lora-strip.ts)
 *   and the `lora.*` inputs left out of its I/O tables, so the backend feeds none.
 *
 *   npx vite-node scripts/bench-lora-base.ts -- [LORA.hef BASE.hef] [--rounds 5] [--runs 3]
 *       [--prompt 96] [--decode 128] [--threads N] [--control]
 *
 * Without HEFs it builds them from ../shared (stories260K, the wiki adapter) with the built CLI
 * (`npm run build` first): quantize, add-lora, compile with and without the adapter, in a
 * temporary directory. Prints per-round figures, medians over rounds of each round's median, the
 * ratios to `base`, and the load average before and after.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readExecutable } from '../formats/hef-executable.js';
import { decodeModel, onnx } from '../formats/onnx.js';
import { withoutLora } from '../src/compiler/lora-strip.js';
import { parseLoraInput } from '../src/compiler/io-contract.js';
import { SimulatorBackend } from '../src/runtime/simulator.js';
import { benchmark, median, DEFAULT_BENCH } from '../src/eval/bench.js';
import type { Executable, GraphPart } from '../src/ir/executable.js';

const argv = process.argv.slice(2).filter((a) => a !== '--');
const num = (f: string, d: number) => (argv.includes(f) ? Number(argv[argv.indexOf(f) + 1]) : d);
const files = argv.filter((a, i) => !a.startsWith('--') && !(i > 0 && argv[i - 1].startsWith('--')));
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SHARED = path.resolve(ROOT, '../shared');

/** Builds lora.hef and base.hef from the shared stories260K and wiki adapter with the built CLI. */
function buildHefs(dir: string): [string, string] {
  const cli = path.join(ROOT, 'dist/src/cli/main.js');
  if (!fs.existsSync(cli)) throw new Error(`${cli} is missing: run npm run build first`);
  const run = (...args: string[]) => {
    const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`edgellm ${args.join(' ')}: ${r.stderr}`);
  };
  const [har, loraHar, lora, base] = ['base.har', 'wiki.har', 'wiki.hef', 'base.hef'].map((f) => path.join(dir, f));
  run('quantize', path.join(SHARED, 'models/stories260K'), '-o', har, '--calib-samples', '16');
  run('add-lora', path.join(SHARED, 'adapters/stories260K-lora-wiki'), '--har', har, '--name', 'wiki', '-o', loraHar, '--calib-samples', '16');
  run('compile', loraHar, '-o', lora);
  run('compile', har, '-o', base);
  return [lora, base];
}

/** A graph part through withoutLora, its I/O table without the `lora.*` inputs. */
function stripPart(g: GraphPart, label: string): GraphPart {
  const proto = withoutLora(decodeModel(g.onnx, label));
  return { ...g, onnx: onnx.ModelProto.encode(onnx.ModelProto.create(proto)).finish(), inputs: g.inputs.filter((v) => parseLoraInput(v.name) === null) };
}

const load = () => os.loadavg().map((x) => x.toFixed(2)).join(' ');
let tmp: string | null = null;
let [loraFile, baseFile] = files;
if (!loraFile || !baseFile) {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'edgellm-bench-lora-'));
  [loraFile, baseFile] = buildHefs(tmp);
}
try {
  const loraExe = readExecutable(loraFile);
  const variants: Record<string, Executable> = {
    base: readExecutable(baseFile),
    'lora-rank0': loraExe,
    stripped: { ...loraExe, prefill: stripPart(loraExe.prefill, 'graph.prefill'), decode: stripPart(loraExe.decode, 'graph.decode') },
  };
  // --control: a second backend over the base HEF, whose spread against `base` is the noise floor
  if (argv.includes('--control')) variants['base-again'] = readExecutable(baseFile);
  const nodes = (e: Executable) => decodeModel(e.prefill.onnx, 'prefill').graph!.node!.length;
  console.log(`prefill graph nodes: ${Object.entries(variants).map(([k, e]) => `${k} ${nodes(e)}`).join(', ')}`);
  const threads = argv.includes('--threads') ? num('--threads', 0) : undefined;
  const backends: Record<string, SimulatorBackend> = {};
  for (const [k, e] of Object.entries(variants)) backends[k] = await SimulatorBackend.load(e, { threads });
  const opts = { ...DEFAULT_BENCH, promptTokens: num('--prompt', DEFAULT_BENCH.promptTokens), decodeTokens: num('--decode', DEFAULT_BENCH.decodeTokens), runs: num('--runs', 3) };
  const names = Object.keys(variants);
  const tps: Record<string, number[]> = Object.fromEntries(names.map((k) => [k, []]));
  const ttft: Record<string, number[]> = Object.fromEntries(names.map((k) => [k, []]));
  console.log(`load average before: ${load()} (${os.cpus().length} cores); prompt ${opts.promptTokens}, decode ${opts.decodeTokens}, ${opts.runs} runs per round`);
  const rounds = num('--rounds', 5);
  for (let r = 0; r < rounds; r++) {
    const order = names.map((_, i) => names[(i + r) % names.length]);
    const line: string[] = [];
    for (const k of order) {
      const res = await benchmark(backends[k], { ...opts, bosTokenId: variants[k].config.bosTokenId ?? null });
      tps[k].push(res.decodeTokensPerSecond);
      ttft[k].push(res.ttftMs);
      line.push(`${k} ${res.decodeTokensPerSecond.toFixed(0)} tok/s (TTFT ${res.ttftMs.toFixed(1)} ms)`);
    }
    console.log(`round ${r}: ${line.join(', ')}; load ${load()}`);
  }
  const m = (k: string) => median(tps[k]);
  for (const k of names) console.log(`median ${k}: decode ${m(k).toFixed(1)} tokens/s [${Math.min(...tps[k]).toFixed(0)}-${Math.max(...tps[k]).toFixed(0)}], TTFT ${median(ttft[k]).toFixed(2)} ms`);
  console.log(`decode ratio to base: ${names.filter((k) => k !== 'base').map((k) => `${k} ${(m(k) / m('base')).toFixed(3)}`).join(', ')} (acceptance: lora-rank0 or stripped ≥ 0.95)`);
  console.log(`load average after: ${load()}`);
  for (const b of Object.values(backends)) await b.dispose();
} finally {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
}
