/**
 * The request queue: at most `parallel` generations run at once (the session's slots), at most
 * `maxQueue` more wait in arrival order; past that a request is refused at once with 429 and a
 * Retry-After estimate (Ollama answers 503 past OLLAMA_MAX_QUEUE; 429 is what OpenAI clients
 * retry on). A waiting request whose client goes away leaves the queue.
 */
import { ClientGoneError, QueueFullError } from './errors.js';

/** Gives the place back; calling it more than once does nothing. */
export type Release = () => void;

interface Waiter {
  resolve: (r: Release) => void;
  reject: (e: Error) => void;
  signal?: AbortSignal;
  onAbort?: () => void;
}

export class RequestQueue {
  private active = 0;
  private readonly waiters: Waiter[] = [];
  /** smoothed seconds a place is held (for Retry-After), until the first measurement a guess */
  private holdSeconds = 1;

  /**
   * @param parallel generations at once (≥ 1)
   * @param maxQueue requests waiting beyond those (≥ 0)
   */
  constructor(
    readonly parallel: number,
    readonly maxQueue: number,
  ) {
    if (!Number.isInteger(parallel) || parallel < 1) throw new RangeError(`parallel must be an integer ≥ 1, got ${parallel}`);
    if (!Number.isInteger(maxQueue) || maxQueue < 0) throw new RangeError(`maxQueue must be an integer ≥ 0, got ${maxQueue}`);
  }

  /** Generations running now. */
  get running(): number {
    return this.active;
  }

  /** Requests waiting now. */
  get waiting(): number {
    return this.waiters.length;
  }

  /**
   * A place to generate: at once when one is free, else after the requests ahead of it.
   * @throws QueueFullError (429) when `maxQueue` requests are already waiting; ClientGoneError when
   *   `signal` fires while waiting (or has fired)
   */
  acquire(signal?: AbortSignal): Promise<Release> {
    if (signal?.aborted) return Promise.reject(new ClientGoneError());
    if (this.active < this.parallel && this.waiters.length === 0) {
      this.active++;
      return Promise.resolve(this.releaser());
    }
    if (this.waiters.length >= this.maxQueue) return Promise.reject(new QueueFullError(this.retryAfterSeconds(), this.active, this.waiters.length));
    return new Promise<Release>((resolve, reject) => {
      const w: Waiter = { resolve, reject, signal };
      if (signal) {
        w.onAbort = () => {
          const i = this.waiters.indexOf(w);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(new ClientGoneError());
        };
        signal.addEventListener('abort', w.onAbort, { once: true });
      }
      this.waiters.push(w);
    });
  }

  /** Seconds until a place is likely free for one more waiter (1-60). */
  retryAfterSeconds(): number {
    const ahead = this.waiters.length + 1;
    return Math.min(60, Math.max(1, Math.ceil((this.holdSeconds * ahead) / this.parallel)));
  }

  private releaser(): Release {
    const t0 = performance.now();
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const s = (performance.now() - t0) / 1000;
      this.holdSeconds = 0.8 * this.holdSeconds + 0.2 * s;
      this.active--;
      this.next();
    };
  }

  private next(): void {
    while (this.active < this.parallel && this.waiters.length > 0) {
      const w = this.waiters.shift()!;
      if (w.signal && w.onAbort) w.signal.removeEventListener('abort', w.onAbort);
      this.active++;
      w.resolve(this.releaser());
    }
  }
}
