import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Backoff, Problems } from "../problems";

describe("Problems", () => {
  it("notifies a problem once while it lasts", () => {
    let now = 0;
    const p = new Problems(() => now, 60_000);
    assert.equal(p.raise("backend", "down"), true);
    for (let i = 0; i < 100; i += 1) {
      now += 1000;
      assert.equal(p.raise("backend", "still down"), false);
    }
    assert.deepEqual(p.current(), { kind: "backend", message: "still down" });
  });
  it("does not notify a flapping problem again within the cooldown", () => {
    let now = 0;
    const p = new Problems(() => now, 60_000);
    assert.equal(p.raise("backend", "down"), true);
    now = 10_000;
    assert.equal(p.clear("backend"), true);
    assert.equal(p.current(), undefined);
    now = 20_000;
    assert.equal(p.raise("backend", "down again"), false);
    assert.equal(p.has("backend"), true);
    p.clear("backend");
    now = 90_000;
    assert.equal(p.raise("backend", "down, later"), true);
  });
  it("keeps kinds apart and shows the server's trouble before the backend's", () => {
    const p = new Problems(() => 0);
    assert.equal(p.raise("backend", "backend down"), true);
    assert.equal(p.raise("notFound", "no flywheel"), true);
    assert.equal(p.current()?.kind, "notFound");
    p.clear("notFound");
    assert.equal(p.current()?.kind, "backend");
    assert.equal(p.clear("crashed"), false);
  });
});

describe("Backoff", () => {
  it("doubles up to the cap, with jitter between half and all of it", () => {
    const top = new Backoff(1000, 8000, () => 1);
    assert.deepEqual([top.next(), top.next(), top.next(), top.next(), top.next()], [1000, 2000, 4000, 8000, 8000]);
    const bottom = new Backoff(1000, 8000, () => 0);
    assert.deepEqual([bottom.next(), bottom.next()], [500, 1000]);
  });
  it("starts over after a reset", () => {
    const b = new Backoff(1000, 60_000, () => 1);
    b.next();
    b.next();
    assert.equal(b.attempts, 2);
    b.reset();
    assert.equal(b.attempts, 0);
    assert.equal(b.next(), 1000);
  });
});
