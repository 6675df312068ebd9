/**
 * The extension's settings and what they become for the language server. Plain module (no
 * `vscode` import).
 */

import * as path from "node:path";
import {
  DEFAULT_LANGUAGES,
  readExcludes,
  readLanguageMap,
  readTriggerMode,
  type LanguageMap,
  type TriggerMode,
} from "./languages";
import { REPORTS_SHOWN_OPTION } from "./protocol";

export const SECTION = "flywheel";
export const DEFAULT_BACKEND_URL = "http://127.0.0.1:8765";

export interface FlywheelSettings {
  enable: boolean;
  serverPath: string;
  backendUrl: string;
  /** From SecretStorage ("Flywheel: Set Token"), never from settings.json. */
  token: string;
  /** flywheel.telemetry, and VS Code's own telemetry.telemetryLevel allows it. */
  telemetry: boolean;
  languages: LanguageMap;
  exclude: string[];
  trigger: TriggerMode;
}

/** What the settings getter keys are (settings.json, under "flywheel."). */
export type SettingKey = "enable" | "serverPath" | "backendUrl" | "telemetry" | "languages" | "exclude" | "trigger";

/** What comes from elsewhere than settings.json. */
export interface Outside {
  token: string;
  /** vscode.env.isTelemetryEnabled: off when the user set telemetry.telemetryLevel to "off". */
  editorTelemetry: boolean;
}

export const DEFAULTS: Readonly<FlywheelSettings> = Object.freeze({
  enable: true,
  serverPath: "flywheel",
  backendUrl: "",
  token: "",
  telemetry: true,
  languages: DEFAULT_LANGUAGES,
  exclude: [],
  trigger: "automatic" as TriggerMode,
});

/** Settings from a getter (VS Code's `WorkspaceConfiguration.get`); a value of the wrong type
 * (hand-edited settings.json) falls back to the default. */
export function readSettings(
  get: (key: SettingKey) => unknown,
  outside: Outside = { token: "", editorTelemetry: true },
): FlywheelSettings {
  const flag = (key: "enable" | "telemetry"): boolean => {
    const v = get(key);
    return typeof v === "boolean" ? v : DEFAULTS[key];
  };
  const text = (key: "serverPath" | "backendUrl"): string => {
    const v = get(key);
    return typeof v === "string" ? v.trim() : DEFAULTS[key];
  };
  return {
    enable: flag("enable"),
    serverPath: text("serverPath") || DEFAULTS.serverPath,
    backendUrl: text("backendUrl").replace(/\/+$/, ""),
    token: outside.token.trim(),
    telemetry: flag("telemetry") && outside.editorTelemetry,
    languages: readLanguageMap(get("languages")),
    exclude: readExcludes(get("exclude")),
    trigger: readTriggerMode(get("trigger")),
  };
}

/** The language server's options (README, "Initialization options"). Empty settings are left
 * out, so that the server's own configuration (flywheel.toml, FLYWHEEL_*) applies. */
export function initializationOptions(s: FlywheelSettings): Record<string, unknown> {
  const options: Record<string, unknown> = {};
  if (s.backendUrl) {
    options.backendUrl = s.backendUrl;
  }
  if (s.token) {
    options.token = s.token;
  }
  options.telemetry = s.telemetry;
  // The server enforces these as well: it never sends such a document to the backend.
  options.languages = { ...s.languages };
  if (s.exclude.length) {
    options.exclude = [...s.exclude];
  }
  // This client sends flywheel/didShowCompletion.
  options[REPORTS_SHOWN_OPTION] = true;
  return options;
}

/** The `settings` of workspace/didChangeConfiguration (the server reads them under "flywheel"). */
export function configurationSettings(s: FlywheelSettings): Record<string, unknown> {
  return { [SECTION]: initializationOptions(s) };
}

export type ChangePlan = "none" | "start" | "stop" | "restart" | "notify";

/** What a settings change asks of the running extension. A value cleared back to empty cannot be
 * unset through didChangeConfiguration (the server keeps the last one it got), so it restarts
 * the server, which then falls back to its own configuration. */
export function planChange(before: FlywheelSettings, after: FlywheelSettings): ChangePlan {
  if (before.enable !== after.enable) {
    return after.enable ? "start" : "stop";
  }
  if (!after.enable) {
    return "none";
  }
  if (before.serverPath !== after.serverPath) {
    return "restart";
  }
  const cleared =
    (before.backendUrl !== "" && after.backendUrl === "") ||
    (before.token !== "" && after.token === "");
  // Documents already opened on the server are not taken back by a notification: a new
  // exclusion starts it afresh, without them.
  if (cleared || !sameList(before.exclude, after.exclude)) {
    return "restart";
  }
  if (
    before.backendUrl !== after.backendUrl ||
    before.token !== after.token ||
    before.telemetry !== after.telemetry ||
    !sameMap(before.languages, after.languages)
  ) {
    return "notify";
  }
  return "none";
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

function sameMap(a: LanguageMap, b: LanguageMap): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => a[k] === b[k]);
}

/** The admin dashboard: the configured backend, else the one the server reports, else the
 * default. */
export function dashboardUrl(configured: string, reportedByServer?: string | null): string {
  const base = (configured || reportedByServer || DEFAULT_BACKEND_URL).trim().replace(/\/+$/, "");
  return `${base}/admin`;
}

export interface PathEnvironment {
  home?: string;
  workspaceFolder?: string;
  /** The PATH variable. */
  searchPath?: string;
  /** Windows' PATHEXT; ignored elsewhere. */
  pathExt?: string;
  platform: NodeJS.Platform;
  isFile: (candidate: string) => boolean;
}

/** `flywheel.serverPath` made concrete: `~` and `${workspaceFolder}` expanded, a relative path
 * resolved against the workspace folder, a bare name looked up on PATH. Undefined when there is
 * no such file. */
export function resolveExecutable(serverPath: string, env: PathEnvironment): string | undefined {
  const p = env.platform === "win32" ? path.win32 : path.posix;
  let candidate = serverPath.trim() || DEFAULTS.serverPath;
  if (candidate.includes("${workspaceFolder}")) {
    if (!env.workspaceFolder) {
      return undefined;
    }
    candidate = candidate.split("${workspaceFolder}").join(env.workspaceFolder);
  }
  if ((candidate === "~" || candidate.startsWith("~/") || candidate.startsWith("~\\")) && env.home) {
    candidate = p.join(env.home, candidate.slice(1));
  }
  const extensions =
    env.platform === "win32"
      ? ["", ...(env.pathExt || ".COM;.EXE;.BAT;.CMD").split(";").filter((e) => e !== "")]
      : [""];
  const firstFile = (base: string): string | undefined => {
    for (const ext of extensions) {
      if (env.isFile(base + ext)) {
        return base + ext;
      }
    }
    return undefined;
  };
  const hasSeparator = candidate.includes("/") || (env.platform === "win32" && candidate.includes("\\"));
  if (p.isAbsolute(candidate)) {
    return firstFile(candidate);
  }
  if (hasSeparator) {
    return env.workspaceFolder ? firstFile(p.resolve(env.workspaceFolder, candidate)) : undefined;
  }
  const delimiter = env.platform === "win32" ? ";" : ":";
  for (const dir of (env.searchPath || "").split(delimiter)) {
    if (dir === "") {
      continue;
    }
    const found = firstFile(p.join(dir, candidate));
    if (found !== undefined) {
      return found;
    }
  }
  return undefined;
}
