/**
 * The contract with the real language server, spoken as this extension speaks it: the options it
 * sends, the item it gets, the notifications it sends (with the lengths the partial-acceptance
 * logic computes), and the events that reach a stand-in backend.
 *
 * Needs the `flywheel` executable: $FLYWHEEL_LSP, else the repository's .venv. Skipped without it.
 */

import assert from "node:assert/strict";
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";

import { completionIdOf } from "../memory";
import { matchPrefix, predictAccepted } from "../partial";
import { DEFAULTS, initializationOptions } from "../settings";
import { DID_CHANGE_STATUS } from "../protocol";
import { parseStatus, parseStatusChange } from "../status";

function flywheelExecutable(): string | undefined {
  const candidates = [
    process.env.FLYWHEEL_LSP,
    path.resolve(__dirname, "..", "..", "..", "..", "..", ".venv", "bin", "flywheel"),
  ];
  return candidates.find((c): c is string => !!c && fs.existsSync(c));
}

/** A minimal JSON-RPC client over stdio with LSP's Content-Length framing. */
class Rpc {
  private buffer = Buffer.alloc(0);
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  /** Notifications from the server, in order. */
  readonly heard: Array<{ method: string; params: unknown }> = [];

  constructor(private readonly child: ChildProcessWithoutNullStreams) {
    child.stdout.on("data", (chunk: Buffer) => this.onData(chunk));
    child.on("exit", () => {
      for (const p of this.pending.values()) {
        p.reject(new Error("language server exited"));
      }
    });
  }

  request(method: string, params: unknown): Promise<unknown> {
    const id = this.nextId++;
    this.write({ jsonrpc: "2.0", id, method, params });
    return new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
  }

  notify(method: string, params: unknown): void {
    this.write({ jsonrpc: "2.0", method, params });
  }

  private write(message: unknown): void {
    const body = Buffer.from(JSON.stringify(message), "utf8");
    this.child.stdin.write(`Content-Length: ${body.length}\r\n\r\n`);
    this.child.stdin.write(body);
  }

  private onData(chunk: Buffer): void {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    for (;;) {
      const headerEnd = this.buffer.indexOf("\r\n\r\n");
      if (headerEnd < 0) {
        return;
      }
      const match = /Content-Length: (\d+)/i.exec(this.buffer.subarray(0, headerEnd).toString("ascii"));
      const length = Number(match?.[1] ?? 0);
      if (this.buffer.length < headerEnd + 4 + length) {
        return;
      }
      const body = this.buffer.subarray(headerEnd + 4, headerEnd + 4 + length).toString("utf8");
      this.buffer = this.buffer.subarray(headerEnd + 4 + length);
      const message = JSON.parse(body) as {
        id?: number;
        method?: string;
        params?: unknown;
        result?: unknown;
        error?: { message: string };
      };
      if (message.id === undefined && message.method !== undefined) {
        this.heard.push({ method: message.method, params: message.params });
      } else if (message.id !== undefined && message.method !== undefined) {
        // A request from the server (e.g. workspace/configuration): answer with nothing.
        this.write({ jsonrpc: "2.0", id: message.id, result: null });
      } else if (message.id !== undefined) {
        const p = this.pending.get(message.id);
        this.pending.delete(message.id);
        if (message.error) {
          p?.reject(new Error(message.error.message));
        } else {
          p?.resolve(message.result);
        }
      }
    }
  }
}

const executable = flywheelExecutable();
const SUGGESTION = "alpha beta(gamma)";

/** The language server on stdio, initialized with this extension's options for `backendUrl`. */
async function startServer(
  backendUrl: string,
  stateDir: string,
  over: Partial<typeof DEFAULTS> = {},
): Promise<{ child: ChildProcessWithoutNullStreams; rpc: Rpc; initializeResult: { capabilities: Record<string, unknown> } }> {
  const child = spawn(executable as string, ["lsp"], { stdio: "pipe", env: { ...process.env, HF_HUB_OFFLINE: "1" } });
  child.stderr.resume();
  const rpc = new Rpc(child);
  const options = {
    ...initializationOptions({ ...DEFAULTS, backendUrl, ...over }),
    stateDir,
    debounceMs: 0,
    survivalDelaysS: [],
  };
  const initializeResult = (await rpc.request("initialize", {
    processId: process.pid,
    rootUri: null,
    capabilities: { textDocument: { inlineCompletion: { dynamicRegistration: false } } },
    initializationOptions: options,
  })) as { capabilities: Record<string, unknown> };
  rpc.notify("initialized", {});
  return { child, rpc, initializeResult };
}

async function stopServer(rpc: Rpc, child: ChildProcessWithoutNullStreams): Promise<void> {
  try {
    await rpc.request("shutdown", null);
    rpc.notify("exit", null);
  } catch {
    // already gone
  }
  child.kill();
}

