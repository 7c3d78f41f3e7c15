/**
 * `edgellm inspect`: what a HAR or HEF holds — format version, members/sections with sizes (bytes),
 * the quantization scheme, the per-module precision grouped by role with the bytes each choice
 * costs, and an estimate of device memory (weights + KV cache at max context).
 */
import * as fs from 'node:fs';
import { readHar } from '../../formats/har.js';
import { verifyHef } from '../../formats/hef.js';
import { executableHeader } from '../../formats/hef-executable.js';
import { checkModelManifest, checkRanges } from '../../formats/har-manifest.js';
import { decodeModel } from '../../formats/onnx.js';
import { artifactKind } from './load-artifact.js';
import { kvCacheBytes, type KvLayout } from '../ir/executable.js';
import { FormatError, UsageError } from '../core/errors.js';
import { sha256File } from '../core/digest.js';
import type { LinearQuant, ModelConfig, PassRecord, QParams, QuantReport, QuantState } from '../ir/model.js';
import { allLinears } from '../ir/architectures.js';
import { precisionGroups, precisionOf, uniformPoints, type PrecisionGroup } from '../ir/quant-scheme.js';
import type { LinearPrecision, PrecisionTable } from '../ir/precision.js';
import { DEFAULT_SETTINGS } from '../ir/recipe.js';
import { sensitivityProblem } from './sensitivity-report.js';

export interface InspectInfo {
  file: string;
  kind: 'har' | 'hef';
  formatVersion: number;
  edgellmVersion: string;
  fileBytes: number;
  /** sha256 (hex) of the file's bytes: the artifact's own content hash (equal for reproducible builds) */
  sha256: string;
  modelName: string;
  sections: { name: string; kind: string; bytes: number; offset?: number }[];
  quantScheme: Record<string, unknown>;
  config: ModelConfig;
  passes?: unknown[];
  /** per-layer quantization report (HAR only) */
  report?: QuantReport;
  /**
   * per-module precision grouped by role and precision, with bytes (weights; KV cache at max
   * context). A HEF states no observers and no method per linear: its groups show the weight method
   * of the quantization summary and no observer.
   */
  precision: PrecisionGroup[];
  kvCache?: Omit<KvLayout, 'layers'> & { layers: number };
  /** LoRA adapters (name, rank, targets, stored bytes) */
  adapters?: AdapterInfo[];
  /** estimated device memory: weights + KV cache at max context (bytes) */
  memory: { weightBytes: number; kvCacheBytes: number; totalBytes: number };
}

/** One LoRA adapter as inspect lists it. */
export interface AdapterInfo {
  name: string;
  r: number;
  alpha: number;
  /** A/B storage: 8 (int8), 4 (group-wise) or 32 (float) */
  bits: number;
  /** adapted roles (q_proj, ...) and how many linears */
  targets: string[];
  modules: number;
  /** bytes of its HAR member / HEF section */
  bytes: number;
  /** base transforms carried into it */
  transforms: string[];
  /** add-lora's refit to the W4 base (modules, windows, H-weighted base-error residual before/after), or null */
  refit: { modules: number; windows: number; residualBefore: number; residualAfter: number } | null;
}

function adapterInfos(list: unknown, sizeOf: (a: Record<string, any>) => number): AdapterInfo[] {
  return ((list ?? []) as Record<string, any>[]).map((a) => ({
    name: a.name,
    r: a.r,
    alpha: a.alpha,
    bits: a.bits,
    targets: [...new Set((a.modules ?? []).map((m: { linear: string }) => m.linear.slice(m.linear.lastIndexOf('.') + 1)))] as string[],
    modules: (a.modules ?? []).length,
    bytes: sizeOf(a),
    transforms: a.transforms ?? a.source?.transforms ?? [],
    refit: a.refit ?? a.source?.refit ?? null,
  }));
}

