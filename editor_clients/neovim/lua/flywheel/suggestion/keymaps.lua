-- Insert-mode keys of one buffer. A key whose action did nothing (nothing on screen), and the
-- accept key while a completion menu is open, fall through to what the key did before the plugin
-- mapped it (your mapping, or a completion plugin's), else to the key itself.
local api = vim.api

local M = {}

local DESC = "flywheel: "

-- previous[buf][lhs]: the mapping the plugin's replaced in that buffer (maparg's dict), or false.
local previous = {}

local function feed(keys, remap)
  api.nvim_feedkeys(keys, remap and "mi" or "ni", false)
end

local function run_previous(prev, lhs)
  if not prev then
    feed(api.nvim_replace_termcodes(lhs, true, false, true), false)
    return
  end
  local remap = prev.noremap ~= 1
  if prev.callback then
    local result = prev.callback()
    if prev.expr == 1 and type(result) == "string" and result ~= "" then
      -- vim.keymap.set's expr mappings replace keycodes unless told not to.
      if prev.replace_keycodes ~= 0 then
        result = api.nvim_replace_termcodes(result, true, false, true)
      end
      feed(result, remap)
    end
    return
  end
  local rhs = prev.rhs or ""
  if prev.expr == 1 then
    rhs = api.nvim_eval(rhs)
  else
    rhs = api.nvim_replace_termcodes(rhs, true, false, true)
  end
  if type(rhs) == "string" and rhs ~= "" then
    feed(rhs, remap)
  end
end

local function remember(buf, lhs)
  previous[buf] = previous[buf] or {}
  if previous[buf][lhs] ~= nil then
    return -- mapped by us before: keep what was there first
  end
  local found = vim.fn.maparg(lhs, "i", false, true)
  if type(found) ~= "table" or vim.tbl_isempty(found) or (found.desc or ""):sub(1, #DESC) == DESC then
    previous[buf][lhs] = false
  else
    previous[buf][lhs] = found
  end
end

--- `keys`: name -> lhs (false or "" leaves it unmapped); `actions`: name -> function returning
--- true when it did something; `steps_aside(name)`: true when the key should go to a menu.
function M.set(buf, keys, actions, steps_aside)
  for name, lhs in pairs(keys or {}) do
    local action = actions[name]
    if lhs and lhs ~= "" and action then
      api.nvim_buf_call(buf, function()
        remember(buf, lhs)
      end)
      vim.keymap.set("i", lhs, function()
        if (steps_aside and steps_aside(name)) or not action() then
          run_previous(previous[buf] and previous[buf][lhs] or nil, lhs)
        end
      end, { buffer = buf, silent = true, desc = DESC .. name:gsub("_", " ") })
    end
  end
end

--- The buffer is gone.
function M.forget(buf)
  previous[buf] = nil
end

return M
