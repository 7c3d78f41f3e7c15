/**
 * Opens a model for generation (run, chat, serve): the artifact (HEF, HAR or model directory) on the
 * simulator backend, its tokenizer, and a ModelSession with the model's end-of-sequence ids and an
 * optional chat template override.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadArtifact, type ArtifactKind } from './load-artifact.js';
import { SimulatorBackend } from '../runtime/simulator.js';
import { ModelSession, type SessionOptions } from '../runtime/session.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { ChatTemplate } from '../../formats/chat-template.js';
import { artifactSha256 } from '../core/digest.js';
import { UsageError } from '../core/errors.js';
import type { Executable } from '../ir/executable.js';

export interface OpenOptions {
  /** prefill chunk length when a model directory or HAR is compiled in memory */
  prefillLen: number;
  /** --adapter: the adapter contexts use by default */
  adapter?: string;
  /** --chat-template: a file holding a jinja chat template */
  chatTemplateFile?: string;
  slots?: number;
  /** memory-map a HEF's weights (default true) */
  mmap?: boolean;
  /** map a RAM-backed copy of them rather than the file (default true; src/engine/session.ts SessionOptions.resident) */
  mlock?: boolean;
  /** check the mapped weights' sha256 at load (default true; false: --no-verify) */
  verify?: boolean;
  /** how 4-bit linears compute (default exact) */
  precision?: 'exact' | 'fast';
  maxContexts?: number;
  contextsDir?: string;
}

export interface OpenedModel {
  session: ModelSession;
  exe: Executable;
  kind: ArtifactKind;
  /** the file's base name, e.g. "model.hef" */
  name: string;
  /** ms from the call to a ready session */
  loadMs: number;
}

/**
 * @throws UsageError for an unreadable --chat-template file; the errors of loadArtifact and
 *   SimulatorBackend.load; EdgeLLMError for an unknown --adapter
 */
export async function openSession(file: string, o: OpenOptions): Promise<OpenedModel> {
  const t0 = performance.now();
  let chatTemplate: ChatTemplate | undefined;
  if (o.chatTemplateFile !== undefined) {
    let src: string;
    try {
      src = fs.readFileSync(o.chatTemplateFile, 'utf8');
    } catch (e) {
      throw new UsageError(`${o.chatTemplateFile}: cannot read the chat template (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    chatTemplate = new ChatTemplate(src, o.chatTemplateFile);
  }
  const { exe, kind } = await loadArtifact(file, { prefillLen: o.prefillLen, mmap: o.mmap, verify: o.verify });
  const backend = await SimulatorBackend.load(exe, { precision: o.precision, resident: o.mlock });
  if (o.adapter !== undefined) backend.selectAdapter(o.adapter);
  let digest: string | undefined;
  const opts: SessionOptions = {
    slots: o.slots,
    contexts: { maxContexts: o.maxContexts, spillDir: o.contextsDir },
    // hashed on first use (saving or loading a context), not at start: a HEF can be a gigabyte
    modelDigest: () => (digest ??= artifactSha256(file)),
    chatTemplate,
    eosTokenIds: exe.config.eosTokenIds,
  };
  const session = new ModelSession(backend, new TextTokenizer(exe.tokenizer), opts);
  return { session, exe, kind, name: path.basename(path.resolve(file)), loadMs: performance.now() - t0 };
}
