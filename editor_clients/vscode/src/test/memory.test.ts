import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { SuggestionMemory, completionIdOf } from "../memory";
import { ACCEPT_COMMAND } from "../protocol";

describe("completionIdOf", () => {
  it("reads the id from the item's flywheel.accept command", () => {
    const item = { insertText: "x", command: { title: "Accept", command: ACCEPT_COMMAND, arguments: ["c1"] } };
    assert.equal(completionIdOf(item), "c1");
  });
  it("ignores items that are not ours", () => {
    assert.equal(completionIdOf({ insertText: "x" }), undefined);
    assert.equal(completionIdOf({ command: { command: "other.accept", arguments: ["c1"] } }), undefined);
    assert.equal(completionIdOf({ command: { command: ACCEPT_COMMAND } }), undefined);
    assert.equal(completionIdOf({ command: { command: ACCEPT_COMMAND, arguments: [7] } }), undefined);
    assert.equal(completionIdOf({ command: { command: ACCEPT_COMMAND, arguments: [""] } }), undefined);
    assert.equal(completionIdOf(null), undefined);
  });
});

describe("SuggestionMemory", () => {
  it("measures against the latest item of an id, keeping what was reported", () => {
    const m = new SuggestionMemory();
    m.returned("c1", "file:///a.py", 3, 4, "value = 1");
    assert.equal(m.markShown("c1"), true);
    assert.equal(m.markAccepted("c1", 5), true);
    // Typed ahead on the same line: the same item again (whole text, from where it began).
    const same = m.returned("c1", "file:///a.py", 3, 4, "value = 1");
    assert.deepEqual([same.character, same.text, same.accepted], [4, "value = 1", 5]);
    assert.equal(m.markAccepted("c1", 5), false);
    // Typed ahead past a line break: the item starts at the cursor's line; totals count from there.
    const next = m.returned("c1", "file:///a.py", 4, 0, "    return value");
    assert.deepEqual([next.line, next.character, next.text, next.accepted], [4, 0, "    return value", 0]);
    assert.equal(m.markShown("c1"), false);
    assert.equal(m.markAccepted("c1", 10), true);
    assert.equal(m.markRejected("c1"), false);
    assert.equal(m.last()?.completionId, "c1");
  });
  it("reports shown once per suggestion", () => {
    const m = new SuggestionMemory();
    m.returned("c1", "u", 0, 0, "abc");
    assert.equal(m.markShown("c1"), true);
    m.returned("c1", "u", 0, 1, "bc");
    assert.equal(m.markShown("c1"), false);
    assert.equal(m.markShown("unknown"), false);
  });
  it("sends a partial acceptance only when the total grows", () => {
    const m = new SuggestionMemory();
    m.returned("c1", "u", 0, 0, "alpha beta gamma");
    assert.equal(m.markAccepted("c1", 6), true);
    assert.equal(m.markAccepted("c1", 6), false);
    assert.equal(m.markAccepted("c1", 3), false);
    assert.equal(m.markAccepted("c1", 11), true);
    assert.equal(m.get("c1")?.accepted, 11);
    assert.equal(m.markAccepted("c1", 11.5), false);
    assert.equal(m.markAccepted("nope", 3), false);
  });
  it("rejects once, and not after part of it was accepted", () => {
    const m = new SuggestionMemory();
    m.returned("c1", "u", 0, 0, "abc def");
    m.returned("c2", "u", 0, 0, "abc def");
    assert.equal(m.markRejected("c1"), true);
    assert.equal(m.markRejected("c1"), false);
    m.markAccepted("c2", 4);
    assert.equal(m.markRejected("c2"), false);
  });
  it("forgets the oldest beyond its capacity", () => {
    const m = new SuggestionMemory(2);
    m.returned("a", "u", 0, 0, "x");
    m.returned("b", "u", 0, 0, "y");
    m.returned("c", "u", 0, 0, "z");
    assert.equal(m.get("a"), undefined);
    assert.equal(m.get("b")?.text, "y");
    assert.equal(m.last()?.completionId, "c");
    m.clear();
    assert.equal(m.last(), undefined);
  });
});
