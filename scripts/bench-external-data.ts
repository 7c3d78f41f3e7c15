/**
 * onnxruntime sessions with the weights as external data (CheckedSession's path for graphs of
 * 1 GiB and more) against the same weights inline in the ModelProto (possible below 2 GB), on one
 * HEF in one process: load time, TTFT and decode tokens/s, alternating A/B so machine noise hits
 * both alike. Peak RSS cannot be separated inside one process: compare `edgellm bench` runs.
 *
 *   npx vite-node scripts/bench-external-data.ts -- model.hef [--pairs 2] [--runs 3]
 */
import { readExecutable } from '../formats/hef-executable.js';
import { SimulatorBackend } from '../src/runtime/simulator.js';
import { benchmark, median, DEFAULT_BENCH } from '../src/eval/bench.js';

const argv = process.argv.slice(2).filter((a) => a !== '--');
const num = (f: string, d: number) => (argv.includes(f) ? Number(argv[argv.indexOf(f) + 1]) : d);
const file = argv.find((a) => !a.startsWith('--') && !/^\d+$/.test(a));
if (!file) throw new Error('usage: bench-external-data.ts MODEL.hef [--pairs 2] [--runs 3]');
const exe = readExecutable(file);
const rows: Record<string, { load: number[]; ttft: number[]; tps: number[] }> = { external: { load: [], ttft: [], tps: [] }, inline: { load: [], ttft: [], tps: [] } };
for (let p = 0; p < num('--pairs', 2); p++)
  for (const mode of ['external', 'inline'] as const) {
    const t0 = performance.now();
    const b = await SimulatorBackend.load(exe, { externalDataBytes: mode === 'external' ? 1 : Infinity });
    rows[mode].load.push(performance.now() - t0);
    const r = await benchmark(b, { ...DEFAULT_BENCH, runs: num('--runs', 3) });
    rows[mode].ttft.push(r.ttftMs);
    rows[mode].tps.push(r.decodeTokensPerSecond);
    await b.dispose();
    console.log(`${mode} pair ${p}: load ${(rows[mode].load.at(-1)! / 1000).toFixed(1)} s, TTFT ${r.ttftMs.toFixed(0)} ms, decode ${r.decodeTokensPerSecond.toFixed(2)} tokens/s`);
  }
const m = (mode: string, k: 'load' | 'ttft' | 'tps') => median(rows[mode][k]);
console.log(
  `medians: external load ${(m('external', 'load') / 1000).toFixed(1)} s / inline ${(m('inline', 'load') / 1000).toFixed(1)} s; ` +
    `TTFT ratio ${(m('external', 'ttft') / m('inline', 'ttft')).toFixed(3)}; decode ratio ${(m('external', 'tps') / m('inline', 'tps')).toFixed(3)} (external / inline)`,
);
