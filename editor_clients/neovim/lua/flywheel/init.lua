-- Flywheel for Neovim: starts `flywheel lsp` for your filetypes and shows its inline
-- suggestions as ghost text, reporting what became of each one (see README.md here).
local util = require("flywheel.util")
local protocol = require("flywheel.protocol")
local suggestion = require("flywheel.suggestion")
local keymaps = require("flywheel.suggestion.keymaps")

local M = {}

local api = vim.api
local uv = vim.uv or vim.loop

local CLIENT_NAME = "flywheel"

M.defaults = {
  -- How to start the language server.
  cmd = { "flywheel", "lsp" },
  filetypes = {
    "python",
    "lua",
    "javascript",
    "javascriptreact",
    "typescript",
    "typescriptreact",
    "go",
    "rust",
    "c",
    "cpp",
    "java",
    "sh",
    "ruby",
  },
  root_markers = { ".git", "pyproject.toml", "setup.py", "package.json", "go.mod", "Cargo.toml" },
  -- initializationOptions; nil leaves the server's own default (flywheel.toml, FLYWHEEL_*).
  backend_url = nil,
  token = nil,
  telemetry = true,
  -- Any other initializationOptions (requestTimeoutS, debounceMs, survivalDelaysS, userId, ...).
  init_options = {},
  -- Wait after a keystroke before asking.
  debounce_ms = 75,
  -- Neovim 0.12+: use the built-in vim.lsp.inline_completion instead of the plugin's ghost text
  -- (then nothing reports shown, partly accepted or dismissed; the server infers outcomes).
  native = false,
  -- Leaving insert mode with a suggestion on screen dismisses it (reported as a rejection).
  reject_on_insert_leave = true,
  -- Insert-mode keys; false leaves one unmapped (call require("flywheel").accept() etc. yourself).
  keys = {
    accept = "<Tab>",
    accept_word = "<M-w>",
    accept_line = "<M-l>",
    dismiss = "<C-]>",
    next = "<M-]>",
    prev = "<M-[>",
    suggest = "<M-\\>",
  },
  hl_group = "FlywheelSuggestion",
  -- Seconds between backend-health checks while completions come back empty.
  health_check_interval_s = 15,
}

M.config = nil

local warned = {} -- what was already said once (missing executable, crash, backend down)
local restart = { timer = nil, delay_s = 0, started_at = nil }
local stopping = false
local last_health_check = 0

local function notify_once(key, message, level)
  if warned[key] then
    return
  end
  warned[key] = true
  vim.notify("flywheel: " .. message, level or vim.log.levels.WARN, { title = "flywheel" })
end

local function resolved(key)
  warned[key] = nil
end

local function merge(defaults, opts)
  local config = vim.deepcopy(defaults)
  for key, value in pairs(opts or {}) do
    if (key == "keys" or key == "init_options") and type(value) == "table" then
      config[key] = vim.tbl_extend("force", config[key], value)
    else
      config[key] = value -- lists (cmd, filetypes) replace the default, never merge with it
    end
  end
  return config
end

local function native()
  return M.config.native and util.has_012 and vim.lsp.inline_completion ~= nil
end

function M.init_options()
  local config = M.config
  local options = vim.deepcopy(config.init_options or {})
  options.backendUrl = config.backend_url or options.backendUrl
  options.token = config.token or options.token
  if config.telemetry ~= nil then
    options.telemetry = config.telemetry
  end
  -- The plugin reports flywheel/didShowCompletion itself, unless Neovim draws the suggestions.
  options.reportsShown = not native()
  return options
end

function M.clients(buf)
  return util.get_clients({ name = CLIENT_NAME, bufnr = buf })
end

local function map_keys(buf)
  local actions
  if native() then
    local inline = vim.lsp.inline_completion
    actions = {
      accept = function()
        return inline.get()
      end,
      next = function()
        inline.select({ count = 1 })
        return true
      end,
      prev = function()
        inline.select({ count = -1 })
        return true
      end,
    }
  else
    actions = {
      accept = M.accept,
      accept_word = M.accept_word,
      accept_line = M.accept_line,
      dismiss = M.dismiss,
      next = M.next,
      prev = M.prev,
      suggest = M.suggest,
    }
  end
  keymaps.set(buf, M.config.keys, actions)
end

local function check_backend(client, force)
  local now = uv.now() / 1000
  if not force and now - last_health_check < M.config.health_check_interval_s then
    return
  end
  last_health_check = now
  protocol.status(client, function(err, status)
    if err or type(status) ~= "table" then
      return
    end
    if status.backend_ok == false then
      notify_once(
        "backend",
        string.format(
          "the backend at %s is unreachable (%s); no suggestions until it is back. Retrying quietly.",
          tostring(status.backend_url),
          tostring(status.last_backend_error or "no answer")
        )
      )
    elseif status.backend_ok == true then
      resolved("backend")
    end
  end)
