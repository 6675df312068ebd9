/**
 * Flywheel for VS Code: starts `flywheel lsp`, shows its inline completions through
 * vscode-languageclient, and tells it what became of them (lsp_server/protocol.py):
 *
 * - shown: every item of ours returned for display → flywheel/didShowCompletion;
 * - accepted whole: the item's own `flywheel.accept` command, which the language client routes
 *   to the server (workspace/executeCommand);
 * - accepted word by word or line by line: our commands wrap VS Code's built-ins on the same
 *   keys and send flywheel/didPartiallyAcceptCompletion with the growing total;
 * - dismissed (Escape): flywheel/didRejectCompletion, then the built-in hide.
 *
 * It asks only where the model serves the language and the user has not switched it off
 * (languages.ts), never for excluded files (whose text is not even sent to the server), and in
 * manual mode only on Alt+\. The token lives in SecretStorage (token.ts).
 *
 * Stable API only. Logic that needs no editor lives in the plain modules next to this one.
 */

import * as fs from "node:fs";
import * as os from "node:os";
import * as vscode from "vscode";
import {
  CloseAction,
  DidChangeConfigurationNotification,
  ErrorAction,
  LanguageClient,
  type LanguageClientOptions,
  MessageType,
  RevealOutputChannelOn,
  type ServerOptions,
  ShowMessageNotification,
  State,
} from "vscode-languageclient/node";

import { SuggestionMemory, completionIdOf, type Suggestion } from "./memory";
import { matchPrefix, predictAccepted, type PartKind } from "./partial";
import { Backoff, Problems, type ProblemKind } from "./problems";
import { isExcluded, shouldAsk, userChoice, withLanguage, type TriggerMode } from "./languages";
import { DID_CHANGE_STATUS, DID_PARTIALLY_ACCEPT, DID_REJECT, DID_SHOW, STATUS_REQUEST } from "./protocol";
import {
  SECTION,
  configurationSettings,
  dashboardUrl,
  initializationOptions,
  planChange,
  readSettings,
  resolveExecutable,
  type FlywheelSettings,
} from "./settings";
import { formatStatus, parseStatus, parseStatusChange, type Phase, type ServerStatus } from "./status";
import {
  LEGACY_TOKEN_SETTING,
  TOKEN_SECRET,
  planTokenMigration,
  tokenInput,
  validateToken,
  type Scope,
} from "./token";


const BUILTIN_NEXT_WORD = "editor.action.inlineSuggest.acceptNextWord";
const BUILTIN_NEXT_LINE = "editor.action.inlineSuggest.acceptNextLine";
const BUILTIN_HIDE = "editor.action.inlineSuggest.hide";

const ACTIVE_CONTEXT = "flywheel.active";
const STATUS_POLL_MS = 10_000;
// A server that stays up this long is healthy again: the next crash starts the backoff afresh.
const HEALTHY_AFTER_MS = 60_000;
// How long to wait for the document change of a partial acceptance to reach the extension host.
const EDIT_WAIT_MS = 300;

let flywheel: Flywheel | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  flywheel = new Flywheel(context);
  await flywheel.activate();
}

export async function deactivate(): Promise<void> {
  await flywheel?.dispose();
  flywheel = undefined;
}

/** The language client with VS Code's notifications silenced: its errors go to the output
 * channel only, and the extension says once what is wrong (Problems). */
class QuietLanguageClient extends LanguageClient {
  override error(message: string, data?: unknown, _showNotification?: boolean | "force"): void {
    super.error(message, data, false);
  }
}

class Flywheel {
  private readonly log: vscode.LogOutputChannel;
  private readonly statusItem: vscode.StatusBarItem;
  private readonly memory = new SuggestionMemory();
  private readonly problems = new Problems();
  private readonly backoff = new Backoff();
  private settings: FlywheelSettings;
  // SecretStorage is asynchronous: the last token read from it.
  private token = "";
  private client: QuietLanguageClient | undefined;
  private phase: Phase = "off";
  private serverStatus: ServerStatus | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private healthyTimer: NodeJS.Timeout | undefined;
  private refreshSoon: NodeJS.Timeout | undefined;
  // Serializes start/stop/restart so that two clients never run at once.
  private lifecycle: Promise<void> = Promise.resolve();
  private generation = 0;
  private readonly lostClients = new WeakSet<LanguageClient>();
  private disposed = false;

