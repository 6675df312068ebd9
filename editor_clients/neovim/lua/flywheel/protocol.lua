-- Every message the plugin exchanges with `flywheel lsp`, one function per method: the method
-- names and their params live here and nowhere else. The contract's one source is
-- lsp_server/protocol.py (README, "For editor-client authors").
local util = require("flywheel.util")

local M = {}

M.INLINE_COMPLETION = "textDocument/inlineCompletion"
M.EXECUTE_COMMAND = "workspace/executeCommand"
M.DID_SHOW = "flywheel/didShowCompletion"
M.DID_PARTIALLY_ACCEPT = "flywheel/didPartiallyAcceptCompletion"
M.DID_REJECT = "flywheel/didRejectCompletion"
M.STATUS = "flywheel/status"
M.FLUSH = "flywheel/flush"
-- Server → client: {backend = "ok" | "unauthorized" | "unreachable", languages = {...}}, whenever
-- either changes.
M.DID_CHANGE_STATUS = "flywheel/didChangeStatus"

-- InlineCompletionTriggerKind
M.TRIGGER_INVOKED, M.TRIGGER_AUTOMATIC = 1, 2

--- textDocument/inlineCompletion at the cursor of the current window. `invoked`: the user asked.
--- Returns ok and the request id (for cancel).
function M.inline_completion(client, buf, invoked, handler)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding or "utf-16")
  params.context = { triggerKind = invoked and M.TRIGGER_INVOKED or M.TRIGGER_AUTOMATIC }
  return util.request(client, M.INLINE_COMPLETION, params, handler, buf)
end

function M.cancel(client, request_id)
  return pcall(util.cancel_request, client, request_id)
end

--- The item's command (flywheel.accept with [completionId]) after inserting it. A request, so
--- Neovim sends the pending didChange first: the text is there when it runs.
function M.execute_command(client, buf, command)
  return util.request(
    client,
    M.EXECUTE_COMMAND,
    { command = command.command, arguments = command.arguments },
    function() end,
    buf
  )
end

function M.did_show(client, completion_id)
  return pcall(util.notify, client, M.DID_SHOW, { completionId = completion_id })
end

--- `accepted_length`: UTF-16 code units of the item's insertText now in the buffer, counted
--- from the start of its range; the growing total, word after word.
function M.did_partially_accept(client, completion_id, accepted_length)
  return pcall(util.notify, client, M.DID_PARTIALLY_ACCEPT, {
    completionId = completion_id,
    acceptedLength = accepted_length,
  })
end

function M.did_reject(client, completion_id)
  return pcall(util.notify, client, M.DID_REJECT, { completionId = completion_id })
end

--- flywheel/status: handler(err, status).
function M.status(client, handler)
  return util.request(client, M.STATUS, {}, handler)
end

--- flywheel/status, waited for (:FlywheelStatus, :checkhealth): status or nil, error.
function M.status_sync(client, timeout_ms)
  return util.request_sync(client, M.STATUS, {}, timeout_ms)
end

--- flywheel/flush: deliver queued events now (tests and tools).
function M.flush_sync(client, timeout_ms, buf)
  return util.request_sync(client, M.FLUSH, {}, timeout_ms, buf)
end

return M
