/**
 * How much of a suggestion has been accepted, in the units the language server counts:
 * UTF-16 code units from the start of the suggestion's text (lsp_server/protocol.py).
 *
 * Plain module (no `vscode` import) so that it is unit-tested with node's test runner.
 */

/** UTF-16 code units of `text`: what LSP positions count. A character outside the Basic
 * Multilingual Plane (most emoji) is two units, a combining accent one. */
export function utf16Length(text: string): number {
  let units = 0;
  for (const ch of text) {
    units += (ch.codePointAt(0) ?? 0) > 0xffff ? 2 : 1;
  }
  return units;
}

/** VS Code's default word definition (editor/common/core/wordHelper.ts), used by
 * `editor.action.inlineSuggest.acceptNextWord` for languages that define no other. */
export const DEFAULT_WORD_PATTERN =
  /(-?\d*\.\d\w*)|([^`~!@#$%^&*()\-=+[{\]}\\|;:'",.<>/?\s]+)/;

/** Where `acceptNextWord` stops in the ghost text `text` (exclusive index, UTF-16 units), as
 * VS Code's inline completions model computes it: to the end of a word at the start, else up to
 * the next word, but never past the first run of whitespace. */
export function nextWordEnd(text: string, wordPattern: RegExp = DEFAULT_WORD_PATTERN): number {
  const word = new RegExp(wordPattern.source, wordPattern.flags.replace("g", ""));
  const m1 = word.exec(text);
  let end: number;
  if (m1) {
    end = m1.index === 0 ? m1[0].length : m1.index;
  } else {
    end = text.length;
  }
  const m2 = /\s+/.exec(text);
  if (m2 && m2.index + m2[0].length < end) {
    end = m2.index + m2[0].length;
  }
  return end;
}

/** Where `acceptNextLine` stops in `text`: just after the first line break, else at the end. */
export function nextLineEnd(text: string): number {
  const i = text.indexOf("\n");
  return i >= 0 ? i + 1 : text.length;
}

export type PartKind = "word" | "line";

/** The accepted total after one more word or line, given `accepted` units already in place:
 * what the editor is expected to insert. */
export function predictAccepted(
  text: string,
  accepted: number,
  kind: PartKind,
  wordPattern?: RegExp,
): number {
  const start = Math.max(0, Math.min(accepted, text.length));
  const rest = text.slice(start);
  const step = kind === "word" ? nextWordEnd(rest, wordPattern) : nextLineEnd(rest);
  return start + step;
}

export interface PrefixMatch {
  /** UTF-16 units of the suggestion that the document holds at its spot. */
  units: number;
  /** The whole of the document text considered is a prefix of the suggestion (nothing else
   * was typed in between). */
  complete: boolean;
}

/** Compare the suggestion's text with what the document holds from the suggestion's start to
 * the cursor. A "\r\n" in the document matches a "\n" in the suggestion (an editor inserts the
 * document's line ending), so the count stays in the suggestion's own units. */
export function matchPrefix(suggestion: string, atSpot: string): PrefixMatch {
  let i = 0; // in suggestion
  let j = 0; // in atSpot
  while (i < suggestion.length && j < atSpot.length) {
    const s = suggestion.charCodeAt(i);
    const d = atSpot.charCodeAt(j);
    if (s === d) {
      i += 1;
      j += 1;
    } else if (d === 0x0d && s === 0x0a && atSpot.charCodeAt(j + 1) === 0x0a) {
      i += 1;
      j += 2;
    } else {
      break;
    }
  }
  // Never stop between the two halves of a surrogate pair: that is not a character boundary.
  if (i > 0 && i < suggestion.length && isHighSurrogate(suggestion.charCodeAt(i - 1))) {
    i -= 1;
    j -= 1;
  }
  return { units: i, complete: j === atSpot.length };
}

function isHighSurrogate(code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff;
}
