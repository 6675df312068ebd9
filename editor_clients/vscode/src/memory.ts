/**
 * The suggestions the language server returned, as far as the client needs them to report what
 * became of them. Plain module (no `vscode` import).
 *
 * Every item carries its whole text from where it begins (its range's start) to the cursor: the
 * language server answers typing into a suggestion on screen with the same suggestion, same
 * completion id, over a range from where it began. So the latest item of an id is the one to
 * measure against, and `acceptedLength` counts from its range's start; what is kept across items
 * is only what was already reported.
 */

import { ACCEPT_COMMAND } from "./protocol";

export interface Suggestion {
  readonly completionId: string;
  readonly uri: string;
  /** Where the suggestion's text starts (0-based, UTF-16 character as in LSP). */
  readonly line: number;
  readonly character: number;
  readonly text: string;
  /** UTF-16 units of `text` reported as partially accepted so far. */
  accepted: number;
  /** Some of it was accepted (under this item or an earlier one of the same id). */
  partlyAccepted: boolean;
  shownReported: boolean;
  rejected: boolean;
}

/** The completion id of an inline completion item, if it is one of ours: the argument of its
 * `flywheel.accept` command. */
export function completionIdOf(item: unknown): string | undefined {
  if (typeof item !== "object" || item === null) {
    return undefined;
  }
  const command = (item as { command?: unknown }).command;
  if (typeof command !== "object" || command === null) {
    return undefined;
  }
  const { command: id, arguments: args } = command as { command?: unknown; arguments?: unknown };
  if (id !== ACCEPT_COMMAND || !Array.isArray(args)) {
    return undefined;
  }
  const first: unknown = args[0];
  return typeof first === "string" && first.length > 0 ? first : undefined;
}

export class SuggestionMemory {
  private readonly byId = new Map<string, Suggestion>();
  private lastId: string | undefined;

  constructor(private readonly capacity = 64) {}

  /** An item returned for display: where its text starts (its range's start) and the text. */
  returned(completionId: string, uri: string, line: number, character: number, text: string): Suggestion {
    const before = this.byId.get(completionId);
    const same = before !== undefined && before.uri === uri && before.line === line && before.character === character && before.text === text;
    const s: Suggestion = {
      completionId,
      uri,
      line,
      character,
      text,
      // Counted from this item's start: a total under an item that began elsewhere does not carry over.
      accepted: same ? before.accepted : 0,
      partlyAccepted: before?.partlyAccepted ?? false,
      shownReported: before?.shownReported ?? false,
      rejected: before?.rejected ?? false,
    };
    this.byId.delete(completionId);
    this.byId.set(completionId, s);
    while (this.byId.size > this.capacity) {
      const oldest = this.byId.keys().next().value as string;
      this.byId.delete(oldest);
    }
    this.lastId = completionId;
    return s;
  }

  /** The suggestion most recently returned for display, if still remembered. */
  last(): Suggestion | undefined {
    return this.lastId === undefined ? undefined : this.byId.get(this.lastId);
  }

  get(completionId: string): Suggestion | undefined {
    return this.byId.get(completionId);
  }

  /** True the first time: didShowCompletion is sent once per suggestion. */
  markShown(completionId: string): boolean {
    const s = this.byId.get(completionId);
    if (s === undefined || s.shownReported) {
      return false;
    }
    s.shownReported = true;
    return true;
  }

  /** Record a partial acceptance of `total` units; true when it grows the total (worth sending). */
  markAccepted(completionId: string, total: number): boolean {
    const s = this.byId.get(completionId);
    if (s === undefined || !Number.isInteger(total) || total <= s.accepted) {
      return false;
    }
    s.accepted = Math.min(total, s.text.length);
    s.partlyAccepted = true;
    return true;
  }

  /** True when a rejection is worth sending: nothing of it accepted, not rejected before. */
  markRejected(completionId: string): boolean {
    const s = this.byId.get(completionId);
    if (s === undefined || s.rejected || s.partlyAccepted) {
      return false;
    }
    s.rejected = true;
    return true;
  }

  clear(): void {
    this.byId.clear();
    this.lastId = undefined;
  }
}
