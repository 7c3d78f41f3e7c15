/**
 * A HuggingFace checkpoint's weights: one `model.safetensors`, or shards listed by
 * `model.safetensors.index.json`, read lazily through formats/safetensors.ts's SafetensorsFile.
 *
 *     const ckpt = SafetensorsCheckpoint.open('models/qwen2-0.5b');   // model.safetensors or a sharded index
 *     const w = ckpt.read('model.layers.0.self_attn.q_proj.weight');   // Tensor, W: [out, in]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FormatError } from '../src/core/errors.js';
import type { Tensor } from '../src/ir/tensor.js';
import { SafetensorsFile, describe, isPlainObject, type SafetensorsEntry } from './safetensors.js';

const INDEX_FILE = 'model.safetensors.index.json';
const SINGLE_FILE = 'model.safetensors';

function readJsonObject(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new FormatError(file, `cannot read: ${(e as Error).message}`, { cause: e });
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new FormatError(file, `not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  if (!isPlainObject(v)) throw new FormatError(file, `must be a JSON object, got ${describe(v)}`);
  return v;
}

/**
 * A checkpoint: one .safetensors file, or shards listed by `model.safetensors.index.json`
 * (`{"weight_map": {tensorName: shardFileName}}`, shard names relative to the index's directory).
 */
export class SafetensorsCheckpoint {
  private constructor(
    private readonly files: SafetensorsFile[],
    /** tensor name -> the file holding it, in index (or data) order */
    private readonly where: Map<string, SafetensorsFile>,
    private readonly label: string,
  ) {}

  /**
   * Opens a checkpoint and validates every header it uses (no tensor data is read).
   * @param dirOrFile a directory (uses model.safetensors.index.json if present, else model.safetensors),
   *   an index .json file, or a single .safetensors file
   * @throws FormatError when nothing is found, the index is not JSON or has no weight_map object of
   *   strings, a shard is missing, a tensor listed in the index is absent from its shard, or any
   *   header is malformed (see {@link SafetensorsFile.open})
   */
  static open(dirOrFile: string): SafetensorsCheckpoint {
    let file = dirOrFile;
    if (fs.existsSync(dirOrFile) && fs.statSync(dirOrFile).isDirectory()) {
      const index = path.join(dirOrFile, INDEX_FILE);
      const single = path.join(dirOrFile, SINGLE_FILE);
      if (fs.existsSync(index)) file = index;
      else if (fs.existsSync(single)) file = single;
      else throw new FormatError(dirOrFile, `no ${INDEX_FILE} or ${SINGLE_FILE} in this directory`);
    } else if (!fs.existsSync(dirOrFile)) {
      throw new FormatError(dirOrFile, 'does not exist');
    }
    if (file.endsWith('.json')) return SafetensorsCheckpoint.openIndex(file);
    const f = SafetensorsFile.open(file);
    return new SafetensorsCheckpoint([f], new Map([...f.entries.keys()].map((n) => [n, f])), file);
  }

  private static openIndex(indexFile: string): SafetensorsCheckpoint {
    const index = readJsonObject(indexFile);
    const map = index.weight_map;
    if (!isPlainObject(map)) throw new FormatError(indexFile, `"weight_map" must be an object {tensor name: shard file}, got ${describe(map)}`);
    const byShard = new Map<string, string[]>();
    for (const [name, shard] of Object.entries(map)) {
      if (typeof shard !== 'string' || shard === '')
        throw new FormatError(indexFile, `weight_map['${name}'] must be a shard file name, got ${describe(shard)}`);
      byShard.set(shard, [...(byShard.get(shard) ?? []), name]);
    }
    const files: SafetensorsFile[] = [];
    const opened = new Map<string, SafetensorsFile>();
    try {
      for (const [shard, names] of byShard) {
        const shardPath = path.join(path.dirname(indexFile), shard);
        if (!fs.existsSync(shardPath))
          throw new FormatError(indexFile, `shard '${shard}' (listed for ${names.length} tensors, e.g. '${names[0]}') does not exist at ${shardPath}`);
        const f = SafetensorsFile.open(shardPath);
        files.push(f);
        opened.set(shard, f);
        for (const name of names)
          if (!f.entries.has(name))
            throw new FormatError(shardPath, `tensor '${name}' is listed in ${indexFile} but not present in this shard`);
      }
    } catch (e) {
      for (const f of files) f.close();
      throw e;
    }
    const where = new Map(Object.entries(map).map(([name, shard]) => [name, opened.get(shard as string)!]));
    return new SafetensorsCheckpoint(files, where, indexFile);
  }

  /** Tensor names, in index order (sharded) or data order (single file). */
  names(): string[] {
    return [...this.where.keys()];
  }

  /** @throws FormatError if the checkpoint has no tensor `name` */
  entry(name: string): SafetensorsEntry {
    const f = this.where.get(name);
    if (!f) throw new FormatError(this.label, `no tensor '${name}' in this checkpoint (${this.where.size} tensors)`);
    return f.entries.get(name)!;
  }

  /** Reads one tensor from its shard (see {@link SafetensorsFile.read}). @throws FormatError */
  read(name: string): Tensor {
    this.entry(name); // throws FormatError when missing
    return this.where.get(name)!.read(name);
  }

  /** Closes all shard files (later reads reopen them). */
  close(): void {
    for (const f of this.files) f.close();
  }
}
