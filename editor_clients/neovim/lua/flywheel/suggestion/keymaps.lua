-- Insert-mode keys of one buffer. A key whose action did nothing (nothing on screen, the popup
-- menu open for accept) is fed through as if it had no mapping.
local api = vim.api

local M = {}

local function feed(lhs)
  api.nvim_feedkeys(api.nvim_replace_termcodes(lhs, true, false, true), "ni", false)
end

--- `keys`: name -> lhs (false or "" leaves it unmapped); `actions`: name -> function returning
--- true when it did something.
function M.set(buf, keys, actions)
  for name, lhs in pairs(keys or {}) do
    local action = actions[name]
    if lhs and lhs ~= "" and action then
      vim.keymap.set("i", lhs, function()
        if vim.fn.pumvisible() == 1 and name == "accept" or not action() then
          feed(lhs)
        end
      end, { buffer = buf, silent = true, desc = "flywheel: " .. name:gsub("_", " ") })
    end
  end
end

return M
