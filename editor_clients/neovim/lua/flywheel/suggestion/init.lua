-- Inline suggestions drawn by the plugin (Neovim 0.10 and 0.11, or 0.12 without `native`):
-- asks `textDocument/inlineCompletion` while you type, shows the answer as ghost text, and tells
-- the server what became of it: shown, accepted, partly accepted, dismissed.
--
-- State is per buffer. An item's `range` runs from where its text begins to the cursor (the
-- server answers typing ahead with the whole suggestion from where it began), so the ghost text
-- is the item's text past what is typed in that range, and nothing is remembered between answers
-- but which completion ids were already reported shown.
local util = require("flywheel.util")
local protocol = require("flywheel.protocol")
local preview = require("flywheel.suggestion.preview")
local timer = require("flywheel.suggestion.timer")

local M = {}

local api = vim.api

M.ns = preview.ns
-- Answers received for the latest request of the moment (tests and statuslines).
M.answers = 0

local config = {
  -- 0: ask on the next turn of the event loop (one request for the TextChangedI and CursorMovedI of
  -- one keystroke); the debounce itself is the language server's (debounceMs).
  debounce_ms = 0,
  -- false: ask only when the user does (the `suggest` key); typing never asks.
  auto_trigger = true,
  hl_group = "FlywheelSuggestion",
  reject_on_insert_leave = true,
  client_name = "flywheel",
  on_answer = nil, -- function(client, had_item): the plugin's backend-health check
  menu_visible = function() -- a completion menu is open: no ghost text, no asking
    return false
  end,
}

-- ours(buf): the buffer has the server attached and suggestions are on for it.
local ours = function()
  return false
end

