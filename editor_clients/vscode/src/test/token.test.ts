import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { planTokenMigration, tokenInput, validateToken } from "../token";

describe("planTokenMigration", () => {
  it("moves a token found in settings.json to the secret storage and clears it there", () => {
    assert.deepEqual(planTokenMigration({ globalValue: " abc " }, undefined), { store: "abc", clear: ["global"] });
  });
  it("takes the most specific token, and clears every scope where one is set", () => {
    assert.deepEqual(planTokenMigration({ globalValue: "user", workspaceValue: "ws", workspaceFolderValue: "" }, ""), {
      store: "ws",
      clear: ["workspaceFolder", "workspace", "global"],
    });
  });
  it("keeps a token already in the secret storage, and still clears the plain-text one", () => {
    assert.deepEqual(planTokenMigration({ globalValue: "old" }, "kept"), { store: undefined, clear: ["global"] });
  });
  it("does nothing when settings.json holds no token", () => {
    assert.deepEqual(planTokenMigration({}, undefined), { store: undefined, clear: [] });
    assert.deepEqual(planTokenMigration(undefined, "kept"), { store: undefined, clear: [] });
  });
});

describe("the Set Token box", () => {
  it("keeps the token on Escape, removes it when emptied, and sets it otherwise", () => {
    assert.deepEqual(tokenInput(undefined), { kind: "keep" });
    assert.deepEqual(tokenInput("  "), { kind: "delete" });
    assert.deepEqual(tokenInput(" fw_abc "), { kind: "set", token: "fw_abc" });
  });
  it("refuses what cannot go in an Authorization header", () => {
    assert.equal(validateToken("fw_abc-123"), undefined);
    assert.equal(validateToken(""), undefined);
    assert.ok(validateToken("two words"));
    assert.ok(validateToken("tök"));
  });
});