  constructor(private readonly context: vscode.ExtensionContext) {
    this.log = vscode.window.createOutputChannel("Flywheel", { log: true });
    this.statusItem = vscode.window.createStatusBarItem("flywheel.status", vscode.StatusBarAlignment.Right, 100);
    this.statusItem.name = "Flywheel";
    this.statusItem.command = "flywheel.menu";
    this.settings = this.readSettings();
  }

  async activate(): Promise<void> {
    const register = (id: string, run: (...args: unknown[]) => unknown): void => {
      this.context.subscriptions.push(vscode.commands.registerCommand(id, run));
    };
    register("flywheel.menu", () => this.showMenu());
    register("flywheel.toggle", () => this.toggle());
    register("flywheel.toggleLanguage", (languageId?: unknown) =>
      this.toggleLanguage(typeof languageId === "string" ? languageId : undefined),
    );
    register("flywheel.setToken", () => this.setToken());
    register("flywheel.openDashboard", () => this.openDashboard());
    register("flywheel.showOutput", () => this.log.show(true));
    register("flywheel.restart", () => this.restart(true));
    register("flywheel.acceptNextWord", () => this.acceptPart(BUILTIN_NEXT_WORD, "word"));
    register("flywheel.acceptNextLine", () => this.acceptPart(BUILTIN_NEXT_LINE, "line"));
    register("flywheel.hideSuggestion", () => this.hide());
    this.context.subscriptions.push(
      this.log,
      this.statusItem,
      vscode.workspace.onDidChangeConfiguration((e) => {
        if (e.affectsConfiguration(SECTION)) {
          this.onSettingsChanged();
        }
      }),
      // telemetry.telemetryLevel "off" stops outcome events as flywheel.telemetry false does.
      vscode.env.onDidChangeTelemetryEnabled(() => this.onSettingsChanged()),
      this.context.secrets.onDidChange((e) => {
        if (e.key === TOKEN_SECRET) {
          void this.reloadToken();
        }
      }),
      vscode.window.onDidChangeActiveTextEditor(() => this.render()),
    );
    this.statusItem.show();
    this.render();
    try {
      await this.migrateToken();
      this.token = (await this.context.secrets.get(TOKEN_SECRET)) ?? "";
    } catch (error) {
      this.log.error(`could not read the token from the secret storage: ${String(error)}`);
    }
    this.settings = this.readSettings();
    if (this.settings.enable) {
      this.start();
    }
  }

  async dispose(): Promise<void> {
    this.disposed = true;
    this.clearTimers();
    await this.enqueue(() => this.stopClient());
  }

  // -- settings ---------------------------------------------------------------------------

  private readSettings(): FlywheelSettings {
    const config = vscode.workspace.getConfiguration(SECTION);
    return readSettings((key) => config.get(key), {
      token: this.token,
      editorTelemetry: vscode.env.isTelemetryEnabled,
    });
  }

  // -- the token ----------------------------------------------------------------------------

  /** A token an older version kept in settings.json moves to SecretStorage, once; the setting is
   * removed. A workspace's own settings count only in a trusted workspace. */
  private async migrateToken(): Promise<void> {
    const config = vscode.workspace.getConfiguration(SECTION);
    const inspected = config.inspect<string>(LEGACY_TOKEN_SETTING);
    const trusted = vscode.workspace.isTrusted;
    const plan = planTokenMigration(
      inspected && {
        globalValue: inspected.globalValue,
        workspaceValue: trusted ? inspected.workspaceValue : undefined,
        workspaceFolderValue: trusted ? inspected.workspaceFolderValue : undefined,
      },
      await this.context.secrets.get(TOKEN_SECRET),
    );
    if (plan.store !== undefined) {
      await this.context.secrets.store(TOKEN_SECRET, plan.store);
      this.log.info("moved the token from settings.json to the secret storage");
    }
    const targets: Record<Scope, vscode.ConfigurationTarget> = {
      global: vscode.ConfigurationTarget.Global,
      workspace: vscode.ConfigurationTarget.Workspace,
      workspaceFolder: vscode.ConfigurationTarget.WorkspaceFolder,
    };
    for (const scope of plan.clear) {
      try {
        await config.update(LEGACY_TOKEN_SETTING, undefined, targets[scope]);
      } catch (error) {
        this.log.warn(`could not remove flywheel.token from the ${scope} settings: ${String(error)}`);
      }
    }
  }

