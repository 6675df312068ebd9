/**
 * The status bar item's text. Plain module (no `vscode` import).
 */

import type { Problem } from "./problems";

/** The fields of the `flywheel/status` answer the extension reads (lsp_server/session.py). */
export interface ServerStatus {
  ready?: boolean;
  backend_url?: string;
  backend_ok?: boolean | null;
  last_backend_error?: string | null;
  model_version?: string | null;
  telemetry?: boolean;
  outbox_pending?: number;
  outbox_dropped?: number;
  events_delivered?: number;
}

export type Phase = "off" | "starting" | "running" | "retrying";

export interface StatusInput {
  phase: Phase;
  status?: ServerStatus;
  problem?: Problem;
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
    model_version: str(r.model_version) ?? null,
    telemetry: typeof r.telemetry === "boolean" ? r.telemetry : undefined,
    outbox_pending: num(r.outbox_pending),
    outbox_dropped: num(r.outbox_dropped),
    events_delivered: num(r.events_delivered),
  };
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
  if (problem !== undefined) {
    return {
      text: "$(warning) Flywheel",
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
    const state = status.backend_ok === true ? "reachable" : status.backend_ok === false ? "unreachable" : "not asked yet";
    lines.push(`Backend: ${plain(status.backend_url)} (${state})`);
  }
  if (status.backend_ok === false && status.last_backend_error) {
    lines.push(`Last error: ${plain(status.last_backend_error)}`);
  }
  if (status.telemetry === false) {
    lines.push("Telemetry off: no outcome events are sent.");
  } else if (status.outbox_pending !== undefined) {
    lines.push(`Events: ${status.events_delivered ?? 0} delivered, ${status.outbox_pending} waiting`);
  }
  lines.push("Click for the menu.");
  const warning = status.backend_ok === false;
  const icon = warning ? "$(warning)" : "$(sparkle)";
  return {
    text: version ? `${icon} Flywheel ${version}` : `${icon} Flywheel`,
    tooltip: lines.join("\n"),
    warning,
  };
}
