-- Completion menus the ghost text steps aside for: Neovim's own popup menu, nvim-cmp's and
-- blink.cmp's, each through its documented API (pumvisible() and CompleteChanged/CompleteDone;
-- cmp.visible() and cmp.event:on("menu_opened"/"menu_closed"); blink.cmp's is_menu_visible() and
-- its User BlinkCmpMenuOpen/BlinkCmpMenuClose events). Neither plugin is required.
local M = {}

local function cmp()
  local loaded = package.loaded["cmp"]
  return type(loaded) == "table" and loaded or nil
end

local function blink()
  local loaded = package.loaded["blink.cmp"]
  return type(loaded) == "table" and loaded or nil
end

--- Is a completion menu open now?
function M.visible()
  if vim.fn.pumvisible() == 1 then
    return true
  end
  local c = cmp()
  if c and type(c.visible) == "function" then
    local ok, open = pcall(c.visible)
    if ok and open then
      return true
    end
  end
  local b = blink()
  if b and type(b.is_menu_visible) == "function" then
    local ok, open = pcall(b.is_menu_visible)
    if ok and open then
      return true
    end
  end
  return false
end

local hooked_cmp = nil

-- nvim-cmp may load after setup() (lazy loading): tried again on each InsertEnter.
local function hook_cmp(on_open, on_close)
  local c = cmp()
  if not c or c == hooked_cmp or type(c.event) ~= "table" or type(c.event.on) ~= "function" then
    return
  end
  hooked_cmp = c
  pcall(c.event.on, c.event, "menu_opened", function()
    on_open(vim.api.nvim_get_current_buf())
  end)
  pcall(c.event.on, c.event, "menu_closed", function()
    on_close(vim.api.nvim_get_current_buf())
  end)
end

--- Call on_open(buf) when a menu opens and on_close(buf) once it has closed.
function M.autocmds(group, on_open, on_close)
  local api = vim.api
  api.nvim_create_autocmd("CompleteChanged", {
    group = group,
    callback = function(args)
      on_open(args.buf)
    end,
  })
  api.nvim_create_autocmd("CompleteDone", {
    group = group,
    callback = function(args)
      -- The menu is still on screen while CompleteDone runs.
      vim.schedule(function()
        on_close(args.buf)
      end)
    end,
  })
  api.nvim_create_autocmd("User", {
    group = group,
    pattern = "BlinkCmpMenuOpen",
    callback = function()
      on_open(api.nvim_get_current_buf())
    end,
  })
  api.nvim_create_autocmd("User", {
    group = group,
    pattern = "BlinkCmpMenuClose",
    callback = function()
      on_close(api.nvim_get_current_buf())
    end,
  })
  api.nvim_create_autocmd("InsertEnter", {
    group = group,
    callback = function()
      hook_cmp(on_open, on_close)
    end,
  })
  hook_cmp(on_open, on_close)
end

return M
