/**
 * Issue 11's depth figure: decode cost after a long context against a short one, in one process
 * (acceptance: decode after 1,900 tokens ≥ 0.85× decode after 96). One backend over the HEF, two
 * contexts filled with pseudo-random tokens (untimed), then decode steps alternating between them,
 * so machine noise hits both alike; each step is one `forward` of one token (the graph call, the
 * KV-cache append and the logits row). Prints the median ms per step at each depth, their ratio
 * (short / long: the decode-speed ratio), and the load average before and after.
 *
 *   npm run build && npx vite-node scripts/bench-depth.ts -- MODEL.hef [--short 96] [--long 1900]
 *       [--steps 20] [--precision exact|fast] [--threads N]
 *
 * e.g. on the Qwen2-1.5B-shaped HEF of scripts/bench-qwen2-1.5b.sh (context 2,048).
 */
import * as os from 'node:os';
import { readExecutable } from '../formats/hef-executable.js';
import { SimulatorBackend, type ExecutionPrecision } from '../src/runtime/simulator.js';
import { benchPrompt, median } from '../src/eval/bench.js';

const argv = process.argv.slice(2).filter((a) => a !== '--');
const opt = (f: string, d: string) => (argv.includes(f) ? argv[argv.indexOf(f) + 1] : d);
const file = argv.find((a, i) => !a.startsWith('--') && !(i > 0 && argv[i - 1].startsWith('--')));
if (!file) throw new Error('usage: bench-depth.ts MODEL.hef [--short 96] [--long 1900] [--steps 20] [--precision exact|fast] [--threads N]');
const short = Number(opt('--short', '96'));
const long = Number(opt('--long', '1900'));
const steps = Number(opt('--steps', '20'));
const precision = opt('--precision', 'exact') as ExecutionPrecision;
const threads = argv.includes('--threads') ? Number(opt('--threads', '0')) : undefined;

const load = () => os.loadavg().map((v) => v.toFixed(2)).join(' ');
console.log(`load average before: ${load()}`);
const backend = await SimulatorBackend.load(readExecutable(file, { mapWeights: true, verify: 'deferred' }), { precision, threads });
if (long + steps + 1 > backend.maxContext) throw new Error(`--long ${long} + ${steps + 1} steps exceed the HEF's context of ${backend.maxContext}`);
const contexts = [short, long].map((n) => ({ depth: n, ctx: backend.newContext(), ms: [] as number[] }));
for (const c of contexts) await backend.forward(c.ctx, benchPrompt(backend.vocabSize, c.depth, 7 + c.depth, null), { lastOnly: true });
const ids = benchPrompt(backend.vocabSize, steps + 1, 99, null);
for (let i = 0; i <= steps; i++)
  for (const c of contexts) {
    const t0 = performance.now();
    await backend.forward(c.ctx, [ids[i]]);
    if (i > 0) c.ms.push(performance.now() - t0); // step 0 is a warm-up
  }
await backend.dispose();
const [a, b] = contexts.map((c) => median(c.ms));
console.log(`${backend.name}, ${steps} steps each, alternating`);
console.log(`after ${short} tokens: ${a.toFixed(1)} ms/step (${(1000 / a).toFixed(2)} tokens/s)`);
console.log(`after ${long} tokens: ${b.toFixed(1)} ms/step (${(1000 / b).toFixed(2)} tokens/s)`);
console.log(`depth ratio (decode speed at ${long} / at ${short}): ${(a / b).toFixed(3)}`);
console.log(`load average after: ${load()}`);
