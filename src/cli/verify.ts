/** edgellm verify (see `edgellm verify --help`). */
import type { Command } from 'commander';
import * as fs from 'node:fs';
import { artifactKind } from './load-artifact.js';
import { verifyHef } from '../../formats/hef.js';
import { readHar } from '../../formats/har.js';
import { UsageError } from '../core/errors.js';

/** What a full check covered. */
export interface VerifyResult {
  file: string;
  kind: 'har' | 'hef';
  /** sections (HEF) or members (HAR) checked */
  parts: number;
  /** file size, bytes */
  bytes: number;
  ms: number;
}

/**
 * Checks every byte of a HEF (header sha256, every section's sha256, padding: formats/hef.ts
 * verifyHef) or a HAR (tar structure, manifest sha256, every member's size and sha256:
 * formats/har-read.ts readHar, members hashed as they stream past, none kept).
 * @throws FormatError naming the file and the first problem; UsageError for a model directory
 */
export async function verifyArtifact(file: string): Promise<VerifyResult> {
  const kind = artifactKind(file);
  if (kind === 'model-dir') throw new UsageError(`${file}: a model directory has no checksums to verify (verify checks a HAR or HEF)`);
  const t0 = performance.now();
  let parts: number;
  if (kind === 'hef') {
    const hef = verifyHef(file);
    parts = hef.sections.size;
    hef.close();
  } else {
    const { manifest } = await readHar(file, { skip: () => true });
    parts = Object.keys(manifest.files as Record<string, unknown>).length;
  }
  return { file, kind, parts, bytes: fs.statSync(file).size, ms: performance.now() - t0 };
}

/** `edgellm verify`: a full integrity check; exit 0 when every checksum matches, else a one-line error. */
export function registerVerify(program: Command): void {
  program
    .command('verify')
    .description('check every checksum of a HEF or HAR (loading checks the header and what it reads; --no-verify skips the weights)')
    .argument('<file>', 'model.hef or model.har')
    .option('--json', 'machine-readable output')
    .action(async (file: string, o) => {
      const r = await verifyArtifact(file);
      if (o.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      else process.stdout.write(`${file}: ok (${r.kind.toUpperCase()}, ${r.parts} ${r.kind === 'hef' ? 'sections' : 'members'}, ${(r.bytes / 2 ** 20).toFixed(2)} MiB verified in ${r.ms.toFixed(0)} ms)\n`);
    });
}
