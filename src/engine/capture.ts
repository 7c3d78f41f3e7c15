/**
 * The one capture loop over calibration windows: a session is run once per window, in order, with
 * that window's feeds, and the fetched outputs are handed to a callback (observers, Hessian
 * accumulators, per-channel ranges, the next GPTQ layer's inputs). Every calibration run of the
 * passes (calibrate-ranges, k-centering, the LoRA Hessians and A8 ranges, GPTQ's layer by layer
 * driver) goes through it, so session lifetime, progress and error handling are written once.
 */
import type * as ort from 'onnxruntime-node';
import type onnxProto from 'onnx-proto';
import type { RunContext } from '../core/context.js';
import { CheckedSession } from './session.js';

export interface CaptureRun {
  /** the graph (a ModelProto with its initializers) and a label for errors */
  graph: Uint8Array | onnxProto.onnx.IModelProto;
  label: string;
  /** number of windows */
  count: number;
  /** feeds of window w (0 ≤ w < count), given the session's input names */
  feeds: (w: number, inputNames: readonly string[]) => Record<string, ort.Tensor>;
  /** output names fetched on every window */
  fetches: readonly string[];
  /** progress label; no progress report when absent */
  progress?: string;
}

/**
 * Creates a session for `run.graph`, runs it on every window and calls `each(w, outputs)` in window
 * order; the session is released afterwards, also on error.
 * @throws FormatError / EdgeLLMError from the session (a graph ORT rejects, a failed run naming the label)
 */
export async function captureWindows(
  run: CaptureRun,
  ctx: RunContext,
  each: (w: number, outputs: Record<string, ort.Tensor>) => Promise<void> | void,
): Promise<void> {
  const session = await CheckedSession.create(run.graph, run.label);
  const bar = run.progress ? ctx.progress(run.progress, run.count) : undefined;
  try {
    for (let w = 0; w < run.count; w++) {
      const res = await session.run(run.feeds(w, session.inputNames), [...run.fetches]);
      await each(w, res);
      bar?.tick();
    }
  } finally {
    bar?.done();
    await session.release();
  }
}
