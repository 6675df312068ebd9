import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { matchPrefix, nextLineEnd, nextWordEnd, predictAccepted, utf16Length } from "../partial";

describe("utf16Length", () => {
  it("counts UTF-16 code units, as LSP positions do", () => {
    assert.equal(utf16Length(""), 0);
    assert.equal(utf16Length("abc"), 3);
    assert.equal(utf16Length("é"), 1); // U+00E9, one unit
    assert.equal(utf16Length("e\u0301"), 2); // e + combining accent: two code points
    assert.equal(utf16Length("😀"), 2); // outside the BMP: a surrogate pair
    assert.equal(utf16Length("x = '😀'"), 8);
    assert.equal(utf16Length("中文"), 2);
  });
});

describe("nextWordEnd mirrors VS Code's acceptNextWord", () => {
  it("takes a word at the start", () => {
    assert.equal(nextWordEnd("foo(bar)"), 3);
    assert.equal(nextWordEnd("return x"), 6); // the word, not the space after it
  });
  it("stops before the next word when text starts with separators", () => {
    assert.equal(nextWordEnd("(bar)"), 1);
    assert.equal(nextWordEnd("self.value"), 4);
    assert.equal(nextWordEnd(".value"), 1);
  });
  it("never goes past the first run of whitespace", () => {
    assert.equal(nextWordEnd("  x = 1"), 2);
    assert.equal(nextWordEnd("\n    return"), 5);
    assert.equal(nextWordEnd("a b"), 1);
    assert.equal(nextWordEnd(" = compute"), 1); // the space, not up to the next word
  });
  it("takes numbers with a decimal point as one word", () => {
    assert.equal(nextWordEnd("-1.5e3)"), 6);
  });
  it("takes the rest when there is no word", () => {
    assert.equal(nextWordEnd("();"), 3);
    assert.equal(nextWordEnd(""), 0);
  });
  it("uses a language's own word pattern when given", () => {
    assert.equal(nextWordEnd("foo-bar baz", /[\w-]+/g), 7);
  });
});

describe("nextLineEnd mirrors VS Code's acceptNextLine", () => {
  it("takes the line with its line break", () => {
    assert.equal(nextLineEnd("a = 1\nb = 2"), 6);
    assert.equal(nextLineEnd("\nb"), 1);
  });
  it("takes everything on the last line", () => {
    assert.equal(nextLineEnd("a = 1"), 5);
  });
});

describe("predictAccepted", () => {
  const text = "result = compute(x)\nreturn result";
  it("grows word by word from what is already accepted", () => {
    assert.equal(predictAccepted(text, 0, "word"), 6); // "result"
    assert.equal(predictAccepted(text, 6, "word"), 7); // " "
    assert.equal(predictAccepted(text, 7, "word"), 9); // "= "
    assert.equal(predictAccepted(text, 9, "word"), 16); // "compute"
  });
  it("grows line by line", () => {
    assert.equal(predictAccepted(text, 0, "line"), 20);
    assert.equal(predictAccepted(text, 20, "line"), text.length);
  });
  it("clamps an out-of-range start", () => {
    assert.equal(predictAccepted("ab", 5, "word"), 2);
    assert.equal(predictAccepted("ab cd", -3, "word"), 2);
  });
});

describe("matchPrefix", () => {
  it("counts the suggestion's units the document holds", () => {
    assert.deepEqual(matchPrefix("foo(bar)", "foo("), { units: 4, complete: true });
    assert.deepEqual(matchPrefix("foo(bar)", ""), { units: 0, complete: true });
    assert.deepEqual(matchPrefix("foo(bar)", "foo(bar)"), { units: 8, complete: true });
  });
  it("reports text that diverges", () => {
    assert.deepEqual(matchPrefix("foo(bar)", "fox"), { units: 2, complete: false });
    assert.deepEqual(matchPrefix("ab", "abc"), { units: 2, complete: false });
  });
  it("counts a CRLF document's line break as the suggestion's \\n", () => {
    assert.deepEqual(matchPrefix("a\nb\nc", "a\r\nb"), { units: 3, complete: true });
    assert.deepEqual(matchPrefix("a\nb", "a\r"), { units: 1, complete: false });
  });
  it("counts surrogate pairs as two units and never splits one", () => {
    assert.deepEqual(matchPrefix("s = '😀'", "s = '😀"), { units: 7, complete: true });
    // A document holding only the high surrogate is not a character boundary.
    assert.deepEqual(matchPrefix("😀x", "\ud83d"), { units: 0, complete: false });
  });
});
