-- Inline suggestions drawn by the plugin (Neovim 0.10 and 0.11, or 0.12 without `native`):
-- asks `textDocument/inlineCompletion` while you type, draws the answer as ghost text (inline
-- virtual text for the first line, virtual lines for the rest), and tells the server what
-- became of it: shown, accepted, partly accepted, dismissed.
local util = require("flywheel.util")

local M = {}

local api = vim.api
local uv = vim.uv or vim.loop

M.ns = api.nvim_create_namespace("flywheel_ghost")
-- Answers received for the latest request of the moment (tests and statuslines).
M.answers = 0

local INLINE_COMPLETION = "textDocument/inlineCompletion"
local DID_SHOW = "flywheel/didShowCompletion"
local DID_PARTIALLY_ACCEPT = "flywheel/didPartiallyAcceptCompletion"
local DID_REJECT = "flywheel/didRejectCompletion"
local TRIGGER_INVOKED, TRIGGER_AUTOMATIC = 1, 2

local config = {
  debounce_ms = 75,
  hl_group = "FlywheelSuggestion",
  reject_on_insert_leave = true,
  client_name = "flywheel",
  on_answer = nil, -- function(client, had_item): the plugin's backend-health check
}

local timer = nil
local seq = 0 -- the latest request; older answers are dropped
local pending = nil -- { client = client, id = request id }
-- The suggestion on screen, or nil:
--   buf, row, col (0-based; where the remaining text goes), tick (changedtick after our
--   last look), client, items, index, item, id (completion id), origin (the item's full text,
--   from the start of its insertText), pos (bytes of origin already in the buffer),
--   start_pos (pos when it was first drawn), replace_to (byte column the item's range ends at)
local current = nil
-- Completion ids already reported as shown, and the first text served under each id (the
-- server answers typing-ahead with the rest of the same completion).
local shown, origins, remembered = {}, {}, 0

function M.configure(opts)
  config = vim.tbl_extend("force", config, opts or {})
end

local function remember(id, text)
  if remembered > 500 then
    shown, origins, remembered = {}, {}, 0
  end
  if origins[id] == nil then
    origins[id] = text
    remembered = remembered + 1
  end
end

local function client_for(buf)
  for _, client in ipairs(util.get_clients({ bufnr = buf, name = config.client_name })) do
    if client.initialized ~= false and not util.is_stopped(client) then
      return client
    end
  end
  return nil
end

local function in_insert_mode()
  local mode = api.nvim_get_mode().mode
  return mode:sub(1, 1) == "i"
end

local function cursor()
  local pos = api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

local function remaining()
  return current and current.origin:sub(current.pos + 1) or ""
end

local function stop_timer()
  if timer then
    timer:stop()
  end
end

local function cancel_pending()
  seq = seq + 1
  if pending then
    pcall(util.cancel_request, pending.client, pending.id)
    pending = nil
  end
end

--- Remove the ghost text (no message to the server: typing over or moving away is inferred).
function M.clear()
  if current and api.nvim_buf_is_valid(current.buf) then
    api.nvim_buf_clear_namespace(current.buf, M.ns, 0, -1)
  end
  current = nil
end

function M.visible()
  return current ~= nil and current.buf == api.nvim_get_current_buf() and remaining() ~= ""
end

--- What is on screen, for tests and statuslines: { id, text, items, index } or nil.
function M.current()
  if not M.visible() then
    return nil
  end
  return { id = current.id, text = remaining(), items = #current.items, index = current.index }
end

local function display(text)
  local tabstop = vim.bo[current.buf].tabstop
  return (text:gsub("\r$", ""):gsub("\t", string.rep(" ", tabstop > 0 and tabstop or 8)))
end

local function render()
  local text = remaining()
  if text == "" then
    M.clear()
    return
  end
  local lines = vim.split(text, "\n", { plain = true })
  local first = display(lines[1])
  local opts = { id = 1, hl_mode = "combine", priority = 1000 }
  if first ~= "" then
    opts.virt_text = { { first, config.hl_group } }
    opts.virt_text_pos = "inline"
  end
  if #lines > 1 then
    local virt_lines = {}
    for i = 2, #lines do
      local line = display(lines[i])
      virt_lines[#virt_lines + 1] = { { line ~= "" and line or " ", config.hl_group } }
    end
    opts.virt_lines = virt_lines
  end
  local line = api.nvim_buf_get_lines(current.buf, current.row, current.row + 1, false)[1] or ""
  api.nvim_buf_clear_namespace(current.buf, M.ns, 0, -1)
  local ok = pcall(api.nvim_buf_set_extmark, current.buf, M.ns, current.row, math.min(current.col, #line), opts)
  if not ok then
    M.clear()
    return
  end
  if current.id and not shown[current.id] then
    shown[current.id] = true
    pcall(util.notify, current.client, DID_SHOW, { completionId = current.id })
  end
end

local function completion_id(item)
  local command = item.command
  if type(command) == "table" and type(command.arguments) == "table" then
    local id = command.arguments[1]
    if type(id) == "string" and id ~= "" then
      return id
    end
  end
  return nil
end

local function insert_text(item)
  local text = item.insertText
  if type(text) == "table" then
    text = text.value -- a snippet: shown and inserted as plain text
  end
  return type(text) == "string" and text or nil
end

-- Make `current` show items[index]: its text after what is already typed at the cursor.
local function use_item(index)
  local item = current.items[index]
  local text = insert_text(item)
  local id = completion_id(item)
  local line = api.nvim_buf_get_lines(current.buf, current.row, current.row + 1, false)[1] or ""
  local typed, replace_to = "", nil
  local range = item.range
  if type(range) == "table" and range.start and range["end"] then
    local encoding = current.client.offset_encoding or "utf-16"
    if range.start.line == current.row then
      local start_col = util.byte_col(line, range.start.character, encoding)
      if start_col < current.col then
        typed = line:sub(start_col + 1, current.col)
      end
    end
    if range["end"].line == current.row then
      local end_col = util.byte_col(line, range["end"].character, encoding)
      if end_col > current.col then
        replace_to = end_col
      end
    end
  end
  if text == nil or text:sub(1, #typed) ~= typed then
    return false
  end
  local origin, pos = text, #typed
  if id then
    local first = origins[id]
    -- The server answers typing-ahead with the rest of the same completion: lengths count from
    -- the start of the text first served under this id.
    if first and first ~= text and #first > #text and first:sub(-#text) == text then
      origin, pos = first, #first - #text + #typed
    else
      remember(id, text)
    end
  end
  current.index, current.item, current.id = index, item, id
  current.origin, current.pos, current.start_pos, current.replace_to = origin, pos, pos, replace_to
  return origin:sub(pos + 1) ~= ""
end

local function on_answer(request_seq, buf, client, row, col, tick, err, result)
  if request_seq ~= seq then
    return
  end
  pending = nil
  M.answers = M.answers + 1
  if err or not api.nvim_buf_is_valid(buf) or api.nvim_get_current_buf() ~= buf or not in_insert_mode() then
    return
  end
  local now_row, now_col = cursor()
  if now_row ~= row or now_col ~= col or api.nvim_buf_get_changedtick(buf) ~= tick then
    return -- the answer is for text that is gone
  end
  local items = {}
  local list = type(result) == "table" and (result.items or result) or {}
  for _, item in ipairs(list) do
    if type(item) == "table" and insert_text(item) and insert_text(item) ~= "" then
      items[#items + 1] = item
    end
  end
  M.clear()
  if #items > 0 then
    current = { buf = buf, row = row, col = col, tick = tick, client = client, items = items }
    local shown_one = false
    for index = 1, #items do
      if use_item(index) then
        shown_one = true
        break
      end
    end
    if shown_one then
      render()
    else
      current = nil
    end
  end
  if config.on_answer then
    config.on_answer(client, current ~= nil)
  end
end

--- Ask for a suggestion at the cursor now. `invoked`: the user asked (a fresh suggestion).
function M.request(invoked)
  stop_timer()
  if not in_insert_mode() then
    return
  end
  local buf = api.nvim_get_current_buf()
  local client = client_for(buf)
  if not client then
    return
  end
  cancel_pending()
  local request_seq = seq
  local row, col = cursor()
  local tick = api.nvim_buf_get_changedtick(buf)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding or "utf-16")
  params.context = { triggerKind = invoked and TRIGGER_INVOKED or TRIGGER_AUTOMATIC }
  local ok, id = util.request(client, INLINE_COMPLETION, params, function(err, result)
    on_answer(request_seq, buf, client, row, col, tick, err, result)
  end, buf)
  if ok and id then
    pending = { client = client, id = id }
  end
end

--- Ask after the debounce; a newer call restarts the wait.
function M.schedule()
  if not timer then
    timer = uv.new_timer()
  end
  timer:stop()
  timer:start(
    config.debounce_ms,
    0,
    vim.schedule_wrap(function()
      M.request(false)
    end)
  )
end

-- TextChangedI / CursorMovedI: typing what the suggestion says keeps the rest on screen;
-- anything else clears it and asks again.
function M.on_change()
  local buf = api.nvim_get_current_buf()
  if current then
    local row, col = cursor()
    local tick = api.nvim_buf_get_changedtick(buf)
    if current.buf == buf and row == current.row and col == current.col and tick == current.tick then
      return -- our own insertion, or nothing new
    end
    if current.buf == buf and tick ~= current.tick and row == current.row and col > current.col then
      local line = api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ""
      local typed = line:sub(current.col + 1, col)
      if typed ~= "" and remaining():sub(1, #typed) == typed then
        current.pos, current.col, current.tick, current.replace_to = current.pos + #typed, col, tick, nil
        if remaining() ~= "" then
          render()
          return
        end
        -- Typed all of it: the server infers the acceptance.
      end
    end
    M.clear()
  end
  cancel_pending()
  M.schedule()
end

local function insert_at_cursor(text, replace_to)
  local buf = current.buf
  local row, col = current.row, current.col
  local lines = vim.split(text, "\n", { plain = true })
  for i, l in ipairs(lines) do
    lines[i] = l:gsub("\r$", "")
  end
  local line = api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ""
  api.nvim_buf_set_text(buf, row, math.min(col, #line), row, math.min(replace_to or col, #line), lines)
  local new_row = row + #lines - 1
  local new_col = #lines == 1 and col + #lines[1] or #lines[#lines]
  api.nvim_win_set_cursor(0, { new_row + 1, new_col })
  return new_row, new_col
end

--- Accept the whole suggestion: insert it and run the item's command (`flywheel.accept`).
--- Returns false when none is visible.
function M.accept()
  if not M.visible() then
    return false
  end
  local s = current
  local replace = s.pos == s.start_pos and s.replace_to or nil
  insert_at_cursor(remaining(), replace)
  M.clear()
  local command = s.item.command
  if type(command) == "table" and command.command then
    -- A request, so Neovim sends the pending didChange first: the text is there when it runs.
    util.request(
      s.client,
      "workspace/executeCommand",
      { command = command.command, arguments = command.arguments },
      function() end,
      s.buf
    )
  end
  return true
end

local function next_word(text)
  if text:sub(1, 1) == "\n" then
    return text:match("^\n[ \t]*")
  end
  return text:match("^[ \t]*[%w_]+") or text:match("^[ \t]*[^%w_%s]+") or text:match("^[ \t]+") or text:sub(1, 1)
end

local function next_line(text)
  local from = text:sub(1, 1) == "\n" and 2 or 1
  local newline = text:find("\n", from, true)
  return newline and text:sub(1, newline - 1) or text
end

M._next_word, M._next_line = next_word, next_line

local function accept_part(pick)
  if not M.visible() then
    return false
  end
  local rest = remaining()
  local part = pick(rest)
  if part == nil or part == "" or #part >= #rest then
    return M.accept()
  end
  local s = current
  s.pos = s.pos + #part
  -- The growing total, in UTF-16 code units from the start of the item's insertText.
  local accepted = util.utf16_len(s.origin:sub(1, s.pos))
  if s.id then
    util.notify(s.client, DID_PARTIALLY_ACCEPT, { completionId = s.id, acceptedLength = accepted })
  end
  s.replace_to = nil -- only a whole acceptance replaces the item's range
  s.row, s.col = insert_at_cursor(part, nil)
  s.tick = api.nvim_buf_get_changedtick(s.buf)
  render()
  return true
end

function M.accept_word()
  return accept_part(next_word)
end

function M.accept_line()
  return accept_part(next_line)
end

--- Dismiss the suggestion on screen (flywheel/didRejectCompletion).
function M.dismiss()
  if not M.visible() then
    return false
  end
  local s = current
  M.clear()
  stop_timer()
  cancel_pending()
  if s.id then
    util.notify(s.client, DID_REJECT, { completionId = s.id })
  end
  return true
end

--- Show the next (+1) or previous (-1) item; with one item, ask for a fresh suggestion.
function M.cycle(delta)
  if M.visible() and #current.items > 1 and current.pos == current.start_pos then
    local s = current
    local count = #s.items
    local index = s.index
    for _ = 1, count - 1 do
      index = (index - 1 + delta) % count + 1
      s.pos = s.start_pos
      if use_item(index) then
        render()
        return true
      end
    end
  end
  if not in_insert_mode() or not client_for(api.nvim_get_current_buf()) then
    return false
  end
  M.request(true)
  return true
end

function M.on_insert_leave()
  stop_timer()
  cancel_pending()
  if config.reject_on_insert_leave and M.visible() then
    M.dismiss() -- leaving insert mode with a suggestion on screen is Escape: a dismissal
  else
    M.clear()
  end
end

function M.on_buf_leave()
  stop_timer()
  cancel_pending()
  M.clear()
end

--- The server went away: forget what it served.
function M.detach(client_id)
  if current and current.client and current.client.id == client_id then
    M.clear()
  end
  if pending and pending.client.id == client_id then
    pending = nil
  end
end

return M
