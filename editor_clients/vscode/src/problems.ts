/**
 * Saying that something is wrong once, and retrying quietly. Plain module (no `vscode` import);
 * clocks and randomness are injected so that tests drive them.
 */

/** "unauthorized": the backend refuses the token, kept apart from "backend" (not answering): the
 * remedy differs (Set Token, not waiting). */
export type ProblemKind = "notFound" | "crashed" | "unauthorized" | "backend";

export interface Problem {
  kind: ProblemKind;
  message: string;
}

/** Problems currently in effect. `raise` says whether to notify: only when the problem is new
 * and was not notified within `cooldownMs` (a flapping backend must not become a flood). */
export class Problems {
  private readonly active = new Map<ProblemKind, string>();
  private readonly notifiedAt = new Map<ProblemKind, number>();

  constructor(
    private readonly now: () => number = Date.now,
    private readonly cooldownMs = 10 * 60 * 1000,
  ) {}

  raise(kind: ProblemKind, message: string): boolean {
    const wasActive = this.active.has(kind);
    this.active.set(kind, message);
    if (wasActive) {
      return false;
    }
    const last = this.notifiedAt.get(kind);
    const t = this.now();
    if (last !== undefined && t - last < this.cooldownMs) {
      return false;
    }
    this.notifiedAt.set(kind, t);
    return true;
  }

  /** The problem is over; true when it was in effect. */
  clear(kind: ProblemKind): boolean {
    return this.active.delete(kind);
  }

  has(kind: ProblemKind): boolean {
    return this.active.has(kind);
  }

  /** The one to show in the status bar: the server's own trouble before the backend's. */
  current(): Problem | undefined {
    for (const kind of ["notFound", "crashed", "unauthorized", "backend"] as const) {
      const message = this.active.get(kind);
      if (message !== undefined) {
        return { kind, message };
      }
    }
    return undefined;
  }
}

/** Exponential backoff with jitter for restarting the language server. */
export class Backoff {
  private attempt = 0;

  constructor(
    private readonly initialMs = 1000,
    private readonly maxMs = 5 * 60 * 1000,
    private readonly random: () => number = Math.random,
  ) {}

  /** The wait before the next attempt: initial × 2^n, capped, then 50–100 % of it. */
  next(): number {
    const base = Math.min(this.maxMs, this.initialMs * 2 ** this.attempt);
    this.attempt += 1;
    return Math.round(base * (0.5 + 0.5 * this.random()));
  }

  get attempts(): number {
    return this.attempt;
  }

  reset(): void {
    this.attempt = 0;
  }
}
