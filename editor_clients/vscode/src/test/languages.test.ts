import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { isExcluded, readExcludes, readLanguageMap, readTriggerMode, shouldAsk, withLanguage } from "../languages";

describe("shouldAsk", () => {
  it("asks only in the languages the server says it completes, by default", () => {
    assert.equal(shouldAsk("python", {}, ["python"]), true);
    assert.equal(shouldAsk("markdown", {}, ["python"]), false);
    assert.equal(shouldAsk("yaml", {}, []), false);
  });
  it("leaves the decision to the server until it has said which languages", () => {
    assert.equal(shouldAsk("markdown", {}, undefined), true);
    assert.equal(shouldAsk("markdown", { markdown: false }, undefined), false);
  });
  it("follows the user's word first: a language by name, then *", () => {
    assert.equal(shouldAsk("python", { python: false }, ["python"]), false);
    assert.equal(shouldAsk("go", { go: true }, ["python"]), true);
    assert.equal(shouldAsk("python", { "*": false }, ["python"]), false);
    assert.equal(shouldAsk("python", { "*": false, python: true }, ["python"]), true);
    assert.equal(shouldAsk("rust", { "*": true }, ["python"]), true);
  });
});

describe("withLanguage", () => {
  it("switches one language and keeps the others", () => {
    assert.deepEqual(withLanguage({ markdown: false }, "python", false), { markdown: false, python: false });
    assert.deepEqual(withLanguage({ python: false }, "python", true), { python: true });
  });
});

describe("readLanguageMap", () => {
  it("keeps boolean entries only", () => {
    assert.deepEqual(readLanguageMap({ python: true, yaml: "no", "": false, " go ": false }), { python: true, go: false });
    assert.deepEqual(readLanguageMap(["python"]), {});
    assert.deepEqual(readLanguageMap(undefined), {});
  });
});

describe("isExcluded", () => {
  it("never lets environment files, keys and credentials through", () => {
    for (const path of [
      "/home/me/proj/.env",
      "/home/me/proj/.env.production",
      "/home/me/proj/config/prod.env",
      "/home/me/proj/certs/server.pem",
      "/home/me/proj/tls.key",
      "/home/me/.ssh/config",
      "/home/me/.ssh/id_ed25519",
      "/home/me/.aws/credentials",
      "/home/me/.netrc",
      "C:\\Users\\me\\proj\\.env",
    ]) {
      assert.equal(isExcluded(path, []), true, path);
    }
  });
  it("lets ordinary source files through", () => {
    for (const path of ["/home/me/proj/app.py", "/home/me/proj/environment.py", "/home/me/proj/keys.py", "/home/me/proj/env/x.py"]) {
      assert.equal(isExcluded(path, []), false, path);
    }
  });
  it("applies the user's globs: a file name anywhere, or a path absolute or within a workspace folder", () => {
    const patterns = ["*.sql", "secrets/**", "/srv/data/**"];
    const roots = ["/home/me/proj"];
    assert.equal(isExcluded("/home/me/proj/db/schema.sql", patterns, roots), true);
    assert.equal(isExcluded("/home/me/proj/secrets/tokens.py", patterns, roots), true);
    assert.equal(isExcluded("/home/me/other/secrets/tokens.py", patterns, roots), false);
    assert.equal(isExcluded("/srv/data/load.py", patterns, roots), true);
    assert.equal(isExcluded("/home/me/proj/app.py", patterns, roots), false);
  });
});

describe("readExcludes and readTriggerMode", () => {
  it("drop what is not a pattern or a mode", () => {
    assert.deepEqual(readExcludes(["a/**", 1, "", null]), ["a/**"]);
    assert.deepEqual(readExcludes("a/**"), []);
    assert.equal(readTriggerMode("manual"), "manual");
    assert.equal(readTriggerMode("MANUAL"), "automatic");
    assert.equal(readTriggerMode(undefined), "automatic");
  });
});