-- buffers[buf] = {
--   seq: the latest request; older answers are dropped,
--   pending: { client, id } of the request in flight, or nil,
--   shown: completion ids already reported shown (bounded),
--   current: the suggestion on screen, or nil: row, col (0-based; where the rest goes), tick
--     (changedtick after our last look), client, items, index, item, id (completion id), text
--     (the item's insertText, from its range's start), pos (bytes of text in the buffer),
--     start_pos (pos when first drawn), replace_to (byte column the item's range ends at),
-- }
local buffers = {}
local MAX_SHOWN = 500

function M.configure(opts)
  config = vim.tbl_extend("force", config, opts or {})
end

local function state(buf)
  local s = buffers[buf]
  if not s then
    s = { seq = 0, pending = nil, shown = {}, shown_count = 0, current = nil }
    buffers[buf] = s
  end
  return s
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
  return api.nvim_get_mode().mode:sub(1, 1) == "i"
end

local function cursor()
  local pos = api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

local function remaining(c)
  return c and c.text:sub(c.pos + 1) or ""
end

local function cancel_pending(s)
  s.seq = s.seq + 1
  if s.pending then
    protocol.cancel(s.pending.client, s.pending.id)
    s.pending = nil
  end
end

--- Remove the ghost text of `buf` (default: the current buffer). No message to the server:
--- typing over or moving away is inferred there.
function M.clear(buf)
  buf = buf or api.nvim_get_current_buf()
  preview.clear(buf)
  if buffers[buf] then
    buffers[buf].current = nil
  end
end

local function visible_in(buf)
  local s = buffers[buf]
  return s ~= nil and s.current ~= nil and remaining(s.current) ~= ""
end

function M.visible()
  return visible_in(api.nvim_get_current_buf())
end

--- What is on screen in the current buffer, for tests and statuslines: { id, text, items, index }.
function M.current()
  local buf = api.nvim_get_current_buf()
  if not visible_in(buf) then
    return nil
  end
  local c = buffers[buf].current
  return { id = c.id, text = remaining(c), items = #c.items, index = c.index }
end

local function mark_shown(s, id)
  if s.shown[id] then
    return false
  end
  if s.shown_count >= MAX_SHOWN then
    s.shown, s.shown_count = {}, 0
  end
  s.shown[id], s.shown_count = true, s.shown_count + 1
  return true
end

local function render(buf)
  local s = buffers[buf]
  local c = s and s.current
  local text = remaining(c)
  if text == "" or not preview.show(buf, c.row, c.col, text, config.hl_group) then
    M.clear(buf)
    return
  end
  if c.id and mark_shown(s, c.id) then
    protocol.did_show(c.client, c.id)
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

-- Make `c` show c.items[index]: its text past what is already typed in its range.
local function use_item(c, buf, index)
  local item = c.items[index]
  local text = insert_text(item)
  local line = api.nvim_buf_get_lines(buf, c.row, c.row + 1, false)[1] or ""
  local typed, replace_to = "", nil
  local range = item.range
  if type(range) == "table" and range.start and range["end"] then
    local encoding = c.client.offset_encoding or "utf-16"
    if range.start.line == c.row then
      local start_col = util.byte_col(line, range.start.character, encoding)
      if start_col < c.col then
        typed = line:sub(start_col + 1, c.col)
      end
    end
    if range["end"].line == c.row then
      local end_col = util.byte_col(line, range["end"].character, encoding)
      if end_col > c.col then
        replace_to = end_col
      end
    end
  end
  if text == nil or text:sub(1, #typed) ~= typed then
    return false
  end
  c.index, c.item, c.id, c.text = index, item, completion_id(item), text
  c.pos, c.start_pos, c.replace_to = #typed, #typed, replace_to
  return remaining(c) ~= ""
end

local function on_answer(buf, request_seq, client, row, col, tick, err, result)
  local s = buffers[buf]
  if not s or request_seq ~= s.seq then
    return
  end
  s.pending = nil
  M.answers = M.answers + 1
  if err or not api.nvim_buf_is_valid(buf) or api.nvim_get_current_buf() ~= buf or not in_insert_mode() then
    return
  end
  if config.menu_visible() then
    return -- a menu opened meanwhile; a fresh suggestion is asked for when it closes
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
  M.clear(buf)
  local c = { row = row, col = col, tick = tick, client = client, items = items }
  for index = 1, #items do
    if use_item(c, buf, index) then
      s.current = c
      render(buf)
      break
    end
  end
  if config.on_answer then
    config.on_answer(client, s.current ~= nil)
  end
end

--- Ask for a suggestion at the cursor now. `invoked`: the user asked (a fresh suggestion).
function M.request(invoked)
  local buf = api.nvim_get_current_buf()
  timer.stop(buf)
  if not in_insert_mode() then
    return
  end
  local client = client_for(buf)
  if not client or config.menu_visible() then
    return
  end
  local s = state(buf)
  cancel_pending(s)
  local request_seq = s.seq
  local row, col = cursor()
  local tick = api.nvim_buf_get_changedtick(buf)
  local ok, id = protocol.inline_completion(client, buf, invoked, function(err, result)
    on_answer(buf, request_seq, client, row, col, tick, err, result)
  end)
  if ok and id then
    s.pending = { client = client, id = id }
  end
end

--- Ask after the debounce; a newer call restarts the wait.
function M.schedule()
  local buf = api.nvim_get_current_buf()
  timer.start(buf, config.debounce_ms, function()
    if api.nvim_get_current_buf() == buf then
      M.request(false)
    end
  end)
end

-- TextChangedI / CursorMovedI: typing what the suggestion says keeps the rest on screen;
-- anything else clears it and asks again.
function M.on_change()
  local buf = api.nvim_get_current_buf()
  local s = state(buf)
  local c = s.current
  if c then
    local row, col = cursor()
    local tick = api.nvim_buf_get_changedtick(buf)
    if row == c.row and col == c.col and tick == c.tick then
      return -- our own insertion, or nothing new
    end
    if tick ~= c.tick and row == c.row and col > c.col then
      local line = api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ""
      local typed = line:sub(c.col + 1, col)
      if typed ~= "" and remaining(c):sub(1, #typed) == typed then
        c.pos, c.col, c.tick, c.replace_to = c.pos + #typed, col, tick, nil
        if remaining(c) ~= "" then
          render(buf)
          return
        end
        -- Typed all of it: the server infers the acceptance.
      end
    end
    M.clear(buf)
  end
  cancel_pending(s)
  if config.auto_trigger and not config.menu_visible() then
    M.schedule()
  end
end

--- A completion menu opened over `buf`: the suggestion goes, nothing is asked while it is open.
function M.hide(buf)
  timer.stop(buf)
  if buffers[buf] then
    cancel_pending(buffers[buf])
  end
  M.clear(buf)
end

--- The menu closed: ask afresh for what is now at the cursor.
function M.on_menu_closed(buf)
  if
    buf == api.nvim_get_current_buf()
    and config.auto_trigger
    and in_insert_mode()
    and ours(buf)
    and not config.menu_visible()
  then
    M.schedule()
  end
end

-- Insert `text` at the suggestion's spot (replacing up to `replace_to`); moves the cursor after it.
local function insert_at(buf, c, text, replace_to)
  local lines = vim.split(text, "\n", { plain = true })
  for i, l in ipairs(lines) do
    lines[i] = l:gsub("\r$", "")
  end
  local line = api.nvim_buf_get_lines(buf, c.row, c.row + 1, false)[1] or ""
  local from, to = math.min(c.col, #line), math.min(replace_to or c.col, #line)
  api.nvim_buf_set_text(buf, c.row, from, c.row, to, lines)
  local new_row = c.row + #lines - 1
  local new_col = #lines == 1 and c.col + #lines[1] or #lines[#lines]
  api.nvim_win_set_cursor(0, { new_row + 1, new_col })
  return new_row, new_col
end

--- Accept the whole suggestion: insert it and run the item's command (`flywheel.accept`).
--- Returns false when none is visible.
function M.accept()
  local buf = api.nvim_get_current_buf()
  if not visible_in(buf) then
    return false
  end
  local c = buffers[buf].current
  local replace = c.pos == c.start_pos and c.replace_to or nil
  insert_at(buf, c, remaining(c), replace)
  M.clear(buf)
  local command = c.item.command
  if type(command) == "table" and command.command then
    protocol.execute_command(c.client, buf, command)
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
  local buf = api.nvim_get_current_buf()
  if not visible_in(buf) then
    return false
  end
  local c = buffers[buf].current
  local rest = remaining(c)
  local part = pick(rest)
  if part == nil or part == "" or #part >= #rest then
    return M.accept()
  end
  c.pos = c.pos + #part
  if c.id then
    -- The growing total, in UTF-16 code units of the item's text from its range's start.
    protocol.did_partially_accept(c.client, c.id, util.utf16_len(c.text:sub(1, c.pos)))
  end
  c.replace_to = nil -- only a whole acceptance replaces the item's range
  c.row, c.col = insert_at(buf, c, part, nil)
  c.tick = api.nvim_buf_get_changedtick(buf)
  render(buf)
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
  local buf = api.nvim_get_current_buf()
  if not visible_in(buf) then
    return false
  end
  local s = buffers[buf]
  local c = s.current
  M.clear(buf)
  timer.stop(buf)
  cancel_pending(s)
  if c.id then
    protocol.did_reject(c.client, c.id)
  end
  return true
end

--- Show the next (+1) or previous (-1) item; with one item, ask for a fresh suggestion.
function M.cycle(delta)
  local buf = api.nvim_get_current_buf()
  local c = visible_in(buf) and buffers[buf].current or nil
  if c and #c.items > 1 and c.pos == c.start_pos then
    local count, index = #c.items, c.index
    for _ = 1, count - 1 do
      index = (index - 1 + delta) % count + 1
      if use_item(c, buf, index) then
        render(buf)
        return true
      end
    end
  end
  if not in_insert_mode() or not client_for(buf) then
    return false
  end
  M.request(true)
  return true
end

function M.on_insert_leave()
  local buf = api.nvim_get_current_buf()
  timer.stop(buf)
  if config.reject_on_insert_leave and visible_in(buf) then
    M.dismiss() -- leaving insert mode with a suggestion on screen is Escape: a dismissal
    return
  end
  if buffers[buf] then
    cancel_pending(buffers[buf])
  end
  M.clear(buf)
end

--- `buf` loses the cursor (BufLeave, WinLeave): its suggestion goes.
function M.on_buf_leave(buf)
  timer.stop(buf)
  if buffers[buf] then
    cancel_pending(buffers[buf])
  end
  M.clear(buf)
end

--- `buf` is gone (BufWipeout): forget it.
function M.on_buf_wipeout(buf)
  timer.close(buf)
  buffers[buf] = nil
end

--- Follow typing in insert mode (in `group`); `ours(buf)`: the buffer has the server attached.
function M.autocmds(group, is_ours)
  ours = is_ours
  api.nvim_create_autocmd({ "TextChangedI", "TextChangedP", "CursorMovedI" }, {
    group = group,
    callback = function(args)
      if ours(args.buf) then
        M.on_change()
      end
    end,
  })
  api.nvim_create_autocmd("InsertEnter", {
    group = group,
    callback = function(args)
      if config.auto_trigger and ours(args.buf) then
        M.schedule()
      end
    end,
  })
  api.nvim_create_autocmd("InsertLeave", { group = group, callback = M.on_insert_leave })
  api.nvim_create_autocmd({ "BufLeave", "WinLeave" }, {
    group = group,
    callback = function(args)
      M.on_buf_leave(args.buf)
    end,
  })
  api.nvim_create_autocmd("BufWipeout", {
    group = group,
    callback = function(args)
      M.on_buf_wipeout(args.buf)
    end,
  })
end

--- The server went away: forget what it served.
function M.detach(client_id)
  for buf, s in pairs(buffers) do
    if s.current and s.current.client.id == client_id then
      M.clear(buf)
    end
    if s.pending and s.pending.client.id == client_id then
      s.pending = nil
    end
  end
end

return M
