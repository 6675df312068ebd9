/**
 * Where the extension asks for suggestions: the languages the backend's model serves (the
 * language server says which), less those the user switched off and plus those switched on
 * (`flywheel.languages`, a map like Copilot's `github.copilot.enable`), never in excluded files
 * (`flywheel.exclude` and the built-in secrets list), and in manual mode only when asked. The
 * rules are the language server's (lsp_server/gate.py), which applies them too. Plain module (no
 * `vscode` import).
 */

import { minimatch } from "minimatch";

/** languageId → on/off; "*" is every language not named; a language in neither follows what the
 * backend serves. */
export type LanguageMap = Readonly<Record<string, boolean>>;

export const ALL_LANGUAGES = "*";
export const DEFAULT_LANGUAGES: LanguageMap = Object.freeze({});

/** Files whose text never leaves the editor, whatever the settings say: environment files, keys
 * and credentials. The language server keeps the same list (gate.DEFAULT_EXCLUDE); this one keeps
 * them from the server itself. */
export const BUILTIN_EXCLUDES: readonly string[] = Object.freeze([
  ".env",
  ".env.*",
  "*.env",
  ".envrc",
  "*.pem",
  "*.key",
  "*.p12",
  "*.pfx",
  "*.jks",
  "*.keystore",
  "*.kdbx",
  "*.gpg",
  "id_rsa*",
  "id_dsa*",
  "id_ecdsa*",
  "id_ed25519*",
  ".netrc",
  ".pgpass",
  ".pypirc",
  ".npmrc",
  ".git-credentials",
  "credentials",
  "credentials.json",
  "**/.ssh/**",
  "**/.aws/**",
  "**/.gnupg/**",
]);

export type TriggerMode = "automatic" | "manual";

/** `flywheel.languages` from settings.json: only boolean entries count (a hand-edited "yes" is
 * dropped rather than guessed). */
export function readLanguageMap(raw: unknown): LanguageMap {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    return DEFAULT_LANGUAGES;
  }
  const map: Record<string, boolean> = {};
  for (const [language, on] of Object.entries(raw as Record<string, unknown>)) {
    if (typeof on === "boolean" && language.trim() !== "") {
      map[language.trim()] = on;
    }
  }
  return Object.freeze(map);
}

/** The user's word on a language: its entry, else "*"; undefined when they said nothing. */
export function userChoice(map: LanguageMap, languageId: string): boolean | undefined {
  return map[languageId] ?? map[ALL_LANGUAGES];
}

/** The map with one language switched. */
export function withLanguage(map: LanguageMap, languageId: string, on: boolean): LanguageMap {
  return Object.freeze({ ...map, [languageId]: on });
}

/** Whether to ask the language server for a suggestion in a document of `languageId`: the
 * user's word first, else whether it is among the languages the server says it completes
 * (`served`: the backend's, with the user's choices applied). While the server has not said
 * (an older server, or before its first status), its own check decides. */
export function shouldAsk(languageId: string, map: LanguageMap, served: readonly string[] | undefined): boolean {
  const choice = userChoice(map, languageId);
  if (choice !== undefined) {
    return choice;
  }
  return served === undefined || served.includes(languageId);
}

/** `flywheel.exclude` from settings.json: glob strings only. */
export function readExcludes(raw: unknown): string[] {
  if (!Array.isArray(raw)) {
    return [];
  }
  return raw.filter((p): p is string => typeof p === "string" && p.trim() !== "").map((p) => p.trim());
}

/** Whether a file on disk is off limits: a built-in or user glob matches it (case-sensitive;
 * `**` crosses folders, dotfiles match). A pattern without "/" (`*.sql`) matches the file name
 * anywhere; one with "/" the absolute path or the path relative to a workspace folder. */
export function isExcluded(fsPath: string, userPatterns: readonly string[], roots: readonly string[] = []): boolean {
  const slashed = (p: string): string => p.replace(/\\/g, "/");
  const file = slashed(fsPath);
  const candidates = [file];
  for (const root of roots.map(slashed)) {
    const prefix = root.endsWith("/") ? root : `${root}/`;
    if (file.startsWith(prefix)) {
      candidates.push(file.slice(prefix.length));
    }
  }
  return [...BUILTIN_EXCLUDES, ...userPatterns].some((pattern) => {
    const options = { dot: true, matchBase: !pattern.includes("/") };
    const relative = pattern.replace(/^\/+/, "");
    return candidates.some((candidate, i) => minimatch(candidate, i === 0 ? pattern : relative, options));
  });
}

export function readTriggerMode(raw: unknown): TriggerMode {
  return raw === "manual" ? "manual" : "automatic";
}
