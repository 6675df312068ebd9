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
      token: " t0k ",
      telemetry: false,
    };
    assert.deepEqual(readSettings((k) => values[k]), {
      enable: true,
      serverPath: "flywheel",
      backendUrl: "http://host:9000",
      token: "t0k",
      telemetry: false,
    });
  });
});

describe("initializationOptions", () => {
  it("says that this client reports shown suggestions, and leaves empty settings out", () => {
    assert.deepEqual(initializationOptions(settings()), { telemetry: true, reportsShown: true });
  });
  it("passes the backend, token and telemetry under the server's keys", () => {
    const options = initializationOptions(settings({ backendUrl: "http://b:1", token: "secret", telemetry: false }));
    assert.deepEqual(options, { backendUrl: "http://b:1", token: "secret", telemetry: false, reportsShown: true });
    assert.equal("serverPath" in options, false);
    assert.equal("enable" in options, false);
  });
  it("nests didChangeConfiguration settings under flywheel", () => {
    assert.deepEqual(configurationSettings(settings({ token: "t" })), {
      flywheel: { token: "t", telemetry: true, reportsShown: true },
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