/** Reads and fully verifies `file`, returning what it holds. @throws FormatError, UsageError */
export async function inspectArtifact(file: string): Promise<InspectInfo> {
  const kind = artifactKind(file);
  const fileBytes = fs.statSync(file).size;
  const sha256 = sha256File(file);
  if (kind === 'hef') {
    const hef = verifyHef(file);
    const h = executableHeader(file, hef);
    let graph: Uint8Array; // the per-linear precision is read from the graph's MatMulNBits nodes
    try {
      graph = hef.readSection(h.prefill.section);
    } finally {
      hef.close();
    }
    const kv = h.kvLayout;
    const weightBytes = hef.sections.get('weights')?.length ?? 0;
    const kvBytes = kvCacheBytes(kv);
    return {
      file,
      kind,
      formatVersion: hef.version,
      edgellmVersion: h.edgellmVersion,
      fileBytes,
      sha256,
      modelName: h.modelName,
      sections: [...hef.sections.values()].map((s) => ({ name: s.name, kind: s.kind, bytes: s.length, offset: s.offset })),
      quantScheme: { ...h.quant },
      config: h.config,
      kvCache: { ...kv, layers: kv.layers.length },
      adapters: adapterInfos(h.adapters, (a) => hef.sections.get(a.section)?.length ?? 0),
      // the header's table when it states one (quantized with a recipe), else what the graph executes
      precision: precisionGroups(h.precision ?? hefPrecision(file, graph, h.config, String(h.quant.weightMethod), h.quant.activationScheme !== 'none', kv.dtype !== 'float32'), h.config, kv.maxContext, {
        observers: !!h.precision,
        sharedEmbedding: !!h.quant.embeddingShared,
      }),
      memory: { weightBytes, kvCacheBytes: kvBytes, totalBytes: weightBytes + kvBytes },
    };
  }
  if (kind !== 'har') throw new UsageError(`${file}: inspect takes a HAR or HEF file, not a directory`);
  const { manifest, files } = await readHar(file);
  checkModelManifest(file, manifest); // the fields read below have the shapes loadModelHar relies on
  const config = manifest.config as ModelConfig;
  const weightBytes = files.get('weights.safetensors')?.length ?? 0;
  const quantScheme = (manifest.quantScheme ?? {}) as Record<string, unknown>;
  const maxContext = config.maxPositionEmbeddings;
  const precision = precisionGroups(harPrecision(file, manifest, files.get('ranges.json')), config, maxContext, { sharedEmbedding: quantScheme.embeddingShared === true });
  // every layer's cache at its own width (KV8, KV16 or float), as the precision table counts it
  const kvBytes = precision.filter((g) => g.kind === 'kv').reduce((n, g) => n + g.bytes, 0);
  return {
    file,
    kind,
    formatVersion: Number(manifest.formatVersion),
    edgellmVersion: typeof manifest.edgellmVersion === 'string' ? manifest.edgellmVersion : '',
    fileBytes,
    sha256,
    modelName: typeof manifest.modelName === 'string' ? manifest.modelName : '',
    sections: [...files].map(([name, data]) => ({ name, kind: 'member', bytes: data.length })),
    quantScheme,
    config,
    passes: manifest.passes as unknown[],
    report: files.has('report.json') ? readReport(file, files.get('report.json')!) : undefined,
    adapters: adapterInfos(manifest.adapters, (a) => files.get(a.member)?.length ?? 0),
    precision,
    memory: { weightBytes, kvCacheBytes: kvBytes, totalBytes: weightBytes + kvBytes },
  };
}

/**
 * A HAR's precision table: its manifest's `precision` (quantized with a recipe), else the one its
 * `linears`, ranges.json and calibrate pass imply (src/ir/quant-scheme.ts precisionOf).
 * @throws FormatError naming the HAR when ranges.json is not JSON or has the wrong shape
 */
function harPrecision(file: string, manifest: Record<string, unknown>, rangesBytes: Uint8Array | undefined): PrecisionTable {
  const config = manifest.config as ModelConfig;
  let ranges: { activations?: Record<string, QParams>; kvCache?: unknown[] } = {};
  if (rangesBytes) {
    try {
      ranges = JSON.parse(new TextDecoder().decode(rangesBytes));
    } catch {
      throw new FormatError(file, 'member ranges.json is not valid JSON');
    }
    checkRanges(file, ranges, config.numLayers, config.numKvHeads * config.headDim);
  }
  return precisionOf({
    config,
    passes: (manifest.passes ?? []) as PassRecord[],
    precision: manifest.precision as PrecisionTable | undefined,
    quant: { linears: (manifest.linears ?? {}) as Record<string, LinearQuant>, activations: ranges.activations ?? {}, kvCache: (ranges.kvCache ?? []) as QuantState['kvCache'] },
  });
}

/**
 * A HEF's precision table, read from what executes: each linear's MatMulNBits node in the prefill
 * graph (its `bits` and `block_size`; float when it has none), with the summary's weight method;
 * activation points and KV caches 8-bit when quantized (the header has no per-point widths or observers).
 * @throws FormatError naming the HEF when the graph section is not an ONNX model
 */
function hefPrecision(file: string, graph: Uint8Array, cfg: ModelConfig, method: string, actQuant: boolean, kvQuant: boolean): PrecisionTable {
  type Node = { attribute?: { name?: string | null; i?: unknown }[] | null };
  const attr = (n: Node, name: string) => Number(n.attribute?.find((a) => a.name === name)?.i ?? 0);
  const byWeight = new Map<string, Node>();
  for (const n of decodeModel(graph, `${file}:graph.prefill`).graph?.node ?? []) if (n.opType === 'MatMulNBits' && n.input?.[1]) byWeight.set(n.input[1], n);
  const linears: Record<string, LinearPrecision> = {};
  for (const s of allLinears(cfg)) {
    const n = byWeight.get(`${s.name}.qweight`);
    linears[s.name] = n ? { bits: attr(n, 'bits') as 4 | 8, groupSize: attr(n, 'block_size'), method: method as LinearPrecision['method'] } : { bits: 32, groupSize: 0, method: 'none' };
  }
  return { linears, ...uniformPoints(cfg, () => actQuant, kvQuant, DEFAULT_SETTINGS.observer) };
}

