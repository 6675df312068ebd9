-- User commands; everything else starts with require("flywheel").setup().
if vim.g.loaded_flywheel then
  return
end
vim.g.loaded_flywheel = true

vim.api.nvim_create_user_command("FlywheelStatus", function()
  require("flywheel").show_status()
end, { desc = "Flywheel: language server, backend health, model version, telemetry" })

local subcommands = {
  -- :Flywheel toggle | enable | disable [buffer]: for every buffer, or this one only.
  toggle = function(scope)
    return nil, scope
  end,
  enable = function(scope)
    return true, scope
  end,
  disable = function(scope)
    return false, scope
  end,
}

vim.api.nvim_create_user_command("Flywheel", function(args)
  local flywheel = require("flywheel")
  local action, scope = args.fargs[1] or "status", args.fargs[2]
  if action == "status" then
    flywheel.show_status()
    return
  end
  if action == "suggest" then
    flywheel.suggest()
    return
  end
  local pick = subcommands[action]
  if not pick or (scope ~= nil and scope ~= "buffer") then
    vim.notify(
      "flywheel: :Flywheel toggle|enable|disable [buffer] | suggest | status",
      vim.log.levels.ERROR,
      { title = "flywheel" }
    )
    return
  end
  local on = flywheel.set_enabled(pick(scope), scope == "buffer" and 0 or nil)
  vim.notify(
    string.format("flywheel: suggestions %s%s", on and "on" or "off", scope == "buffer" and " in this buffer" or ""),
    vim.log.levels.INFO,
    { title = "flywheel" }
  )
end, {
  nargs = "*",
  desc = "Flywheel: toggle, enable or disable suggestions (everywhere or [buffer]), suggest, status",
  complete = function(_, line)
    local words = vim.split(line, "%s+", { trimempty = true })
    if #words <= 1 or (#words == 2 and not line:match("%s$")) then
      return { "toggle", "enable", "disable", "suggest", "status" }
    end
    return { "buffer" }
  end,
})
