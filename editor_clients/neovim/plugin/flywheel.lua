-- User commands; everything else starts with require("flywheel").setup().
if vim.g.loaded_flywheel then
  return
end
vim.g.loaded_flywheel = true

vim.api.nvim_create_user_command("FlywheelStatus", function()
  require("flywheel").show_status()
end, { desc = "Flywheel: language server, backend health, model version, telemetry" })