end

local function on_init(client)
  restart.started_at = uv.now() / 1000
  resolved("crash")
  -- Tell the user once if the backend is down now, before they wonder where suggestions are.
  protocol.status(client, function(err, status)
    if err or type(status) ~= "table" or not status.backend_url then
      return
    end
    util.probe_backend(status.backend_url, 2000, function(ok, detail)
      if ok == false then
        notify_once(
          "backend",
          string.format(
            "the backend at %s is unreachable (%s); no suggestions until it is back. Retrying quietly.",
            status.backend_url,
            detail
          )
        )
      elseif ok then
        resolved("backend")
      end
    end)
  end)
end

local function on_attach(client, buf)
  if native() then
    pcall(vim.lsp.inline_completion.enable, true, { bufnr = buf, client_id = client.id })
  end
  map_keys(buf)
end

local function wants(buf)
  if not api.nvim_buf_is_valid(buf) or not api.nvim_buf_is_loaded(buf) or vim.bo[buf].buftype ~= "" then
    return false
  end
  return vim.tbl_contains(M.config.filetypes, vim.bo[buf].filetype)
end

local schedule_restart

local function on_exit(code, signal, client_id)
  suggestion.detach(client_id)
  if stopping then
    return
  end
  if code == 0 and (signal == 0 or signal == 15) then
    return -- stopped on purpose (:LspStop, :lsp stop)
  end
  notify_once(
    "crash",
    string.format(
      "the language server stopped (exit code %s, signal %s); the editor goes on without "
        .. "suggestions and it restarts quietly. Its log: :lua vim.cmd.edit(vim.lsp.get_log_path())",
      tostring(code),
      tostring(signal)
    )
  )
  local ran_s = restart.started_at and (uv.now() / 1000 - restart.started_at) or 0
  -- Ran a while: a fresh failure, restart soon; crashing again and again: back off, up to 5 min.
  restart.delay_s = ran_s > 60 and 1 or math.min(math.max(restart.delay_s * 2, 1), 300)
  restart.started_at = nil
  schedule_restart(restart.delay_s)
end

--- Start (or reuse) the language server for `buf`. Quiet after the first warning.
function M.attach(buf)
  buf = (buf == nil or buf == 0) and api.nvim_get_current_buf() or buf
  if not M.config or not wants(buf) or #M.clients(buf) > 0 then
    return nil
  end
  if restart.timer and restart.timer:is_active() then
    return nil -- crashed lately: the restart timer will come back to it
  end
  local cmd = M.config.cmd
  if type(cmd) == "table" and vim.fn.executable(cmd[1]) ~= 1 then
    notify_once(
      "missing",
      string.format(
        "`%s` not found, so no inline suggestions. Install Flywheel (`make install`, then put "
          .. ".venv/bin on PATH) or set cmd in require('flywheel').setup(). Checked again for each file.",
        cmd[1]
      )
    )
    return nil
  end
  resolved("missing")
  local ok, client_id = pcall(vim.lsp.start, {
    name = CLIENT_NAME,
    cmd = cmd,
    root_dir = vim.fs.root(buf, M.config.root_markers) or vim.fn.getcwd(),
    init_options = M.init_options(),
    on_init = on_init,
    on_attach = on_attach,
    on_exit = function(code, signal, id)
      vim.schedule(function()
        on_exit(code, signal, id)
      end)
    end,
  }, { bufnr = buf })
  if not ok then
    notify_once("start", "could not start the language server: " .. tostring(client_id))
    return nil
  end
  return client_id
end

schedule_restart = function(delay_s)
  if not restart.timer then
    restart.timer = uv.new_timer()
  end
  restart.timer:stop()
  restart.timer:start(
    delay_s * 1000,
    0,
    vim.schedule_wrap(function()
      restart.timer:stop()
      for _, buf in ipairs(api.nvim_list_bufs()) do
        M.attach(buf)
      end
    end)
  )
end

-- Ghost-text API (also what the default keys call). Each returns true when it did something.
function M.accept()
  return suggestion.accept()
end
function M.accept_word()
  return suggestion.accept_word()
end
function M.accept_line()
  return suggestion.accept_line()
end
function M.dismiss()
  return suggestion.dismiss()
end
function M.next()
  return suggestion.cycle(1)