  private async reloadToken(): Promise<void> {
    this.token = (await this.context.secrets.get(TOKEN_SECRET)) ?? "";
    this.onSettingsChanged();
  }

  private async setToken(): Promise<void> {
    const answer = await vscode.window.showInputBox({
      title: "Flywheel: Set Token",
      prompt: "The client token of your Flywheel backend (flywheel token create). Empty removes it.",
      password: true,
      ignoreFocusOut: true,
      validateInput: validateToken,
    });
    const input = tokenInput(answer);
    if (input.kind === "set") {
      await this.context.secrets.store(TOKEN_SECRET, input.token);
    } else if (input.kind === "delete") {
      await this.context.secrets.delete(TOKEN_SECRET);
    } else {
      return;
    }
    // onDidChange follows, but the problem is cleared at once: the next status says again.
    this.problems.clear("unauthorized");
    await this.reloadToken();
  }

  private onSettingsChanged(): void {
    const before = this.settings;
    this.settings = this.readSettings();
    const plan = planChange(before, this.settings);
    this.log.info(`settings changed: ${plan}`);
    switch (plan) {
      case "start":
      case "restart":
        this.restart(false);
        break;
      case "stop":
        this.stop();
        break;
      case "notify":
        void this.sendConfiguration();
        break;
      case "none":
        break;
    }
  }

  private async sendConfiguration(): Promise<void> {
    const client = this.client;
    if (client === undefined || !client.isRunning()) {
      return; // a client started later gets the settings as initializationOptions
    }
    try {
      await client.sendNotification(DidChangeConfigurationNotification.type, {
        settings: configurationSettings(this.settings),
      });
      this.scheduleRefresh();
    } catch (error) {
      this.log.warn(`could not send the new settings: ${String(error)}`);
    }
  }

  // -- the language server's lifecycle ----------------------------------------------------

  private enqueue(step: () => Promise<void>): Promise<void> {
    this.lifecycle = this.lifecycle.then(step, step).catch((error) => {
      this.log.error(`language server lifecycle: ${String(error)}`);
    });
    return this.lifecycle;
  }

  private start(): void {
    void this.enqueue(() => this.startClient());
  }

  private stop(): void {
    this.clearTimers();
    void this.enqueue(async () => {
      await this.stopClient();
      this.problems.clear("notFound");
      this.problems.clear("crashed");
      this.problems.clear("backend");
      this.problems.clear("unauthorized");
      this.phase = "off";
      this.render();
    });
  }

  private restart(byUser: boolean): void {
    this.clearTimers();
    if (byUser) {
      this.backoff.reset();
    }
    void this.enqueue(async () => {
      await this.stopClient();
      if (this.settings.enable) {
        await this.startClient();
      } else {
        this.phase = "off";
        this.render();
      }
    });
  }