async function heardStatus(rpc: Rpc, want: (change: ReturnType<typeof parseStatusChange>) => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (rpc.heard.some((n) => n.method === DID_CHANGE_STATUS && want(parseStatusChange(n.params)))) {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.fail(`no such ${DID_CHANGE_STATUS}; heard ${JSON.stringify(rpc.heard)}`);
}

describe("the language server, as this extension talks to it", { skip: executable ? false : "no flywheel executable" }, () => {
  let child: ChildProcessWithoutNullStreams;
  let rpc: Rpc;
  let backend: http.Server;
  let stateDir: string;
  const events: Array<Record<string, unknown>> = [];
  let initializeResult: { capabilities: Record<string, unknown> };
  let served = 0;
  const asked: string[] = [];

  before(async () => {
    backend = http.createServer((req, res) => {
      let body = "";
      req.on("data", (c: Buffer) => (body += c.toString("utf8")));
      req.on("end", () => {
        res.setHeader("Content-Type", "application/json");
        asked.push(`${req.method} ${req.url}`);
        if (req.url === "/v1/model") {
          res.end(JSON.stringify({
            base_model: "tiny",
            live_version: "v-test-7",
            fim: "none",
            temperature: 0.2,
            languages: ["python"],
          }));
        } else if (req.url === "/v1/complete") {
          res.end(JSON.stringify({
            completion_id: `cmp-000${++served}`,
            text: SUGGESTION,
            model_version: "v-test-7",
            token_logprobs: [-0.1],
            latency_ms: 1,
          }));
        } else if (req.url === "/v1/events") {
          const batch = JSON.parse(body) as { events: Array<Record<string, unknown>> };
          events.push(...batch.events);
          res.end(JSON.stringify({ stored: batch.events.length, duplicates: 0, refused: [] }));
        } else {
          res.statusCode = 404;
          res.end("{}");
        }
      });
    });
    await new Promise<void>((resolve) => backend.listen(0, "127.0.0.1", resolve));
    const port = (backend.address() as AddressInfo).port;
    stateDir = fs.mkdtempSync(path.join(os.tmpdir(), "flywheel-vscode-test-"));
    ({ child, rpc, initializeResult } = await startServer(`http://127.0.0.1:${port}`, stateDir, {
      languages: { markdown: false, go: true },
      exclude: ["**/private/**"],
    }));
  });

  after(async () => {
    await stopServer(rpc, child);
    backend.close();
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  it("announces inline completion and the flywheel.accept command the language client registers", () => {
    const caps = initializeResult.capabilities;
    assert.ok(caps.inlineCompletionProvider, "inlineCompletionProvider");
    const commands = (caps.executeCommandProvider as { commands?: string[] } | undefined)?.commands ?? [];
    assert.ok(commands.includes("flywheel.accept"), `executeCommandProvider.commands: ${JSON.stringify(commands)}`);
  });

  it("serves an item whose command carries the completion id, and takes our notifications", async () => {
    const uri = "file:///tmp/flywheel-vscode-test.py";
    const prefix = "x = ";
    rpc.notify("textDocument/didOpen", { textDocument: { uri, languageId: "python", version: 1, text: prefix } });
    const answer = (await rpc.request("textDocument/inlineCompletion", {
      textDocument: { uri },
      position: { line: 0, character: prefix.length },
      context: { triggerKind: 2 },
    })) as { items: Array<{ insertText: string; command?: unknown; range?: unknown }> };
    assert.equal(answer.items.length, 1);
    const item = answer.items[0];
    assert.equal(item.insertText, SUGGESTION);
    const completionId = completionIdOf(item);
    assert.equal(completionId, "cmp-0001");
    rpc.notify("flywheel/didShowCompletion", { completionId });

    // acceptNextWord as VS Code does it: the editor inserts the word, the extension reads the
    // document at the suggestion's spot and reports the total.
    const predicted = predictAccepted(SUGGESTION, 0, "word");
    const inserted = SUGGESTION.slice(0, predicted);
    rpc.notify("textDocument/didChange", {
      textDocument: { uri, version: 2 },
      contentChanges: [{ range: { start: { line: 0, character: 4 }, end: { line: 0, character: 4 } }, text: inserted }],
    });
    const measured = matchPrefix(SUGGESTION, inserted);
    assert.deepEqual(measured, { units: "alpha".length, complete: true });
    rpc.notify("flywheel/didPartiallyAcceptCompletion", { completionId, acceptedLength: measured.units });

    const status = parseStatus(await rpc.request("flywheel/status", null));
    assert.equal(status?.model_version, "v-test-7");
    assert.equal(status?.backend_ok, true);

    const flushed = (await rpc.request("flywheel/flush", null)) as { pending: number };
    assert.equal(flushed.pending, 0);
    const mine = events.filter((e) => e.completion_id === completionId);
    const kinds = mine.map((e) => e.kind);
    assert.ok(kinds.includes("shown"), `events: ${JSON.stringify(kinds)}`);
    const partial = mine.find((e) => e.kind === "partially_accepted");
    assert.ok(partial, `events: ${JSON.stringify(kinds)}`);
    assert.equal(partial.accepted_chars, 5);
  });

  it("answers typing ahead with the whole suggestion over a range from where it began", async () => {
    const uri = "file:///tmp/flywheel-vscode-typed-ahead.py";
    rpc.notify("textDocument/didOpen", { textDocument: { uri, languageId: "python", version: 1, text: "" } });
    type Item = { insertText: string; command?: unknown; range?: { start: Position; end: Position } };
    type Position = { line: number; character: number };
    const ask = async (character: number) =>
      (await rpc.request("textDocument/inlineCompletion", {
        textDocument: { uri },
        position: { line: 0, character },
        context: { triggerKind: 2 }, // automatic, as while typing
      })) as { items: Item[] };
    const first = (await ask(0)).items[0];
    const completionId = completionIdOf(first);
    assert.ok(completionId);
    rpc.notify("flywheel/didShowCompletion", { completionId });
    // The user types "al": the server answers from the suggestion on screen, same id, its whole
    // text from where it began, so the extension remembers nothing of the first item.
    rpc.notify("textDocument/didChange", {
      textDocument: { uri, version: 2 },
      contentChanges: [{ range: { start: { line: 0, character: 0 }, end: { line: 0, character: 0 } }, text: "al" }],
    });
    const again = (await ask(2)).items[0];
    assert.equal(completionIdOf(again), completionId);
    assert.equal(again.insertText, SUGGESTION);
    assert.deepEqual(again.range, { start: { line: 0, character: 0 }, end: { line: 0, character: 2 } });
    // Accepting the next word inserts "pha"; the document holds "alpha" from the item's range
    // start, which is what the extension reports.
    rpc.notify("textDocument/didChange", {
      textDocument: { uri, version: 3 },
      contentChanges: [{ range: { start: { line: 0, character: 2 }, end: { line: 0, character: 2 } }, text: "pha" }],
    });
    const total = matchPrefix(again.insertText, "alpha");
    assert.equal(total.units, 5);
    rpc.notify("flywheel/didPartiallyAcceptCompletion", { completionId, acceptedLength: total.units });
    await rpc.request("flywheel/flush", null);
    const partial = events.find((e) => e.completion_id === completionId && e.kind === "partially_accepted");
    assert.ok(partial, JSON.stringify(events.filter((e) => e.completion_id === completionId).map((e) => e.kind)));
    assert.equal(partial.accepted_chars, 5);
  });

  it("says which languages it completes: the backend's, with this extension's choices applied", async () => {
    await heardStatus(rpc, (c) => c?.backend === "ok" && JSON.stringify(c.languages) === JSON.stringify(["go", "python"]));
    const status = parseStatus(await rpc.request("flywheel/status", null));
    assert.equal(status?.backend, "ok");
    assert.deepEqual(status?.languages, ["go", "python"]);
  });

  it("never sends a switched-off language or an excluded file to the backend", async () => {
    const before = asked.filter((a) => a === "POST /v1/complete").length;
    for (const [uri, languageId] of [
      ["file:///tmp/notes.md", "markdown"],
      ["file:///tmp/proj/private/app.py", "python"],
      ["file:///tmp/proj/.env", "python"],
    ]) {
      rpc.notify("textDocument/didOpen", { textDocument: { uri, languageId, version: 1, text: "API_KEY = " } });
      const answer = (await rpc.request("textDocument/inlineCompletion", {
        textDocument: { uri },
        position: { line: 0, character: 10 },
        context: { triggerKind: 1 },
      })) as { items: unknown[] } | null;
      assert.equal(answer?.items?.length ?? 0, 0, uri);
    }
    assert.equal(asked.filter((a) => a === "POST /v1/complete").length, before);
  });

  it("answers a dismissal without error", async () => {
    rpc.notify("flywheel/didRejectCompletion", { completionId: "unknown-id" });
    const status = parseStatus(await rpc.request("flywheel/status", null));
    assert.equal(status?.ready, true);
  });
});

describe("the language server with a backend that refuses the token", { skip: executable ? false : "no flywheel executable" }, () => {
  let child: ChildProcessWithoutNullStreams;
  let rpc: Rpc;
  let backend: http.Server;
  let stateDir: string;

  before(async () => {
    backend = http.createServer((req, res) => {
      req.resume();
      req.on("end", () => {
        res.statusCode = 401;
        res.setHeader("Content-Type", "application/json");
        res.end(JSON.stringify({ detail: "invalid or missing token" }));
      });
    });
    await new Promise<void>((resolve) => backend.listen(0, "127.0.0.1", resolve));
    const port = (backend.address() as AddressInfo).port;
    stateDir = fs.mkdtempSync(path.join(os.tmpdir(), "flywheel-vscode-test-"));
    ({ child, rpc } = await startServer(`http://127.0.0.1:${port}`, stateDir, { token: "wrong" }));
  });

  after(async () => {
    await stopServer(rpc, child);
    backend.close();
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  it("says unauthorized, which the extension shows as such (not unreachable)", async () => {
    const status = parseStatus(await rpc.request("flywheel/status", null));
    assert.equal(status?.backend, "unauthorized");
    await heardStatus(rpc, (c) => c?.backend === "unauthorized");
  });
});
