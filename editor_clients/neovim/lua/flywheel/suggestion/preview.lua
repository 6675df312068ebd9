-- Draws a suggestion as ghost text: inline virtual text for its first line, virtual lines below
-- for the rest. Knows nothing of the server.
local api = vim.api

local M = {}

M.ns = api.nvim_create_namespace("flywheel_suggestion")

function M.clear(buf)
  if api.nvim_buf_is_valid(buf) then
    api.nvim_buf_clear_namespace(buf, M.ns, 0, -1)
  end
end

local function display(buf, text)
  local tabstop = vim.bo[buf].tabstop
  return (text:gsub("\r$", ""):gsub("\t", string.rep(" ", tabstop > 0 and tabstop or 8)))
end

--- Show `text` at (row, col) (0-based, col in bytes) of `buf`; false when it can't be drawn there.
function M.show(buf, row, col, text, hl_group)
  local lines = vim.split(text, "\n", { plain = true })
  local first = display(buf, lines[1])
  local opts = { id = 1, hl_mode = "combine", priority = 1000 }
  if first ~= "" then
    opts.virt_text = { { first, hl_group } }
    opts.virt_text_pos = "inline"
  end
  if #lines > 1 then
    local virt_lines = {}
    for i = 2, #lines do
      local line = display(buf, lines[i])
      virt_lines[#virt_lines + 1] = { { line ~= "" and line or " ", hl_group } }
    end
    opts.virt_lines = virt_lines
  end
  local line = api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ""
  api.nvim_buf_clear_namespace(buf, M.ns, 0, -1)
  return (pcall(api.nvim_buf_set_extmark, buf, M.ns, row, math.min(col, #line), opts))
end

return M