  private async startClient(): Promise<void> {
    if (this.disposed || !this.settings.enable || this.client !== undefined) {
      return;
    }
    const generation = ++this.generation;
    this.phase = "starting";
    const workspaceFolder = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
    const command = resolveExecutable(this.settings.serverPath, {
      home: os.homedir(),
      workspaceFolder,
      searchPath: process.env.PATH,
      pathExt: process.env.PATHEXT,
      platform: process.platform,
      isFile,
    });
    if (command === undefined) {
      this.trouble(
        "notFound",
        `Flywheel: the language server "${this.settings.serverPath}" was not found. ` +
          "Install Flywheel or set flywheel.serverPath; completions are off until then.",
      );
      this.phase = "retrying";
      this.render();
      this.scheduleRetry(generation);
      return;
    }
    this.problems.clear("notFound");
    this.render();

    const serverOptions: ServerOptions = {
      command,
      // No transport: TransportKind.stdio would append --stdio, which `flywheel lsp` refuses;
      // without one the client still talks over the process's stdin and stdout.
      args: ["lsp"],
      options: workspaceFolder ? { cwd: workspaceFolder } : undefined,
    };
    const clientOptions: LanguageClientOptions = {
      documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
      initializationOptions: initializationOptions(this.settings),
      outputChannel: this.log,
      revealOutputChannelOn: RevealOutputChannelOn.Never,
      errorHandler: {
        error: (_error, _message, count) => ({
          action: count !== undefined && count <= 3 ? ErrorAction.Continue : ErrorAction.Shutdown,
          handled: true,
        }),
        // Restarts are ours (quiet, with backoff): see lost().
        closed: () => ({ action: CloseAction.DoNotRestart, handled: true }),
      },
      middleware: {
        provideInlineCompletionItems: async (document, position, context, token, next) => {
          if (!this.wanted(document, context.triggerKind)) {
            return null;
          }
          const result = await next(document, position, context, token);
          this.onItemsReturned(document, position, result);
          return result;
        },
        // An excluded file's text never reaches the language server.
        didOpen: (document, next) => (this.excluded(document) ? Promise.resolve() : next(document)),
        didChange: (event, next) => (this.excluded(event.document) ? Promise.resolve() : next(event)),
        didSave: (document, next) => (this.excluded(document) ? Promise.resolve() : next(document)),
        didClose: (document, next) => (this.excluded(document) ? Promise.resolve() : next(document)),
        willSave: (event, next) => (this.excluded(event.document) ? Promise.resolve() : next(event)),
        willSaveWaitUntil: (event, next) => (this.excluded(event.document) ? Promise.resolve([]) : next(event)),
        workspace: {
          // The server pulls its section only when a push carries no settings; answer with the
          // same filtered options (empty settings left out), never the raw settings.
          configuration: (params, token, next) => {
            if (params.items.every((item) => item.section === SECTION)) {
              return params.items.map(() => initializationOptions(this.settings));
            }
            return next(params, token);
          },
        },
      },
    };
    const client = new QuietLanguageClient("flywheel", "Flywheel", serverOptions, clientOptions);
    this.client = client;
    this.memory.clear();
    const didNotStart = `Flywheel: the language server (${command} lsp) did not start. See the Flywheel output.`;
    let reachedRunning = false;
    client.onNotification(DID_CHANGE_STATUS, (params: unknown) => {
      if (client === this.client) {
        this.onStatusChange(params);
      }
    });
    // The server says a refused token once in words for clients that do not read its status;
    // this one says it itself, with a Set Token action (showBackendState).
    client.onNotification(ShowMessageNotification.type, (message) => {
      this.log.info(`language server: ${message.message}`);
      if (/unauthori[sz]ed|refused the token/i.test(message.message)) {
        return;
      }
      const show =
        message.type === MessageType.Error
          ? vscode.window.showErrorMessage
          : message.type === MessageType.Warning
            ? vscode.window.showWarningMessage
            : vscode.window.showInformationMessage;
      void show(message.message);
    });
    client.onDidChangeState((e) => {
      if (e.newState === State.Running) {
        reachedRunning = true;
      } else if (e.newState === State.Stopped) {
        this.lost(client, generation, reachedRunning ? undefined : didNotStart);
      }
    });
    try {
      await client.start();
    } catch (error) {
      this.log.error(`the language server did not start: ${String(error)}`);
      this.lost(client, generation, didNotStart);
      return;
    }
    if (this.client !== client || generation !== this.generation) {
      return;
    }
    this.phase = "running";
    await vscode.commands.executeCommand("setContext", ACTIVE_CONTEXT, true);
    this.log.info(`language server started: ${command} lsp`);
    this.healthyTimer = setTimeout(() => {
      this.backoff.reset();
      if (this.problems.clear("crashed")) {
        this.render();
      }
    }, HEALTHY_AFTER_MS);
    this.render();
    this.pollStatus();
  }

  private async stopClient(): Promise<void> {
    this.generation += 1;
    const client = this.client;
    this.client = undefined;
    this.serverStatus = undefined;
    await vscode.commands.executeCommand("setContext", ACTIVE_CONTEXT, false);
    if (client !== undefined) {
      await disposeQuietly(client);
    }
  }