end
function M.prev()
  return suggestion.cycle(-1)
end
function M.suggest()
  if not native() and #M.clients(0) > 0 then
    suggestion.request(true)
    return true
  end
  return false
end
function M.visible()
  return suggestion.visible()
end

--- The server's flywheel/status answer and the backend probe, as lines for people.
function M.status_lines(timeout_ms)
  timeout_ms = timeout_ms or 3000
  if not M.config then
    return { "Flywheel: require('flywheel').setup() has not been called" }
  end
  local lines = {}
  local clients = M.clients()
  if #clients == 0 then
    local cmd = type(M.config.cmd) == "table" and M.config.cmd[1] or "flywheel"
    local why = vim.fn.executable(cmd) == 1 and "open a file of a configured filetype" or ("`" .. cmd .. "` not found")
    lines[#lines + 1] = "Flywheel language server: not running (" .. why .. ")"
    local url = M.config.backend_url or M.config.init_options.backendUrl
    if url then
      local ok, detail = util.probe_backend_sync(url, timeout_ms)
      local health = ok and "reachable" or ("unreachable: " .. tostring(detail))
      lines[#lines + 1] = string.format("Backend: %s, %s", url, health)
    end
    return lines
  end
  for _, client in ipairs(clients) do
    local pid = client.rpc and client.rpc.pid
    lines[#lines + 1] = string.format(
      "Flywheel language server: running (client %d%s, root %s)",
      client.id,
      pid and (", pid " .. pid) or "",
      tostring(client.root_dir or client.config.root_dir)
    )
    local status, err = protocol.status_sync(client, timeout_ms)
    if not status then
      lines[#lines + 1] = "Status: no answer from the language server (" .. tostring(err) .. ")"
    elseif status.ready == false then
      lines[#lines + 1] = "Status: the language server is starting"
    else
      local ok, detail = util.probe_backend_sync(status.backend_url, timeout_ms)
      local health
      if ok then
        local body = util.decode(detail)
        health = "reachable" .. (body.live_version and (", serving " .. body.live_version) or "")
      elseif ok == false then
        health = "unreachable: " .. tostring(detail)
      elseif status.backend_ok == true then
        health = "reachable (last completion)"
      elseif status.backend_ok == false then
        health = "unreachable: " .. tostring(status.last_backend_error)
      else
        health = "not contacted yet"
      end
      lines[#lines + 1] = string.format("Backend: %s, %s", tostring(status.backend_url), health)
      local version = type(status.model_version) == "string" and status.model_version
      lines[#lines + 1] = "Model version: " .. (version or "unknown until the first suggestion")
      lines[#lines + 1] = "Telemetry: " .. (status.telemetry and "on" or "off")
      lines[#lines + 1] = string.format(
        "Events: %s delivered, %s waiting in the outbox, %s dropped",
        tostring(status.events_delivered),
        tostring(status.outbox_pending),
        tostring(status.outbox_dropped)
      )
    end
  end
  return lines
end

function M.show_status()
  vim.notify(table.concat(M.status_lines(), "\n"), vim.log.levels.INFO, { title = "flywheel" })
end

function M.setup(opts)
  M.config = merge(M.defaults, opts)
  -- A new configuration starts afresh: nothing said yet, no restart pending.
  warned = {}
  if restart.timer then
    restart.timer:stop()
  end
  restart.delay_s = 0
  if vim.fn.has("nvim-0.10") ~= 1 then
    notify_once("version", "needs Neovim 0.10 or newer", vim.log.levels.ERROR)
    return
  end
  api.nvim_set_hl(0, "FlywheelSuggestion", { link = "Comment", default = true })
  suggestion.configure({
    debounce_ms = M.config.debounce_ms,
    hl_group = M.config.hl_group,
    reject_on_insert_leave = M.config.reject_on_insert_leave,
    client_name = CLIENT_NAME,
    on_answer = function(client, had_item)
      if not had_item then
        check_backend(client, false)
      elseif warned.backend then
        resolved("backend")
      end
    end,
  })
  local group = api.nvim_create_augroup("flywheel", { clear = true })
  api.nvim_create_autocmd({ "FileType", "BufEnter" }, {
    group = group,
    callback = function(args)
      M.attach(args.buf)
    end,
  })
  api.nvim_create_autocmd("VimLeavePre", {
    group = group,
    callback = function()
      stopping = true
    end,
  })
  if not native() then
    suggestion.autocmds(group, function(buf)
      return #M.clients(buf) > 0
    end)
  end
  for _, buf in ipairs(api.nvim_list_bufs()) do
    M.attach(buf)
  end
end

return M
