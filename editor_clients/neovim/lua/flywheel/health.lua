-- :checkhealth flywheel
local M = {}

function M.check()
  local health = vim.health
  local util = require("flywheel.util")
  local flywheel = require("flywheel")
  health.start("flywheel")

  if vim.fn.has("nvim-0.10") == 1 then
    health.ok("Neovim " .. tostring(vim.version()))
  else
    health.error("Neovim 0.10 or newer is needed")
  end

  local config = flywheel.config
  if not config then
    health.warn("require('flywheel').setup() has not been called", {
      "Call it from your config (see its README).",
    })
    config = flywheel.defaults
  end

  local cmd = type(config.cmd) == "table" and config.cmd[1] or nil
  if cmd and vim.fn.executable(cmd) == 1 then
    health.ok(string.format("`%s` found: %s", cmd, vim.fn.exepath(cmd)))
  elseif cmd then
    health.error(string.format("`%s` not found", cmd), {
      "Install Flywheel (`make install` in its repository) and put .venv/bin on PATH,",
      "or set cmd = { '/path/to/.venv/bin/flywheel', 'lsp' } in setup().",
    })
  end

  local clients = flywheel.clients()
  local status = nil
  if #clients == 0 then
    health.warn("language server not running", {
      "Open a file of a language the backend serves (or one turned on in setup()'s languages), then run this again.",
    })
  else
    for _, client in ipairs(clients) do
      local root = tostring(client.root_dir)
      health.ok(string.format("language server running (client %d, root %s)", client.id, root))
      local answer, err = require("flywheel.protocol").status_sync(client, 3000)
      if not answer then
        health.error("the language server does not answer flywheel/status: " .. tostring(err))
      elseif answer.ready ~= false then
        status = status or answer
        health.info("telemetry " .. (answer.telemetry and "on" or "off"))
        health.info("languages asked about: " .. table.concat(answer.languages or {}, ", "))
        if (answer.outbox_dropped or 0) > 0 then
          health.warn(tostring(answer.outbox_dropped) .. " events dropped from a full outbox")
        end
      end
    end
  end

  -- With the server running, its word (it calls the backend with the token it was given);
  -- otherwise the plugin's own GET /v1/model with the token from setup().
  local state, url, detail = flywheel.backend_check(status, 3000)
  if state == "ok" then
    health.ok(string.format("backend reachable at %s, %s", url, detail))
  elseif state == "unauthorized" then
    health.error(string.format("backend at %s: unauthorized, %s", url, tostring(detail)), {
      "Set a client token: token = '...' in setup() (make one with `flywheel token` on the backend),",
      "or [backend] token in flywheel.toml for the language server.",
    })
  elseif state == "unreachable" then
    health.error(string.format("backend unreachable at %s: %s", url, tostring(detail)), {
      "Start it with `make up` (or `flywheel up`), or set backend_url in setup().",
    })
  else
    health.info("backend at " .. url .. " not probed: " .. tostring(detail))
  end
end

return M
