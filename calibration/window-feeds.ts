/** The feeds of one calibration window on a capture graph (src/compiler/io-contract.ts names). */
import * as ort from 'onnxruntime-node';
import type { ModelConfig } from '../src/ir/model.js';
import { INPUT_IDS, kvCacheDims, kvNames } from '../src/compiler/io-contract.js';

/**
 * Feeds of a capture graph for one calibration window run from position 0: `input_ids` int64
 * [1, S] and every layer's past K/V as empty float32 [1, 0, numKvHeads, headDim].
 */
export function windowFeeds(cfg: ModelConfig, window: readonly number[]): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = { [INPUT_IDS]: new ort.Tensor('int64', BigInt64Array.from(window.map(BigInt)), [1, window.length]) };
  for (let i = 0; i < cfg.numLayers; i++) {
    const n = kvNames(i);
    feeds[n.pastKey] = new ort.Tensor('float32', new Float32Array(0), kvCacheDims(cfg.numKvHeads, cfg.headDim, 0));
    feeds[n.pastValue] = new ort.Tensor('float32', new Float32Array(0), kvCacheDims(cfg.numKvHeads, cfg.headDim, 0));
  }
  return feeds;
}
