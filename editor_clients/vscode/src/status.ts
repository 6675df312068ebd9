/**
 * The status bar item's text. Plain module (no `vscode` import).
 */

import type { Problem } from "./problems";

/** What the language server says of its backend: answering, refusing our token (401/403), or
 * not answering at all. */
export type BackendState = "ok" | "unauthorized" | "unreachable";

/** The fields of the `flywheel/status` answer the extension reads (lsp_server/session.py). */
export interface ServerStatus {
  ready?: boolean;
  backend_url?: string;
  backend_ok?: boolean | null;
  /** Undefined while not known (not asked yet, or a server that predates the field). */
  backend?: BackendState;
  /** The languages the server completes: the backend's, less those the user switched off. */
  languages?: string[];
  last_backend_error?: string | null;
  model_version?: string | null;
  telemetry?: boolean;
  outbox_pending?: number;
  outbox_dropped?: number;
  events_delivered?: number;
}

export type Phase = "off" | "starting" | "running" | "retrying";

/** The file in front. */
export interface Here {
  languageId: string;
  /** Suggestions are asked for here. */
  asked: boolean;
  excluded: boolean;
  /** The user switched its language off. */
  switchedOff: boolean;
}

export interface StatusInput {
  phase: Phase;
  status?: ServerStatus;
  problem?: Problem;
  here?: Here;
  /** Suggestions only on Alt+\ (flywheel.trigger "manual"). */
  manual?: boolean;
}

export interface StatusView {
  text: string;
  tooltip: string;
  warning: boolean;
}

const MAX_VERSION_CHARS = 24;

/** A model version short enough for the status bar. */
export function shortVersion(version: string): string {
  const v = version.trim();
  return v.length <= MAX_VERSION_CHARS ? v : `${v.slice(0, MAX_VERSION_CHARS - 1)}…`;
}

/** Untrusted text (error messages, versions) must not pass for `$(icon)` syntax. */
function plain(text: string): string {
  return text.replace(/\$\(/g, "$\u200b(");
}

/** The server's answer to `flywheel/status`, validated loosely: unknown shapes become undefined. */
export function parseStatus(raw: unknown): ServerStatus | undefined {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    return undefined;
  }
  const r = raw as Record<string, unknown>;
  const str = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined);
  const num = (v: unknown): number | undefined => (typeof v === "number" && Number.isFinite(v) ? v : undefined);
  return {
    ready: typeof r.ready === "boolean" ? r.ready : undefined,
    backend_url: str(r.backend_url),
    backend_ok: typeof r.backend_ok === "boolean" ? r.backend_ok : null,
    last_backend_error: str(r.last_backend_error) ?? null,
    backend: backendState(r.backend, r.backend_ok, r.last_backend_error),
    languages: languageList(r.languages),
    model_version: str(r.model_version) ?? null,
    telemetry: typeof r.telemetry === "boolean" ? r.telemetry : undefined,
    outbox_pending: num(r.outbox_pending),
    outbox_dropped: num(r.outbox_dropped),
    events_delivered: num(r.events_delivered),
  };
}

function isBackendState(v: unknown): v is BackendState {
  return v === "ok" || v === "unauthorized" || v === "unreachable";
}

/** The server's `backend` field; from a server without it, derived from backend_ok and its error
 * text (BackendError says "HTTP 401"). */
function backendState(backend: unknown, ok: unknown, error: unknown): BackendState | undefined {
  if (isBackendState(backend)) {
    return backend;
  }
  if (ok === true) {
    return "ok";
  }
  if (ok !== false) {
    return undefined;
  }
  return typeof error === "string" && /\b(401|403)\b|unauthori[sz]ed/i.test(error) ? "unauthorized" : "unreachable";
}

function languageList(v: unknown): string[] | undefined {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : undefined;
}

/** The params of `flywheel/didChangeStatus` ({backend, languages}); fields it lacks are left out. */
export function parseStatusChange(raw: unknown): Pick<ServerStatus, "backend" | "languages"> | undefined {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    return undefined;
  }
  const r = raw as Record<string, unknown>;
  const change: Pick<ServerStatus, "backend" | "languages"> = {};
  if (isBackendState(r.backend)) {
    change.backend = r.backend;
  }
  const languages = languageList(r.languages);
  if (languages !== undefined) {
    change.languages = languages;
  }
  return change;
}

export function formatStatus(input: StatusInput): StatusView {
  const { phase, status, problem } = input;
  if (phase === "off") {
    return {
      text: "$(circle-slash) Flywheel",
      tooltip: "Flywheel completions are off. Click for the menu.",
      warning: false,
    };
  }
  if (problem?.kind === "unauthorized") {
    return {
      text: "$(lock) Flywheel: unauthorized",
      tooltip: `${plain(problem.message)}\nFlywheel: Set Token fixes it. Click for the menu.`,
      warning: true,
    };
  }
  if (problem !== undefined) {
    return {
      text: problem.kind === "backend" ? "$(warning) Flywheel: unreachable" : "$(warning) Flywheel",
      tooltip: `${plain(problem.message)}\nRetrying quietly. Click for the menu.`,
      warning: true,
    };
  }
  if (phase === "starting" || phase === "retrying" || status === undefined) {
    return { text: "$(sync~spin) Flywheel", tooltip: "Flywheel: starting the language server…", warning: false };
  }
  const lines: string[] = [];
  const version = status.model_version ? plain(shortVersion(status.model_version)) : undefined;
  lines.push(
    status.model_version
      ? `Model: ${plain(status.model_version)}`
      : "Model: not known yet (shown after the first completion)",
  );
  if (status.backend_url) {
    const state =
      status.backend === "ok"
        ? "reachable"
        : status.backend === "unauthorized"
          ? "unauthorized: the token is missing or wrong"
          : status.backend === "unreachable"
            ? "unreachable"
            : "not asked yet";
    lines.push(`Backend: ${plain(status.backend_url)} (${state})`);
  }
  if (status.languages !== undefined) {
    lines.push(`Languages: ${status.languages.length ? plain(status.languages.join(", ")) : "none"}`);
  }
  if (status.backend !== undefined && status.backend !== "ok" && status.last_backend_error) {
    lines.push(`Last error: ${plain(status.last_backend_error)}`);
  }
  if (status.telemetry === false) {
    lines.push("Telemetry off: no outcome events are sent.");
  } else if (status.outbox_pending !== undefined) {
    lines.push(`Events: ${status.events_delivered ?? 0} delivered, ${status.outbox_pending} waiting`);
  }
  const here = input.here;
  const idle = here !== undefined && !here.asked;
  if (here !== undefined) {
    const language = plain(here.languageId);
    lines.unshift(
      here.excluded
        ? "No suggestions in this file: it is excluded (flywheel.exclude, or a secrets file)."
        : here.switchedOff
          ? `No suggestions for ${language}: switched off (flywheel.languages).`
          : !here.asked
            ? `No suggestions for ${language}: the backend's model does not serve it.`
            : input.manual
              ? `Suggestions for ${language} on Alt+\\ (manual mode).`
              : `Suggestions for ${language} as you type.`,
    );
  }
  lines.push("Click for the menu.");
  const warning = status.backend === "unauthorized" || status.backend === "unreachable";
  const icon = warning ? "$(warning)" : idle ? "$(circle-slash)" : "$(sparkle)";
  return {
    text: version ? `${icon} Flywheel ${version}` : `${icon} Flywheel`,
    tooltip: lines.join("\n"),
    warning,
  };
}
