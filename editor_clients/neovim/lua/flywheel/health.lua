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
  local backend_url = config.backend_url or (config.init_options or {}).backendUrl
  if #clients == 0 then
    health.warn("language server not running", {
      "Open a file of a configured filetype, then run this again.",
    })
  else
    for _, client in ipairs(clients) do
      local root = tostring(client.root_dir)
      health.ok(string.format("language server running (client %d, root %s)", client.id, root))
      local status, err = require("flywheel.protocol").status_sync(client, 3000)
      if not status then
        health.error("the language server does not answer flywheel/status: " .. tostring(err))
      elseif status.ready ~= false then
        backend_url = status.backend_url or backend_url
        health.info("telemetry " .. (status.telemetry and "on" or "off"))
        if status.model_version then
          health.info("model version " .. tostring(status.model_version))
        end
        if (status.outbox_dropped or 0) > 0 then
          health.warn(tostring(status.outbox_dropped) .. " events dropped from a full outbox")
        end
      end
    end
  end

  backend_url = backend_url or "http://127.0.0.1:8765"
  local ok, detail = util.probe_backend_sync(backend_url, 3000)
  if ok then
    local body = util.decode(detail)
    local serving = body.live_version and (", serving " .. body.live_version) or ""
    health.ok(string.format("backend reachable at %s%s", backend_url, serving))
  elseif ok == false then
    health.error(string.format("backend unreachable at %s: %s", backend_url, tostring(detail)), {
      "Start it with `make up` (or `flywheel up`), or set backend_url in setup().",
    })
  else
    health.info("backend at " .. backend_url .. " not probed: " .. tostring(detail))
  end
end

return M
