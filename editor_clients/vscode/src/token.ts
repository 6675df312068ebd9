/**
 * The client token lives in VS Code's SecretStorage (the OS keychain), not in settings.json,
 * which is plain text, synced, and sometimes committed. A token an older version left in
 * settings.json is moved there once. Plain module (no `vscode` import).
 */

/** SecretStorage key. */
export const TOKEN_SECRET = "flywheel.token";
/** The settings.json key older versions read the token from. */
export const LEGACY_TOKEN_SETTING = "token";

export type Scope = "global" | "workspace" | "workspaceFolder";

/** `WorkspaceConfiguration.inspect(...)`'s fields that matter here. */
export interface ScopedValues {
  globalValue?: unknown;
  workspaceValue?: unknown;
  workspaceFolderValue?: unknown;
}

export interface Migration {
  /** The token to keep in SecretStorage; undefined: leave it as it is. */
  store?: string;
  /** Where to remove the setting. */
  clear: Scope[];
}

/** What to do with a token found in settings.json: the most specific one is stored unless
 * SecretStorage already holds one (set there on purpose, it wins), and the setting is removed
 * everywhere it is set so that it does not linger in plain text. */
export function planTokenMigration(inspected: ScopedValues | undefined, stored: string | undefined): Migration {
  const scoped: [Scope, unknown][] = [
    ["workspaceFolder", inspected?.workspaceFolderValue],
    ["workspace", inspected?.workspaceValue],
    ["global", inspected?.globalValue],
  ];
  const clear = scoped.filter(([, value]) => value !== undefined).map(([scope]) => scope);
  const found = scoped
    .map(([, value]) => (typeof value === "string" ? value.trim() : ""))
    .find((value) => value !== "");
  const store = found !== undefined && !stored ? found : undefined;
  return { store, clear };
}

/** What the Set Token box's answer means: undefined (Escape) changes nothing, an empty answer
 * removes the token, anything else is the new token. */
export function tokenInput(answer: string | undefined): { kind: "keep" } | { kind: "delete" } | { kind: "set"; token: string } {
  if (answer === undefined) {
    return { kind: "keep" };
  }
  const token = answer.trim();
  return token === "" ? { kind: "delete" } : { kind: "set", token };
}

/** The Set Token box refuses what cannot be a bearer token (an HTTP header value). */
export function validateToken(answer: string): string | undefined {
  const token = answer.trim();
  if (token === "") {
    return undefined; // empty removes the token
  }
  return /^[\x21-\x7e]+$/.test(token) ? undefined : "A token is printable ASCII without spaces (flywheel token create).";
}
