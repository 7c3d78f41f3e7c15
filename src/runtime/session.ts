/**
 * A checked wrapper over an onnxruntime-node InferenceSession: feeds are validated against
 * `session.inputNames` and every missing or unexpected name is reported at once.
 */
import * as ort from 'onnxruntime-node';
import { EdgeLLMError } from '../errors.js';

export interface SessionOptions {
  /** intra-op threads (default: ORT's choice, i.e. all cores) */
  threads?: number;
}

export class CheckedSession {
  private constructor(
    private readonly session: ort.InferenceSession,
    readonly label: string,
  ) {}

  /** Creates a session from ModelProto bytes (with initializers attached). */
  static async create(modelBytes: Uint8Array, label: string, opts: SessionOptions = {}): Promise<CheckedSession> {
    try {
      const s = await ort.InferenceSession.create(modelBytes, {
        graphOptimizationLevel: 'all',
        intraOpNumThreads: opts.threads ?? 0,
        executionMode: 'sequential',
        logSeverityLevel: 3,
      });
      return new CheckedSession(s, label);
    } catch (e) {
      throw new EdgeLLMError(`${label}: onnxruntime could not load the graph: ${(e as Error).message.split('\n')[0]}`, { cause: e });
    }
  }

  get inputNames(): readonly string[] {
    return this.session.inputNames;
  }
  get outputNames(): readonly string[] {
    return this.session.outputNames;
  }

  /**
   * Runs with feeds checked against the graph's inputs.
   * @throws EdgeLLMError naming every missing and unexpected feed
   */
  async run(feeds: Record<string, ort.Tensor>, fetches?: string[]): Promise<Record<string, ort.Tensor>> {
    const missing = this.session.inputNames.filter((n) => !(n in feeds));
    const extra = Object.keys(feeds).filter((n) => !this.session.inputNames.includes(n));
    if (missing.length || extra.length)
      throw new EdgeLLMError(
        `${this.label}: ${missing.length ? `missing inputs: ${missing.join(', ')}` : ''}${missing.length && extra.length ? '; ' : ''}${extra.length ? `unexpected inputs: ${extra.join(', ')}` : ''}`,
      );
    return fetches ? this.session.run(feeds, fetches) : this.session.run(feeds);
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
