/**
 * GPTQ at scale (issue 3, item 7): generates a random-weight checkpoint with the exact Qwen2-1.5B
 * config (bf16, sharded safetensors, fixtures/make-fixture.ts) in a temp dir, runs true-sequential
 * GPTQ (passes/gptq-sequential.ts) with random calibration windows, and reports wall time per pass
 * and per linear role, and the peak RSS. Random weights: time and memory are the real model's, the
 * errors are meaningless.
 *
 *   npx vite-node scripts/bench-gptq.ts -- [--windows 32] [--seqlen 2048] [--layers 28] [--group 64]
 *       [--checkpoint DIR] [--keep] [--quarot]
 *
 * --layers N     quantize only the first N layers (a quick estimate; per-layer time is flat)
 * --checkpoint   reuse (or create and keep) the checkpoint in DIR instead of a fresh temp dir
 * --quarot       run fold-norms and QuaRot (R1+R2, seed 0) before GPTQ, as the quantize pipeline does
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { makeCheckpoint } from '../fixtures/make-fixture.js';
import { loadHfModel } from '../formats/hf.js';
import { mulberry32 } from '../src/core/rng.js';
import { gptqModel } from '../passes/gptq-sequential.js';
import { foldNorms } from '../passes/fold-norms.js';
import { quarot, DEFAULT_QUAROT_OPTIONS } from '../passes/quarot.js';
import type { RunContext } from '../src/core/context.js';
import type { Model } from '../src/ir/model.js';

const QWEN2_1_5B = {
  architectures: ['Qwen2ForCausalLM'],
  model_type: 'qwen2',
  hidden_size: 1536,
  intermediate_size: 8960,
  num_hidden_layers: 28,
  num_attention_heads: 12,
  num_key_value_heads: 2,
  vocab_size: 151936,
  max_position_embeddings: 32768,
  rope_theta: 1000000.0,
  rms_norm_eps: 1e-6,
  tie_word_embeddings: true,
  hidden_act: 'silu',
  bos_token_id: 151643,
  eos_token_id: 151643,
  torch_dtype: 'bfloat16',
};

const argv = process.argv.slice(2);
const num = (f: string, d: number) => (argv.includes(f) ? Number(argv[argv.indexOf(f) + 1]) : d);
const str = (f: string) => (argv.includes(f) ? argv[argv.indexOf(f) + 1] : undefined);

const rssGiB = () => (process.resourceUsage().maxRSS / 2 ** 20).toFixed(2);
const t0 = performance.now();
const stamp = () => `[${((performance.now() - t0) / 1000).toFixed(0).padStart(5)} s, peak RSS ${rssGiB()} GiB]`;

/** Prints progress lines and times each tick by the status text set before it (the linear's role). */
function timingContext(times: Map<string, number>): RunContext {
  return {
    log: (m) => console.log(`${stamp()} ${m}`),
    progress: (label, total) => {
      let done = 0;
      let status = '';
      let last = performance.now();
      return {
        status: (s) => void (status = s),
        tick: (n = 1) => {
          const now = performance.now();
          const role = status.split(' ').at(-1)!;
          times.set(role, (times.get(role) ?? 0) + (now - last) / 1000);
          last = now;
          done += n;
          if (role === 'down_proj' || role === 'lm_head' || label !== 'gptq') console.log(`${stamp()} ${label} ${done}/${total} ${status}`);
        },
        done: () => {},
      };
    },
  };
}

async function main(): Promise<void> {
  const nWindows = num('--windows', 32);
  const seqLen = num('--seqlen', 2048);
  const groupSize = num('--group', 64);
  const dir = str('--checkpoint') ?? fs.mkdtempSync(path.join(os.tmpdir(), 'bench-gptq-qwen2-1.5b-'));
  const keep = argv.includes('--keep') || str('--checkpoint') !== undefined;
  console.log(`Qwen2-1.5B config, random bf16 weights in ${dir}; ${nWindows} windows × ${seqLen} tokens; W4 g${groupSize}; ${os.cpus().length} CPUs`);
  try {
    if (!fs.existsSync(path.join(dir, 'config.json'))) {
      const t = performance.now();
      makeCheckpoint(QWEN2_1_5B, dir, { dtype: 'BF16', seed: 0, maxShardBytes: 1e9 });
      console.log(`${stamp()} checkpoint written in ${((performance.now() - t) / 1000).toFixed(1)} s`);
    }
    let model: Model = loadHfModel(dir);
    const layers = num('--layers', model.config.numLayers);
    model = { ...model, config: { ...model.config, numLayers: layers } };
    const rng = mulberry32(1);
    const windows = Array.from({ length: nWindows }, () => Array.from({ length: seqLen }, () => Math.floor(rng() * model.config.vocabSize)));
    const passTimes: [string, number, number][] = [];
    const cpuSeconds = () => {
      const u = process.cpuUsage();
      return (u.user + u.system) / 1e6;
    };
    const run = async (name: string, f: () => Model | Promise<Model>) => {
      const t = performance.now();
      const c = cpuSeconds();
      model = await f();
      passTimes.push([name, (performance.now() - t) / 1000, cpuSeconds() - c]);
      console.log(`${stamp()} ${name} done`);
    };
    const roleTimes = new Map<string, number>();
    const ctx = timingContext(roleTimes);
    if (argv.includes('--quarot')) {
      await run('fold-norms', () => foldNorms(model, {}, ctx));
      await run('quarot', () => quarot(model, DEFAULT_QUAROT_OPTIONS, ctx));
    }
    await run('gptq', () => gptqModel(model, windows, { groupSize }, ctx));
    console.log(`\nwall time per pass (${layers} of 28 layers):`);
    // CPU time / cores: the wall time the same work takes on an otherwise idle machine (the
    // benchmark machine is shared; its load inflates the wall time)
    const cores = os.cpus().length;
    const scale = 28 / layers;
    for (const [name, s, c] of passTimes)
      console.log(
        `  ${name.padEnd(12)} wall ${s.toFixed(1)} s, cpu ${c.toFixed(1)} s (${(c / cores).toFixed(1)} s on ${cores} idle cores)` +
          (layers < 28 ? `; ×28/${layers}: wall ${((s * scale) / 60).toFixed(1)} min, idle ${((c * scale) / cores / 60).toFixed(1)} min` : ''),
      );
    console.log(`load average during the run: ${os.loadavg().map((l) => l.toFixed(1)).join(' / ')} (1 / 5 / 15 min)`);
    console.log('gptq time by linear (time since the previous one: capture run + Hessian when it starts a step, solve, error report; q_proj also the previous layer\'s output run):');
    for (const [role, s] of roleTimes) console.log(`  ${role.padEnd(12)} ${s.toFixed(1)} s`);
    console.log(`peak RSS ${rssGiB()} GiB`);
  } finally {
    if (!keep) fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
