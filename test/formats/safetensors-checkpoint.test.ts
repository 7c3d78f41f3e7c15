/** formats/safetensors-checkpoint.ts: sharded checkpoints (model.safetensors.index.json) read as one, and their errors. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FormatError } from '../../src/core/errors.js';
import type { Tensor } from '../../src/ir/tensor.js';
import { randomTensor, expectSameTensor, expectFormatError, suiteSubdirs } from '../helpers/safetensors.js';
import { SafetensorsCheckpoint } from '../../formats/safetensors-checkpoint.js';
import { writeSafetensors } from '../../formats/safetensors-writer.js';

const subdir = suiteSubdirs('edgellm-safetensors-ckpt-');

describe('sharded checkpoint', () => {
  function writeSharded(d: string): Map<string, Tensor> {
    const all = new Map<string, Tensor>([
      ['model.embed_tokens.weight', randomTensor('BF16', [10, 4], 21)],
      ['model.layers.0.mlp.up_proj.weight', randomTensor('F32', [6, 4], 22)],
      ['model.norm.weight', randomTensor('F16', [4], 23)],
    ]);
    const names = [...all.keys()];
    writeSafetensors(path.join(d, 'model-00001-of-00002.safetensors'), names.slice(0, 2).map((n) => [n, all.get(n)!]), { format: 'pt' });
    writeSafetensors(path.join(d, 'model-00002-of-00002.safetensors'), [[names[2], all.get(names[2])!]], { format: 'pt' });
    const weightMap = { [names[2]]: 'model-00002-of-00002.safetensors', [names[0]]: 'model-00001-of-00002.safetensors', [names[1]]: 'model-00001-of-00002.safetensors' };
    fs.writeFileSync(path.join(d, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 1 }, weight_map: weightMap }));
    return all;
  }

  it('reads 2 shards + index back, through the directory or the index file', () => {
    const d = subdir('sharded');
    const all = writeSharded(d);
    for (const target of [d, path.join(d, 'model.safetensors.index.json')]) {
      const ckpt = SafetensorsCheckpoint.open(target);
      try {
        expect(ckpt.names()).toEqual(['model.norm.weight', 'model.embed_tokens.weight', 'model.layers.0.mlp.up_proj.weight']);
        expect(ckpt.entry('model.norm.weight').file).toBe(path.join(d, 'model-00002-of-00002.safetensors'));
        expect(ckpt.entry('model.embed_tokens.weight').file).toBe(path.join(d, 'model-00001-of-00002.safetensors'));
        for (const [name, t] of all) expectSameTensor(ckpt.read(name), t);
        expectFormatError(() => ckpt.read('lm_head.weight'), 'model.safetensors.index.json', /no tensor 'lm_head.weight'/);
      } finally {
        ckpt.close();
      }
    }
  });

  it('prefers the index over model.safetensors in a directory, and opens a single file too', () => {
    const d = subdir('both');
    writeSharded(d);
    writeSafetensors(path.join(d, 'model.safetensors'), [['other', randomTensor('F32', [1], 1)]]);
    const viaDir = SafetensorsCheckpoint.open(d);
    expect(viaDir.names()).toHaveLength(3);
    viaDir.close();
    const single = SafetensorsCheckpoint.open(path.join(d, 'model.safetensors'));
    expect(single.names()).toEqual(['other']);
    single.close();
  });

  it('index not JSON -> FormatError naming the index', () => {
    const d = subdir('bad-index');
    writeSharded(d);
    const index = path.join(d, 'model.safetensors.index.json');
    fs.writeFileSync(index, '{"weight_map": ');
    expectFormatError(() => SafetensorsCheckpoint.open(d), index, /not valid JSON/);
    fs.writeFileSync(index, '{"weight_map": [1]}');
    expectFormatError(() => SafetensorsCheckpoint.open(d), index, /weight_map/);
  });

  it('missing shard -> FormatError naming the index and the shard', () => {
    const d = subdir('missing-shard');
    writeSharded(d);
    fs.rmSync(path.join(d, 'model-00002-of-00002.safetensors'));
    expectFormatError(() => SafetensorsCheckpoint.open(d), 'model.safetensors.index.json', /model-00002-of-00002\.safetensors/, /does not exist/, /model\.norm\.weight/);
  });

  it('tensor listed in the index but absent from its shard -> FormatError naming the shard and tensor', () => {
    const d = subdir('absent-tensor');
    writeSharded(d);
    const index = path.join(d, 'model.safetensors.index.json');
    const j = JSON.parse(fs.readFileSync(index, 'utf8'));
    j.weight_map['lm_head.weight'] = 'model-00002-of-00002.safetensors';
    fs.writeFileSync(index, JSON.stringify(j));
    expectFormatError(() => SafetensorsCheckpoint.open(d), path.join(d, 'model-00002-of-00002.safetensors'), /'lm_head.weight'/, /not present/);
  });

  it('a directory with neither file, or a missing path -> FormatError', () => {
    const d = subdir('empty-dir');
    expectFormatError(() => SafetensorsCheckpoint.open(d), d, /model\.safetensors/);
    expectFormatError(() => SafetensorsCheckpoint.open(path.join(d, 'nope.safetensors')), 'nope.safetensors', /does not exist/);
  });
});