  /** The server's process ended (or never started) without being asked to: say so if it keeps
   * happening, and start it again after a backoff. Once per client. */
  private lost(client: LanguageClient, generation: number, message?: string): void {
    if (this.lostClients.has(client) || generation !== this.generation || this.disposed) {
      return;
    }
    this.lostClients.add(client);
    this.log.warn("the language server stopped unexpectedly");
    if (this.healthyTimer !== undefined) {
      clearTimeout(this.healthyTimer);
      this.healthyTimer = undefined;
    }
    // A single crash after a healthy run is only logged; repeated ones are said once.
    if (message !== undefined || this.backoff.attempts > 0) {
      this.trouble(
        "crashed",
        message ?? "Flywheel: the language server keeps stopping. Restarting it in the background; see the Flywheel output.",
      );
    }
    void this.enqueue(async () => {
      await new Promise((resolve) => setTimeout(resolve, 0)); // let the client finish its own handling
      if (this.client === client) {
        this.client = undefined;
        this.serverStatus = undefined;
        await vscode.commands.executeCommand("setContext", ACTIVE_CONTEXT, false);
      }
      await disposeQuietly(client);
      if (generation !== this.generation) {
        return; // stopped or restarted meanwhile
      }
      this.phase = "retrying";
      this.render();
      this.scheduleRetry(generation);
    });
  }

