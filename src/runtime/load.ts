/**
 * Opens whatever the user points the runner at: a HuggingFace model directory (fp32 reference), a
 * HAR (quantized emulation, compiled in memory) or a HEF (the compiled executable). The kind is told
 * by content (HEF magic, tar magic), not by extension.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadHfModel } from '../../formats/hf.js';
import { loadModelHar } from '../../formats/har-model.js';
import { HEF_MAGIC } from '../../formats/hef.js';
import { readExecutable } from '../compiler/hef-io.js';
import { compile, type Executable } from '../compiler/compile.js';
import type { Model } from '../ir/model.js';
import { FormatError, UsageError } from '../errors.js';

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

/** Loads `p` as an executable; a model directory or HAR is compiled in memory with `prefillLen`. */
export async function loadArtifact(p: string, opts: { prefillLen: number; maxContext?: number }): Promise<LoadedArtifact> {
  const kind = artifactKind(p);
  if (kind === 'hef') return { kind, exe: readExecutable(p) };
  const model = kind === 'har' ? (await loadModelHar(p)).model : loadHfModel(p);
  const exe = compile(model, { prefillLen: opts.prefillLen, maxContext: opts.maxContext, modelName: path.basename(p) });
  return { kind, exe, model };
}
