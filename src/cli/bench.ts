/** edgellm bench (see `edgellm bench --help`). */
import type { Command } from 'commander';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { cliContext } from './progress.js';
import { loadArtifact } from './load-artifact.js';
import { SimulatorBackend } from '../runtime/simulator.js';
import { benchmark, DEFAULT_BENCH } from '../eval/bench.js';
import { VERSION } from '../core/version.js';
import { int, outputPathCheck, addLoadFlags, loadFlags } from './common.js';
import type { Executable } from '../ir/executable.js';
import { schemeWidth } from '../ir/quant-scheme.js';
import { writeFileAtomicSync } from '../core/atomic.js';
import { defaultThreads } from '../engine/session.js';

const MiB = 1024 * 1024;

/** Total size of a file, or of the files directly in a directory (a model directory). */
function sizeOf(p: string): number {
  const st = fs.statSync(p);
  if (!st.isDirectory()) return st.size;
  return fs.readdirSync(p).reduce((n, f) => n + (fs.statSync(`${p}/${f}`).isFile() ? fs.statSync(`${p}/${f}`).size : 0), 0);
}

/** `edgellm bench`: TTFT, decode tokens/s, peak RSS, file size. */
export function registerBench(program: Command): void {
  addLoadFlags(program.command('bench'))
    .description('runtime benchmark on the simulator backend: TTFT for a 96-token prompt, decode tokens/s over 128 tokens, peak RSS, file size (medians over --runs)')
    .argument('<model>', 'model.hef (or a HAR / model directory, compiled in memory)')
    .option('--runs <n>', 'measured repetitions', int('--runs'), DEFAULT_BENCH.runs)
    .option('--warmup <n>', 'unmeasured repetitions first', int('--warmup'), DEFAULT_BENCH.warmup)
    .option('--prompt-tokens <n>', 'prompt length for TTFT', int('--prompt-tokens'), DEFAULT_BENCH.promptTokens)
    .option('--decode-tokens <n>', 'tokens decoded after the first', int('--decode-tokens'), DEFAULT_BENCH.decodeTokens)
    .option('--threads <n>', 'onnxruntime intra-op threads (default: one per CPU this process may use)', int('--threads'))
    .option('--seed <n>', 'seed of the pseudo-random prompt', int('--seed'), DEFAULT_BENCH.seed)
    .option('--prefill-len <n>', 'prefill chunk length when compiling a directory or HAR in memory', int('--prefill-len'), 128)
    .option('--context-depth <n>', 'tokens already in the KV cache before the prompt (llama-bench -d): decode measured at that depth', int('--context-depth'), 0)
    .option('--adapter <name>', 'run with this LoRA adapter of the HEF/HAR selected (default: the base model)')
    .option('--json [file]', 'write the figures as JSON to file (table still on stdout), or print JSON on stdout with no file')
    .action(async (file: string, o) => {
      const ctx = cliContext(program.opts());
      if (typeof o.json === 'string') outputPathCheck(o.json);
      const t0 = performance.now();
      const load = loadFlags(o);
      const { exe, kind } = await loadArtifact(file, { prefillLen: o.prefillLen, mmap: load.mmap, verify: load.verify });
      const t1 = performance.now();
      const backend = await SimulatorBackend.load(exe, { threads: o.threads, precision: load.precision, resident: load.mlock });
      try {
        backend.selectAdapter(o.adapter ?? null);
      } catch (e) {
        await backend.dispose();
        throw e;
      }
      const loadMs = performance.now() - t0;
      const readMs = t1 - t0;
      const rssAfterLoad = process.memoryUsage().rss;
      let r;
      try {
        r = await benchmark(
          backend,
          { runs: o.runs, warmup: o.warmup, promptTokens: o.promptTokens, decodeTokens: o.decodeTokens, seed: o.seed, bosTokenId: exe.config.bosTokenId, contextDepth: o.contextDepth },
          ctx.progress('bench', o.warmup + o.runs),
        );
      } finally {
        await backend.dispose();
      }
      const result = {
        edgellmVersion: VERSION,
        model: file,
        kind,
        fileBytes: sizeOf(file),
        backend: backend.name,
        threads: o.threads ?? defaultThreads(),
        cpus: os.cpus().length,
        cpuModel: os.cpus()[0]?.model ?? '',
        prefillLen: backend.prefillLen,
        maxContext: backend.maxContext,
        kvDtype: exe.kvLayout.dtype,
        quant: exe.quant,
        adapter: o.adapter ?? null,
        adapters: backend.adapters.length,
        ...load,
        loadMs,
        /**
         * reading the artifact (sha256 of every section read into memory; compiling a HAR or directory), ms;
         * a HEF's mapped weights are verified during session creation, while they are copied to RAM
         */
        readMs,
        /** building the backend session(s): ORT graph optimisation, weight prepacking, ms */
        sessionMs: loadMs - readMs,
        /** bytes of weights one decode step reads: every linear's weights (the embedding: one row) */
        weightBytesPerToken: weightBytesPerToken(exe),
        ...r,
        /** process peak resident set (getrusage ru_maxrss), bytes: loading included */
        peakRssBytes: process.resourceUsage().maxRSS * 1024,
        rssAfterLoadBytes: rssAfterLoad,
      };
      if (typeof o.json === 'string') writeFileAtomicSync(o.json, JSON.stringify(result, null, 2) + '\n');
      if (o.json === true) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
      else
        process.stdout.write(
          [
            `model      ${file} (${kind}, ${(result.fileBytes / MiB).toFixed(2)} MiB; ${exe.quant.weightBits < 16 ? `W${exe.quant.weightBits}` : "float weights"} ${schemeWidth(exe.quant.activationScheme) ? `A${schemeWidth(exe.quant.activationScheme)} ` : ''}KV ${exe.kvLayout.dtype})`,
            ...(backend.adapters.length ? [`adapter    ${o.adapter ?? 'none (base model)'} (${backend.adapters.length} in the executable: LoRA branches in the graphs)`] : []),
            `backend    ${backend.name}, ${result.threads} threads of ${result.cpus} cpus, prefill chunk ${result.prefillLen}, context ${result.maxContext}`,
            `load       ${loadMs.toFixed(0)} ms  (read ${readMs.toFixed(0)} ms, sessions ${(loadMs - readMs).toFixed(0)} ms${kind !== 'hef' ? '' : load.verify ? ', weights verified meanwhile' : ', weights not verified'})`,
            `TTFT       ${r.ttftMs.toFixed(1)} ms  (${r.promptTokens} prompt tokens${r.contextDepth ? ` after ${r.contextDepth} of context` : ''}; median of ${r.runs.length}, range ${r.ttftMsRange.map((x) => x.toFixed(1)).join('-')})`,
            `decode     ${r.decodeTokensPerSecond.toFixed(2)} tokens/s  (${r.decodeMsPerToken.toFixed(2)} ms/token over ${r.decodeTokens} tokens; range ${r.decodeTokensPerSecondRange.map((x) => x.toFixed(2)).join('-')}; ${(result.weightBytesPerToken / MiB).toFixed(1)} MiB of weights per token)`,
            `peak RSS   ${(result.peakRssBytes / MiB).toFixed(1)} MiB  (after load ${(rssAfterLoad / MiB).toFixed(1)} MiB)`,
          ].join('\n') + '\n',
        );
    });
}

/**
 * Bytes of weights a decode step reads: every initializer of the executable (mapped or in memory)
 * but a float embedding table, of which one row is read (a shared 4-bit table is read whole by lm_head).
 */
function weightBytesPerToken(exe: Executable): number {
  let n = 0;
  const add = (name: string, bytes: number, shape: number[]) => (n += name === 'model.embed_tokens.weight' ? bytes / (shape[0] || 1) : bytes);
  for (const [name, t] of exe.weights) add(name, t.data.byteLength, t.shape);
  for (const [name, t] of exe.mappedWeights?.tensors ?? []) add(name, t.byteLength, t.shape);
  return n;
}
