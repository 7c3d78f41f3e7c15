/** Small real artifacts for the HAR/HEF fuzzers: stories260K quantized with RTN, saved as a HAR and compiled to a HEF. */
import * as path from 'node:path';
import { loadHfModel } from '../../formats/hf.js';
import { saveModelHar } from '../../formats/har-model.js';
import { writeExecutable } from '../../formats/hef-executable.js';
import { compile } from '../../src/compiler/compile.js';
import { rtn } from '../../passes/rtn.js';
import { silentContext } from '../../src/core/context.js';
import type { Model } from '../../src/ir/model.js';
import { STORIES } from '../helpers/paths.js';

/** stories260K, RTN W4 (group 64, lm_head float): the model both artifacts hold. */
export function quantizedStories(): Model {
  return rtn(loadHfModel(STORIES), { groupSize: 64, quantizeLmHead: false }, silentContext);
}

/** Writes `<dir>/stories.har` (no emulation weights, so it stays small) and returns its path. */
export async function makeHar(dir: string, model = quantizedStories()): Promise<string> {
  const file = path.join(dir, 'stories.har');
  await saveModelHar(file, model, { modelName: 'stories260K', sourceSha256: '' });
  return file;
}

/** Writes `<dir>/stories.hef` (prefill 4 tokens, 32-token context) and returns its path. */
export function makeHef(dir: string, model = quantizedStories()): string {
  const file = path.join(dir, 'stories.hef');
  writeExecutable(file, compile(model, { prefillLen: 4, maxContext: 32, modelName: 'stories260K' }));
  return file;
}