/**
 * report.json of a HAR, `sensitivity` included when it has one (so `--json` carries it).
 * @throws FormatError naming the HAR when it is not a JSON object, or its sensitivity is malformed
 */
function readReport(file: string, bytes: Uint8Array): QuantReport {
  let r: unknown;
  try {
    r = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new FormatError(file, 'member report.json is not valid JSON');
  }
  if (r === null || typeof r !== 'object' || Array.isArray(r)) throw new FormatError(file, 'member report.json is not a JSON object');
  const problem = 'sensitivity' in r ? sensitivityProblem(r.sensitivity) : null;
  if (problem) throw new FormatError(file, `member report.json: ${problem}`);
  return r as QuantReport;
}

const kib = (b: number) => (b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(2)} MiB` : `${(b / 1024).toFixed(1)} KiB`);

/** Human-readable rendering of {@link inspectArtifact}'s result. */
export function formatInspect(i: InspectInfo): string {
  const lines = [
    `${i.file}: edgellm ${i.kind.toUpperCase()} format version ${i.formatVersion} (written by edgellm ${i.edgellmVersion}), ${kib(i.fileBytes)}`,
    `sha256: ${i.sha256}`,
    `model: ${i.modelName} (${i.config.modelType}, ${i.config.numLayers} layers, hidden ${i.config.hiddenSize}, heads ${i.config.numHeads}/${i.config.numKvHeads} kv, vocab ${i.config.vocabSize})`,
    `quantization: ${Object.entries(i.quantScheme)
      .map(([k, v]) => `${k}=${v}`)
      .join(', ')}`,
  ];
  if (i.passes) lines.push(`passes: ${(i.passes as { name: string }[]).map((p) => p.name).join(' -> ') || '(none)'}`);
  if (i.kvCache) lines.push(`KV cache: ${i.kvCache.dtype}, ${i.kvCache.numLayers} layers x ${i.kvCache.numKvHeads} kv heads x ${i.kvCache.headDim} head_dim, max context ${i.kvCache.maxContext}`);
  if (i.adapters?.length) {
    lines.push(`LoRA adapters (${i.adapters.length}):`);
    for (const a of i.adapters)
      lines.push(
        `  ${a.name.padEnd(24)} r ${a.r}, alpha ${a.alpha}, ${a.bits === 32 ? 'float' : `${a.bits}-bit`} A/B, ${a.modules} modules (${a.targets.join(', ')}), ${kib(a.bytes)}${a.transforms.length ? `, transformed by ${a.transforms.join(' + ')}` : ''}` +
          (a.refit ? `, refit to the W4 base (base-error residual −${(100 * (1 - a.refit.residualAfter / a.refit.residualBefore)).toFixed(1)}%)` : ''),
      );
  }
  lines.push(...formatPrecision(i.precision, i.kind === 'hef' ? i.kvCache?.maxContext : i.config.maxPositionEmbeddings));
  lines.push(i.kind === 'hef' ? 'sections:' : 'members:');
  for (const s of i.sections) lines.push(`  ${s.name.padEnd(32)} ${s.kind.padEnd(10)} ${kib(s.bytes).padStart(12)}${s.offset !== undefined ? `  @ ${s.offset}` : ''}`);
  lines.push(`device memory estimate: weights ${kib(i.memory.weightBytes)} + KV cache ${kib(i.memory.kvCacheBytes)} = ${kib(i.memory.totalBytes)}`);
  return lines.join('\n') + '\n';
}

/**
 * The per-module precision lines of `inspect`: one per role and precision, e.g.
 * "  down_proj ×5: W8 g32 gptq, 67.5 KiB (10.05 bits/weight)", then activation points and KV caches.
 */
export function formatPrecision(groups: PrecisionGroup[], maxContext: number | undefined): string[] {
  const lines = ['precision per module (bytes on the device):'];
  const width = Math.max(...groups.map((g) => `${g.role} ×${g.count}`.length));
  for (const g of groups) {
    const head = `  ${`${g.role} ×${g.count}:`.padEnd(width + 1)} ${g.precision}`;
    if (g.kind === 'linear') lines.push(`${head}, ${kib(g.bytes)} (${((8 * g.bytes) / g.weights!).toFixed(2)} bits/weight${g.note ? `; ${g.note}` : ''})`);
    else if (g.kind === 'kv') lines.push(`${head}, ${kib(g.bytes)} at ${maxContext} tokens`);
    else lines.push(head);
  }
  return lines;
}
