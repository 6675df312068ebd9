import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  DEFAULTS,
  configurationSettings,
  dashboardUrl,
  initializationOptions,
  planChange,
  readSettings,
  resolveExecutable,
  type FlywheelSettings,
} from "../settings";

const settings = (over: Partial<FlywheelSettings> = {}): FlywheelSettings => ({ ...DEFAULTS, ...over });

describe("readSettings", () => {
  it("trims, strips the URL's trailing slash and falls back on wrong types", () => {
    const values: Record<string, unknown> = {
      enable: "yes",
      serverPath: "  ",
      backendUrl: " http://host:9000/ ",
      token: "from-settings-json",
      telemetry: false,
      languages: { markdown: false, python: "yes" },
      exclude: ["**/secrets/**", 3, " "],
      trigger: "sometimes",
    };
    assert.deepEqual(readSettings((k) => values[k], { token: " t0k ", editorTelemetry: true }), {
      enable: true,
      serverPath: "flywheel",
      backendUrl: "http://host:9000",
      token: "t0k",
      telemetry: false,
      languages: { markdown: false },
      exclude: ["**/secrets/**"],
      trigger: "automatic",
    });
  });
  it("takes the token from the secret storage only, never from settings.json", () => {
    const values: Record<string, unknown> = { token: "plain-text" };
    assert.equal(readSettings((k) => values[k]).token, "");
    assert.equal(readSettings((k) => values[k], { token: "s3cret", editorTelemetry: true }).token, "s3cret");
  });
  it("sends no outcome events when VS Code's telemetry is off, whatever flywheel.telemetry says", () => {
    const values: Record<string, unknown> = { telemetry: true };
    assert.equal(readSettings((k) => values[k], { token: "", editorTelemetry: true }).telemetry, true);
    assert.equal(readSettings((k) => values[k], { token: "", editorTelemetry: false }).telemetry, false);
    assert.equal(initializationOptions(readSettings((k) => values[k], { token: "", editorTelemetry: false })).telemetry, false);
  });
  it("reads the manual trigger mode", () => {
    assert.equal(readSettings((k) => (k === "trigger" ? "manual" : undefined)).trigger, "manual");
  });
});

describe("initializationOptions", () => {
  it("says that this client reports shown suggestions, and leaves empty settings out", () => {
    assert.deepEqual(initializationOptions(settings()), { telemetry: true, languages: {}, reportsShown: true });
  });
  it("passes the backend, token and telemetry under the server's keys", () => {
    const options = initializationOptions(
      settings({
        backendUrl: "http://b:1",
        token: "secret",
        telemetry: false,
        languages: { markdown: false },
        exclude: ["*.sql"],
      }),
    );
    assert.deepEqual(options, {
      backendUrl: "http://b:1",
      token: "secret",
      telemetry: false,
      languages: { markdown: false },
      exclude: ["*.sql"],
      reportsShown: true,
    });
    assert.equal("serverPath" in options, false);
    assert.equal("enable" in options, false);
  });
  it("nests didChangeConfiguration settings under flywheel", () => {
    assert.deepEqual(configurationSettings(settings({ token: "t" })), {
      flywheel: { token: "t", telemetry: true, languages: {}, reportsShown: true },
    });
  });
});

describe("planChange", () => {
  it("starts and stops with flywheel.enable", () => {
    assert.equal(planChange(settings(), settings({ enable: false })), "stop");
    assert.equal(planChange(settings({ enable: false }), settings()), "start");
    assert.equal(planChange(settings({ enable: false }), settings({ enable: false, token: "x" })), "none");
  });
  it("notifies the running server of backend, token and telemetry changes", () => {
    assert.equal(planChange(settings(), settings({ telemetry: false })), "notify");
    assert.equal(planChange(settings(), settings({ backendUrl: "http://b" })), "notify");
    assert.equal(planChange(settings({ token: "a" }), settings({ token: "b" })), "notify");
    assert.equal(planChange(settings(), settings({ languages: { markdown: false } })), "notify");
    assert.equal(planChange(settings({ languages: { go: true } }), settings({ languages: { go: false } })), "notify");
  });
  it("restarts without the documents of a newly excluded path", () => {
    assert.equal(planChange(settings(), settings({ exclude: ["*.sql"] })), "restart");
    assert.equal(planChange(settings({ exclude: ["*.sql"] }), settings()), "restart");
  });
  it("leaves the server alone for the trigger mode (the extension applies it)", () => {
    assert.equal(planChange(settings(), settings({ trigger: "manual" })), "none");
  });
  it("restarts for a new executable, or a value cleared back to the server's own", () => {
    assert.equal(planChange(settings(), settings({ serverPath: "/opt/flywheel" })), "restart");
    assert.equal(planChange(settings({ token: "a" }), settings()), "restart");
    assert.equal(planChange(settings({ backendUrl: "http://b" }), settings()), "restart");
  });
  it("does nothing when nothing that matters changed", () => {
    assert.equal(planChange(settings(), settings()), "none");
  });
});

describe("dashboardUrl", () => {
  it("prefers the setting, then what the server reports, then the default", () => {
    assert.equal(dashboardUrl("http://b:1/"), "http://b:1/admin");
    assert.equal(dashboardUrl("", "http://server:2"), "http://server:2/admin");
    assert.equal(dashboardUrl("", null), "http://127.0.0.1:8765/admin");
  });
});

describe("resolveExecutable", () => {
  const files = new Set([
    "/usr/local/bin/flywheel",
    "/home/me/.local/bin/fw",
    "/work/proj/.venv/bin/flywheel",
    "C:\\Tools\\flywheel.EXE",
  ]);
  const posix = { platform: "linux" as const, home: "/home/me", isFile: (p: string) => files.has(p) };
  it("looks a bare name up on PATH, in order", () => {
    assert.equal(resolveExecutable("flywheel", { ...posix, searchPath: "/usr/bin::/usr/local/bin" }), "/usr/local/bin/flywheel");
    assert.equal(resolveExecutable("flywheel", { ...posix, searchPath: "/usr/bin" }), undefined);
    assert.equal(resolveExecutable("", { ...posix, searchPath: "/usr/local/bin" }), "/usr/local/bin/flywheel");
  });
  it("expands ~ and ${workspaceFolder}, and resolves relative paths against the workspace", () => {
    assert.equal(resolveExecutable("~/.local/bin/fw", posix), "/home/me/.local/bin/fw");
    const ws = { ...posix, workspaceFolder: "/work/proj" };
    assert.equal(resolveExecutable("${workspaceFolder}/.venv/bin/flywheel", ws), "/work/proj/.venv/bin/flywheel");
    assert.equal(resolveExecutable(".venv/bin/flywheel", ws), "/work/proj/.venv/bin/flywheel");
    assert.equal(resolveExecutable(".venv/bin/flywheel", posix), undefined);
    assert.equal(resolveExecutable("${workspaceFolder}/.venv/bin/flywheel", posix), undefined);
  });
  it("checks an absolute path as given", () => {
    assert.equal(resolveExecutable("/usr/local/bin/flywheel", posix), "/usr/local/bin/flywheel");
    assert.equal(resolveExecutable("/nope/flywheel", posix), undefined);
  });
  it("tries PATHEXT on Windows", () => {
    const win = { platform: "win32" as const, isFile: (p: string) => files.has(p), searchPath: "C:\\Windows;C:\\Tools", pathExt: ".COM;.EXE" };
    assert.equal(resolveExecutable("flywheel", win), "C:\\Tools\\flywheel.EXE");
  });
});