  private scheduleRetry(generation: number): void {
    if (this.disposed || !this.settings.enable || generation !== this.generation) {
      return;
    }
    if (this.retryTimer !== undefined) {
      clearTimeout(this.retryTimer);
    }
    const delay = this.backoff.next();
    this.log.info(`retrying the language server in ${Math.round(delay / 1000)} s`);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (generation === this.generation) {
        this.start();
      }
    }, delay);
  }

  private clearTimers(): void {
    for (const timer of [this.retryTimer, this.pollTimer, this.healthyTimer, this.refreshSoon]) {
      if (timer !== undefined) {
        clearTimeout(timer);
      }
    }
    this.retryTimer = this.pollTimer = this.healthyTimer = this.refreshSoon = undefined;
  }

  // -- status -------------------------------------------------------------------------------

  private pollStatus(): void {
    if (this.pollTimer !== undefined) {
      clearTimeout(this.pollTimer);
    }
    void this.refreshStatus().finally(() => {
      if (!this.disposed && this.client !== undefined) {
        this.pollTimer = setTimeout(() => this.pollStatus(), STATUS_POLL_MS);
      }
    });
  }

  /** Soon after a completion (the model version is known from the first one on). */
  private scheduleRefresh(): void {
    if (this.refreshSoon === undefined) {
      this.refreshSoon = setTimeout(() => {
        this.refreshSoon = undefined;
        void this.refreshStatus();
      }, 1000);
    }
  }

  private async refreshStatus(): Promise<void> {
    const client = this.client;
    if (client === undefined || client.state !== State.Running) {
      return;
    }
    let status: ServerStatus | undefined;
    try {
      status = parseStatus(await client.sendRequest(STATUS_REQUEST, null));
    } catch (error) {
      this.log.debug(`flywheel/status failed: ${String(error)}`);
      return;
    }
    if (client !== this.client || status === undefined) {
      return;
    }
    this.serverStatus = status;
    this.showBackendState();
  }

  /** flywheel/didChangeStatus: the backend's state or the served languages changed. */
  private onStatusChange(params: unknown): void {
    const change = parseStatusChange(params);
    if (change === undefined) {
      return;
    }
    this.log.info(`status: backend ${change.backend ?? "?"}, languages ${change.languages?.join(", ") ?? "?"}`);
    this.serverStatus = { ...(this.serverStatus ?? {}), ...change };
    this.showBackendState();
  }

  private showBackendState(): void {
    const status = this.serverStatus;
    const url = status?.backend_url || this.settings.backendUrl || "the backend";
    const reason = status?.last_backend_error ? ` (${status.last_backend_error})` : "";
    if (status?.backend === "unauthorized") {
      this.problems.clear("backend");
      const how = this.settings.token ? "refuses the token" : "needs a token";
      this.trouble(
        "unauthorized",
        `Flywheel: unauthorized: the backend at ${url} ${how}${reason}. Set the client token (flywheel token create).`,
      );
    } else if (status?.backend === "unreachable") {
      this.problems.clear("unauthorized");
      this.trouble(
        "backend",
        `Flywheel: the backend at ${url} is unreachable${reason}. No completions until it is back; the editor is unaffected.`,
      );
    } else if (status?.backend === "ok") {
      const wasDown = this.problems.clear("backend");
      const wasRefused = this.problems.clear("unauthorized");
      if (wasDown || wasRefused) {
        this.log.info("the backend answers again");
      }
    }
    this.render();
  }

  /** Something is wrong: logged, shown in the status bar, and notified once. */
  private trouble(kind: ProblemKind, message: string): void {
    if (!this.problems.has(kind)) {
      this.log.warn(message); // once per episode, not on every poll
    }
    if (this.problems.raise(kind, message)) {
      const actions =
        kind === "notFound"
          ? ["Open Settings", "Show Output"]
          : kind === "unauthorized"
            ? ["Set Token", "Show Output"]
            : ["Show Output"];
      void vscode.window.showWarningMessage(message, ...actions).then((choice) => {
        if (choice === "Set Token") {
          void this.setToken();
        } else if (choice === "Open Settings") {
          void vscode.commands.executeCommand("workbench.action.openSettings", "flywheel.serverPath");
        } else if (choice === "Show Output") {
          this.log.show(true);
        }
      });
    }
    this.render();
  }

  private render(): void {
    const phase: Phase = this.settings.enable ? this.phase : "off";
    const document = vscode.window.activeTextEditor?.document;
    const here =
      document === undefined
        ? undefined
        : {
            languageId: document.languageId,
            asked: !this.excluded(document) && this.languageOn(document.languageId),
            excluded: this.excluded(document),
            switchedOff: userChoice(this.settings.languages, document.languageId) === false,
          };
    const view = formatStatus({
      phase,
      status: this.serverStatus,
      problem: this.problems.current(),
      here,
      manual: this.settings.trigger === "manual",
    });
    this.statusItem.text = view.text;
    this.statusItem.tooltip = view.tooltip;
    this.statusItem.backgroundColor = view.warning ? new vscode.ThemeColor("statusBarItem.warningBackground") : undefined;
  }

  // -- the menu -----------------------------------------------------------------------------

  private async showMenu(): Promise<void> {
    type Entry = vscode.QuickPickItem & { run: () => unknown };
    const languageId = vscode.window.activeTextEditor?.document.languageId;
    const entries: Entry[] = [
      {
        label: this.settings.enable ? "$(circle-slash) Disable completions" : "$(check) Enable completions",
        run: () => this.toggleGlobally(),
      },
      ...(languageId === undefined || !this.settings.enable
        ? []
        : [
            {
              label: this.languageOn(languageId)
                ? `$(circle-slash) Disable for ${languageId}`
                : `$(check) Enable for ${languageId}`,
              run: () => this.toggleLanguage(languageId),
            },
          ]),
      { label: "$(key) Set token", run: () => this.setToken() },
      { label: "$(dashboard) Open dashboard", detail: this.dashboard(), run: () => this.openDashboard() },
      { label: "$(output) Show output", run: () => this.log.show(true) },
      { label: "$(debug-restart) Restart language server", run: () => this.restart(true) },
      {
        label: "$(gear) Settings",
        run: () => vscode.commands.executeCommand("workbench.action.openSettings", "@ext:flywheel.flywheel-vscode"),
      },
    ];
    const choice = await vscode.window.showQuickPick(entries, { title: "Flywheel", placeHolder: this.statusItem.text });
    await choice?.run();
  }

  /** "Flywheel: Toggle": for the language of the file in front, everywhere, or as you type. */
  private async toggle(): Promise<void> {
    if (!this.settings.enable) {
      await this.toggleGlobally();
      return;
    }
    type Entry = vscode.QuickPickItem & { run: () => Promise<void> };
    const languageId = vscode.window.activeTextEditor?.document.languageId;
    const entries: Entry[] = [
      ...(languageId === undefined
        ? []
        : [
            {
              label: `${this.languageOn(languageId) ? "Disable" : "Enable"} for ${languageId}`,
              run: () => this.toggleLanguage(languageId),
            },
          ]),
      { label: "Disable everywhere", run: () => this.toggleGlobally() },
      this.settings.trigger === "manual"
        ? { label: "Suggest as you type", run: () => this.setTrigger("automatic") }
        : { label: "Suggest only when asked (Alt+\\)", run: () => this.setTrigger("manual") },
    ];
    const choice = await vscode.window.showQuickPick(entries, { title: "Flywheel: Toggle" });
    await choice?.run();
  }

  private async setTrigger(mode: TriggerMode): Promise<void> {
    const config = vscode.workspace.getConfiguration(SECTION);
    await config.update("trigger", mode, settingTarget(config.inspect("trigger")));
  }

  private async toggleGlobally(): Promise<void> {
    const config = vscode.workspace.getConfiguration(SECTION);
    await config.update("enable", !this.settings.enable, settingTarget(config.inspect("enable")));
  }

  /** Switches one language in flywheel.languages (the file in front's by default). */
  private async toggleLanguage(languageId = vscode.window.activeTextEditor?.document.languageId): Promise<void> {
    if (languageId === undefined) {
      return;
    }
    const config = vscode.workspace.getConfiguration(SECTION);
    const on = !this.languageOn(languageId);
    await config.update("languages", withLanguage(this.settings.languages, languageId, on), settingTarget(config.inspect("languages")));
    this.log.info(`suggestions for ${languageId}: ${on ? "on" : "off"}`);
  }

  private languageOn(languageId: string): boolean {
    return shouldAsk(languageId, this.settings.languages, this.serverStatus?.languages);
  }

  /** Whether to ask the server for a suggestion here. */
  private wanted(document: vscode.TextDocument, trigger: vscode.InlineCompletionTriggerKind): boolean {
    if (this.excluded(document) || !this.languageOn(document.languageId)) {
      return false;
    }
    if (this.settings.trigger === "manual" && trigger === vscode.InlineCompletionTriggerKind.Automatic) {
      // VS Code asks again on every keystroke; typing into a suggestion that was asked for keeps it.
      const editor = vscode.window.activeTextEditor;
      const live = editor?.document === document ? this.liveSuggestion(editor) : undefined;
      return live !== undefined && live.units < live.suggestion.text.length;
    }
    return true;
  }

  private excluded(document: vscode.TextDocument): boolean {
    const roots = (vscode.workspace.workspaceFolders ?? []).map((folder) => folder.uri.fsPath);
    return document.uri.scheme === "file" && isExcluded(document.uri.fsPath, this.settings.exclude, roots);
  }

  private dashboard(): string {
    return dashboardUrl(this.settings.backendUrl, this.serverStatus?.backend_url);
  }

  private async openDashboard(): Promise<void> {
    await vscode.env.openExternal(vscode.Uri.parse(this.dashboard()));
  }

  // -- what became of each suggestion -------------------------------------------------------

  private onItemsReturned(
    document: vscode.TextDocument,
    position: vscode.Position,
    result: vscode.InlineCompletionItem[] | vscode.InlineCompletionList | null | undefined,
  ): void {
    const items = Array.isArray(result) ? result : result?.items ?? [];
    for (const item of items) {
      const completionId = completionIdOf(item);
      if (completionId === undefined || typeof item.insertText !== "string") {
        continue;
      }
      const start = item.range?.start ?? position;
      this.memory.returned(completionId, document.uri.toString(), start.line, start.character, item.insertText);
      if (this.memory.markShown(completionId)) {
        this.notify(DID_SHOW, { completionId });
      }
      this.scheduleRefresh();
      break; // VS Code shows one suggestion at a time; the server sends one
    }
  }

  /** The remembered suggestion if it is the one on screen in `editor`: the document holds a
   * prefix of it from its start to the cursor. */
  private liveSuggestion(editor: vscode.TextEditor): { suggestion: Suggestion; units: number } | undefined {
    const suggestion = this.memory.last();
    if (suggestion === undefined || editor.document.uri.toString() !== suggestion.uri) {
      return undefined;
    }
    const units = this.unitsAtSpot(editor, suggestion);
    return units === undefined ? undefined : { suggestion, units };
  }

  /** How much of the suggestion the document holds at its spot, up to the cursor; undefined if
   * the cursor is elsewhere or something else was typed there. */
  private unitsAtSpot(editor: vscode.TextEditor, suggestion: Suggestion): number | undefined {
    const start = new vscode.Position(suggestion.line, suggestion.character);
    const cursor = editor.selection.active;
    if (cursor.isBefore(start) || !editor.selection.isEmpty) {
      return undefined;
    }
    const atSpot = editor.document.getText(new vscode.Range(start, cursor));
    const match = matchPrefix(suggestion.text, atSpot);
    return match.complete ? match.units : undefined;
  }

  private async acceptPart(builtin: string, kind: PartKind): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    const live = editor && this.client !== undefined ? this.liveSuggestion(editor) : undefined;
    if (editor === undefined || live === undefined) {
      await vscode.commands.executeCommand(builtin);
      return;
    }
    const { suggestion } = live;
    const document = editor.document;
    const versionBefore = document.version;
    const changed = nextChange(document);
    await vscode.commands.executeCommand(builtin);
    if (document.version === versionBefore) {
      await changed.wait(EDIT_WAIT_MS);
    }
    changed.dispose();
    let total = this.unitsAtSpot(editor, suggestion);
    if (total === undefined) {
      // The document is not readable as a prefix (e.g. the editor added text of its own): the
      // editor inserted what its own splitting rule gives, which we mirror.
      total = document.version === versionBefore ? undefined : predictAccepted(suggestion.text, live.units, kind);
    }
    if (total === undefined || total >= suggestion.text.length) {
      return; // nothing inserted, or all of it: the item's flywheel.accept command reports that
    }
    if (this.memory.markAccepted(suggestion.completionId, total)) {
      this.notify(DID_PARTIALLY_ACCEPT, { completionId: suggestion.completionId, acceptedLength: total });
    }
  }

  private async hide(): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    const live = editor && this.client !== undefined ? this.liveSuggestion(editor) : undefined;
    if (live !== undefined && this.memory.markRejected(live.suggestion.completionId)) {
      this.notify(DID_REJECT, { completionId: live.suggestion.completionId });
    }
    await vscode.commands.executeCommand(BUILTIN_HIDE);
  }

  private notify(method: string, params: Record<string, unknown>): void {
    const client = this.client;
    if (client === undefined || !client.isRunning()) {
      return;
    }
    client.sendNotification(method, params).catch((error: unknown) => {
      this.log.debug(`${method} not sent: ${String(error)}`);
    });
  }
}

