/**
 * Opens whatever the user points the runner at: a HuggingFace model directory (fp32 reference), a
 * HAR (quantized emulation, compiled in memory) or a HEF (the compiled executable). The kind is told
 * by content (HEF magic, tar magic), not by extension.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadHfModel } from '../../formats/hf.js';
import { loadPeftAdapter } from '../../formats/peft.js';
import { mergeLoraPass } from '../../passes/lora/merge.js';
import { passContext } from '../../passes/pass.js';
import { silentContext } from '../core/context.js';
import { loadModelHar, type EmulationLevel } from '../../formats/har-model.js';
import { HEF_MAGIC } from '../../formats/hef.js';
import { readExecutable } from '../../formats/hef-executable.js';
import { compile } from '../compiler/compile.js';
import { type Executable } from '../ir/executable.js';
import type { Model } from '../ir/model.js';
import { FormatError, UsageError } from '../core/errors.js';

export type ArtifactKind = 'model-dir' | 'har' | 'hef';

/**
 * Tells a model directory, HAR or HEF apart.
 * @throws UsageError when the path does not exist; FormatError when a file is neither HAR nor HEF
 */
export function artifactKind(p: string): ArtifactKind {
  if (!fs.existsSync(p)) throw new UsageError(`${p}: no such file or directory`);
  if (fs.statSync(p).isDirectory()) return 'model-dir';
  const fd = fs.openSync(p, 'r');
  try {
    const head = Buffer.alloc(512);
    const n = fs.readSync(fd, head, 0, 512, 0);
    if (n >= 8 && head.subarray(0, 8).equals(Buffer.from(HEF_MAGIC))) return 'hef';
    if (n >= 262 && head.subarray(257, 262).toString('latin1') === 'ustar') return 'har';
    if (p.endsWith('.hef')) throw new FormatError(p, 'not an edgellm HEF (bad magic)');
    if (p.endsWith('.har')) throw new FormatError(p, 'not an edgellm HAR (not a tar archive)');
    throw new FormatError(p, 'neither a HAR nor a HEF nor a model directory');
  } finally {
    fs.closeSync(fd);
  }
}

export interface LoadedArtifact {
  kind: ArtifactKind;
  /** the executable to run */
  exe: Executable;
  /** the Model, for a model directory or HAR */
  model?: Model;
}

export interface LoadOptions {
  /** prefill chunk length when a model directory or HAR is compiled in memory */
  prefillLen: number;
  maxContext?: number;
  /**
   * For a HAR, which of its models to run (the Dataflow Compiler's emulation levels): 'native' (the
   * source fp32 weights), 'optimized' (fp32 after fold-norms/QuaRot) or 'quantized' (default).
   */
  emulate?: EmulationLevel;
  /**
   * For a model directory: a PEFT LoRA adapter directory merged into the fp32 weights
   * (W + s·B·A, as the adapter's own reference figures are computed), i.e. the fp32 + adapter
   * reference that a quantized HEF + adapter is measured against (llama.cpp's `--lora`).
   */
  lora?: string;
  /** memory-map a HEF's large weights (default true; false reads them into memory, llama.cpp's --no-mmap) */
  mmap?: boolean;
  /**
   * check the sha256 of a HEF's mapped weights (default true): deferred to the backend, which hashes
   * them while it reads them anyway (formats/hef-executable.ts WeightsVerification); false skips it
   */
  verify?: boolean;
  /** called with each warning of the PEFT adapter (e.g. a different base_model_name_or_path) */
  onWarning?: (message: string) => void;
}

/**
 * Loads `p` as an executable; a model directory or HAR is compiled in memory.
 * @throws UsageError for `emulate` on something other than a HAR or a HAR without that level, or
 *   `lora` on something other than a model directory; the errors of {@link loadPeftAdapter}
 */
export async function loadArtifact(p: string, opts: LoadOptions): Promise<LoadedArtifact> {
  const kind = artifactKind(p);
  const emulate = opts.emulate ?? 'quantized';
  if (emulate !== 'quantized' && kind !== 'har') throw new UsageError(`--emulate ${emulate} needs a HAR; ${p} is a ${kind}`);
  if (opts.lora !== undefined && kind !== 'model-dir')
    throw new UsageError(`--lora applies a PEFT adapter to an fp32 model directory; ${p} is a ${kind} (add adapters to a HAR with \`edgellm add-lora\`, select them with --adapter)`);
  if (kind === 'hef') return { kind, exe: readExecutable(p, { mapWeights: opts.mmap ?? true, verify: opts.verify ?? true ? 'deferred' : 'skip' }) };
  let model: Model;
  if (kind === 'har') {
    const har = await loadModelHar(p, { emulation: emulate !== 'quantized', lazy: true });
    const m = emulate === 'quantized' ? har.model : har.emulation[emulate];
    if (!m) throw new UsageError(`${p}: the HAR holds no '${emulate}' model (quantized with --no-emulation-weights?)`);
    model = m;
  } else {
    model = loadHfModel(p);
    if (opts.lora !== undefined) {
      const peft = loadPeftAdapter(opts.lora, model.config, { baseName: path.basename(path.resolve(p)) });
      for (const w of peft.warnings) opts.onWarning?.(w);
      model = await mergeLoraPass({ peft }).run(model, passContext(silentContext, []));
    }
  }
  const exe = compile(model, { prefillLen: opts.prefillLen, maxContext: opts.maxContext, modelName: path.basename(p) });
  return { kind, exe, model };
}
