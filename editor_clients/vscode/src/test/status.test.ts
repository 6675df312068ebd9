import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { formatStatus, parseStatus, parseStatusChange, shortVersion } from "../status";

describe("parseStatus", () => {
  it("reads the fields of flywheel/status", () => {
    const s = parseStatus({
      ready: true,
      backend_url: "http://127.0.0.1:8765",
      backend_ok: true,
      last_backend_error: null,
      model_version: "v7",
      telemetry: true,
      outbox_pending: 2,
      events_delivered: 40,
      timings: {},
    });
    assert.equal(s?.model_version, "v7");
    assert.equal(s?.backend_ok, true);
    assert.equal(s?.outbox_pending, 2);
  });
  it("turns odd shapes into nothing rather than errors", () => {
    assert.equal(parseStatus(null), undefined);
    assert.equal(parseStatus([1]), undefined);
    assert.equal(parseStatus("ok"), undefined);
    const s = parseStatus({ ready: false, model_version: 3, backend_ok: "yes" });
    assert.equal(s?.model_version, null);
    assert.equal(s?.backend_ok, null);
  });
});

describe("the backend's state", () => {
  it("is the server's backend field when it sends one", () => {
    assert.equal(parseStatus({ backend: "unauthorized", backend_ok: false })?.backend, "unauthorized");
    assert.equal(parseStatus({ backend: "ok" })?.backend, "ok");
    assert.equal(parseStatus({ backend: "fine" })?.backend, undefined);
  });
  it("tells a refused token from an outage with an older server", () => {
    const refused = parseStatus({ backend_ok: false, last_backend_error: "HTTP 401 from /v1/complete: bad token" });
    assert.equal(refused?.backend, "unauthorized");
    const down = parseStatus({ backend_ok: false, last_backend_error: "ConnectError: connection refused" });
    assert.equal(down?.backend, "unreachable");
    assert.equal(parseStatus({ backend_ok: null })?.backend, undefined);
  });
  it("reads flywheel/didChangeStatus", () => {
    assert.deepEqual(parseStatusChange({ backend: "unauthorized", languages: ["python", 3] }), {
      backend: "unauthorized",
      languages: ["python"],
    });
    assert.deepEqual(parseStatusChange({ languages: [] }), { languages: [] });
    assert.equal(parseStatusChange("ok"), undefined);
  });
});

describe("formatStatus", () => {
  it("says unauthorized, not unreachable, when the backend refuses the token", () => {
    const problem = { kind: "unauthorized" as const, message: "Flywheel: unauthorized: the backend refuses the token" };
    const view = formatStatus({ phase: "running", problem, status: { backend: "unauthorized" } });
    assert.equal(view.text, "$(lock) Flywheel: unauthorized");
    assert.equal(view.warning, true);
    assert.match(view.tooltip, /Set Token/);
    assert.doesNotMatch(view.tooltip, /unreachable/);
    const tooltip = formatStatus({ phase: "running", status: { backend_url: "http://b", backend: "unauthorized" } }).tooltip;
    assert.match(tooltip, /Backend: http:\/\/b \(unauthorized/);
  });
  it("says unreachable when the backend does not answer", () => {
    const problem = { kind: "backend" as const, message: "the backend at http://b is unreachable" };
    assert.equal(formatStatus({ phase: "running", problem }).text, "$(warning) Flywheel: unreachable");
  });
  it("says why the file in front gets no suggestions", () => {
    const status = { backend: "ok" as const, languages: ["python"], model_version: "v1" };
    const view = (here: { languageId: string; asked: boolean; excluded: boolean; switchedOff: boolean }, manual = false) =>
      formatStatus({ phase: "running", status, here, manual });
    const python = view({ languageId: "python", asked: true, excluded: false, switchedOff: false });
    assert.equal(python.text, "$(sparkle) Flywheel v1");
    assert.match(python.tooltip, /as you type/);
    assert.match(python.tooltip, /Languages: python/);
    assert.match(view({ languageId: "python", asked: true, excluded: false, switchedOff: false }, true).tooltip, /Alt\+\\/);
    const markdown = view({ languageId: "markdown", asked: false, excluded: false, switchedOff: false });
    assert.equal(markdown.text, "$(circle-slash) Flywheel v1");
    assert.match(markdown.tooltip, /does not serve it/);
    assert.match(view({ languageId: "python", asked: false, excluded: false, switchedOff: true }).tooltip, /switched off/);
    assert.match(view({ languageId: "dotenv", asked: false, excluded: true, switchedOff: false }).tooltip, /excluded/);
  });
  it("shows the model version when running", () => {
    const view = formatStatus({
      phase: "running",
      status: { backend_url: "http://b", backend: "ok", model_version: "v12", telemetry: true, outbox_pending: 0, events_delivered: 5 },
    });
    assert.equal(view.text, "$(sparkle) Flywheel v12");
    assert.equal(view.warning, false);
    assert.match(view.tooltip, /Model: v12/);
    assert.match(view.tooltip, /Backend: http:\/\/b \(reachable\)/);
    assert.match(view.tooltip, /5 delivered, 0 waiting/);
  });
  it("says the model is not known before the first completion", () => {
    const view = formatStatus({ phase: "running", status: { backend_ok: null, model_version: null } });
    assert.equal(view.text, "$(sparkle) Flywheel");
    assert.match(view.tooltip, /not known yet/);
  });
  it("warns when the backend is unreachable", () => {
    const view = formatStatus({
      phase: "running",
      status: { backend_url: "http://b", backend: "unreachable", last_backend_error: "connection refused", model_version: "v3" },
    });
    assert.equal(view.warning, true);
    assert.equal(view.text, "$(warning) Flywheel v3");
    assert.match(view.tooltip, /unreachable/);
    assert.match(view.tooltip, /connection refused/);
  });
  it("shows a problem over everything but off", () => {
    const problem = { kind: "notFound" as const, message: "flywheel not found" };
    const view = formatStatus({ phase: "retrying", problem });
    assert.equal(view.text, "$(warning) Flywheel");
    assert.equal(view.warning, true);
    assert.match(view.tooltip, /flywheel not found/);
    assert.equal(formatStatus({ phase: "off", problem }).text, "$(circle-slash) Flywheel");
  });
  it("shows starting and off", () => {
    assert.equal(formatStatus({ phase: "starting" }).text, "$(sync~spin) Flywheel");
    assert.equal(formatStatus({ phase: "off" }).warning, false);
  });
  it("says when telemetry is off", () => {
    const view = formatStatus({ phase: "running", status: { telemetry: false, model_version: "v1" } });
    assert.match(view.tooltip, /Telemetry off/);
  });
  it("keeps long versions and icon syntax out of the status bar", () => {
    assert.equal(shortVersion("a".repeat(40)).length, 24);
    assert.equal(shortVersion(" v1 "), "v1");
    const view = formatStatus({ phase: "running", status: { model_version: "$(bug)" } });
    assert.equal(view.text.includes("$(bug)"), false);
  });
});