/** Where a setting is set decides what to change; by default the user's settings. */
function settingTarget(inspected: { workspaceFolderValue?: unknown; workspaceValue?: unknown } | undefined): vscode.ConfigurationTarget {
  return inspected?.workspaceFolderValue !== undefined
    ? vscode.ConfigurationTarget.WorkspaceFolder
    : inspected?.workspaceValue !== undefined
      ? vscode.ConfigurationTarget.Workspace
      : vscode.ConfigurationTarget.Global;
}

function isFile(candidate: string): boolean {
  try {
    return fs.statSync(candidate).isFile();
  } catch {
    return false;
  }
}

async function disposeQuietly(client: LanguageClient): Promise<void> {
  try {
    await client.dispose(2000);
  } catch {
    // a client that never started, or a server already gone
  }
}

/** Resolves on the next change of `document` (or after a timeout). */
function nextChange(document: vscode.TextDocument): { wait: (ms: number) => Promise<void>; dispose: () => void } {
  let resolve: (() => void) | undefined;
  const seen = new Promise<void>((r) => {
    resolve = r;
  });
  const listener = vscode.workspace.onDidChangeTextDocument((e) => {
    if (e.document === document) {
      resolve?.();
    }
  });
  return {
    wait: (ms) => Promise.race([seen, new Promise<void>((r) => setTimeout(r, ms))]),
    dispose: () => listener.dispose(),
  };
}
