-- Flywheel for Neovim: starts `flywheel lsp` for your filetypes and shows its inline
-- suggestions as ghost text, reporting what became of each one (see README.md here).
local util = require("flywheel.util")
local protocol = require("flywheel.protocol")
local gate = require("flywheel.gate")
local menu = require("flywheel.menu")
local suggestion = require("flywheel.suggestion")
local keymaps = require("flywheel.suggestion.keymaps")

local M = {}

local api = vim.api
local uv = vim.uv or vim.loop

local CLIENT_NAME = "flywheel"
local DEFAULT_BACKEND_URL = "http://127.0.0.1:8765"

M.defaults = {
  -- How to start the language server.
  cmd = { "flywheel", "lsp" },
  -- Per filetype: true asks even where the backend's model does not serve it, false never; "*"
  -- stands for every filetype not named. Unnamed filetypes follow what the backend serves.
  languages = {},
  -- Older form: a list of the only filetypes wanted (as languages = { ft = true, ["*"] = false }).
  filetypes = nil,
  -- Path globs never handed to the language server, besides .env, key files and the like
  -- (lua/flywheel/gate.lua). Without "/" a glob matches the file name, with "/" the path.
  exclude = {},
  -- false: no suggestion until you ask (keys.suggest); typing never asks.
  auto_trigger = true,
  -- false: start switched off (:Flywheel enable / toggle).
  enabled = true,
  root_markers = { ".git", "pyproject.toml", "setup.py", "package.json", "go.mod", "Cargo.toml" },
  -- initializationOptions; nil leaves the server's own default (flywheel.toml, FLYWHEEL_*).
  backend_url = nil,
  token = nil,
  telemetry = true,
  -- Any other initializationOptions (requestTimeoutS, survivalDelaysS, userId, ...).
  init_options = {},
  -- The one debounce, in the language server (debounceMs): how long after a keystroke it waits
  -- before asking the backend. nil leaves the server's default (30 ms, flywheel.toml lsp.debounce_ms).
  debounce_ms = nil,
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

-- What the language server last said (flywheel/status, flywheel/didChangeStatus): backend is
-- "ok", "unauthorized" or "unreachable"; languages the filetypes it asks the backend about.
M.server_status = { backend = nil, languages = nil, backend_url = nil }
-- Switched on or off for every buffer (:Flywheel toggle); vim.b.flywheel_enabled overrides it.
local globally_enabled = true

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
  if config.debounce_ms ~= nil then
    options.debounceMs = config.debounce_ms
  end
  local languages = gate.languages_option(config.languages, config.filetypes)
  if next(languages) ~= nil then
    options.languages = languages
  end
  if #(config.exclude or {}) > 0 then
    options.exclude = config.exclude
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
  keymaps.set(buf, M.config.keys, actions, function(name)
    return name == "accept" and menu.visible()
  end)
end

local function unreachable_message(url, detail)
  return string.format(
    "the backend at %s is unreachable (%s); no suggestions until it is back. Retrying quietly.",
    tostring(url),
    tostring(detail or "no answer")
  )
end

-- The server's word on the backend, however it came: said once per kind of trouble. A refused
-- token the server itself says (window/showMessage), so the plugin does not say it twice.
local function backend_said(status)
  if status.backend == "unreachable" then
    notify_once("backend", unreachable_message(status.backend_url, status.last_backend_error))
  elseif status.backend == "ok" then
    resolved("backend")
  end
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
    M.server_status.backend_url = status.backend_url
    backend_said(status)
  end)
end

local function redraw_statusline()
  pcall(vim.cmd.redrawstatus, { bang = true })
end

local attach_all

-- flywheel/didChangeStatus: the backend's state or the languages served changed.
local function on_status_change(status, client)
  if type(status) ~= "table" then
    return
  end
  M.server_status.backend = status.backend
  -- Without the backend's word the list says nothing of what it serves: keep what was known.
  if status.backend == "ok" and type(status.languages) == "table" then
    M.server_status.languages = status.languages
  end
  redraw_statusline()
  if status.backend == "unreachable" and client then
    -- The address and the reason are in flywheel/status.
    protocol.status(client, function(err, full)
      if not err and type(full) == "table" then
        M.server_status.backend_url = full.backend_url
        backend_said(full)
      end
    end)
  else
    backend_said(status)
  end
  attach_all() -- buffers of a language now served
end

local function on_init(client)
  restart.started_at = uv.now() / 1000
  resolved("crash")
  -- The server asks the backend at start and says what it found (flywheel/didChangeStatus); a
  -- server too old to send that is asked once here.
  protocol.status(client, function(err, status)
    if err or type(status) ~= "table" or status.ready == false then
      return
    end
    M.server_status.backend_url = status.backend_url
    if M.server_status.backend == nil and status.backend then
      on_status_change(status, client)
    end
  end)
end

local function on_attach(client, buf)
  if native() then
    pcall(vim.lsp.inline_completion.enable, true, { bufnr = buf, client_id = client.id })
  end
  map_keys(buf)
end

local function root_of(buf)
  return vim.fs.root(buf, M.config.root_markers) or vim.fn.getcwd()
end

-- buf -> { name, excluded }: asked on every statusline redraw, so kept until the name changes.
local exclusions = {}

local function excluded(buf)
  local name = api.nvim_buf_get_name(buf)
  local known = exclusions[buf]
  if known and known.name == name then
    return known.excluded
  end
  local path = name ~= "" and vim.fs.normalize(name) or nil
  known = { name = name, excluded = gate.excluded(path, M.config.exclude, root_of(buf)) }
  exclusions[buf] = known
  return known.excluded
end

--- Why `buf` gets no suggestions, or nil when it may: "excluded", "language" (not served, or
--- turned off), "unknown" (the server has not said yet which languages are served), "other" (not
--- a file buffer).
function M.refusal(buf)
  buf = (buf == nil or buf == 0) and api.nvim_get_current_buf() or buf
  if not api.nvim_buf_is_valid(buf) or not api.nvim_buf_is_loaded(buf) or vim.bo[buf].buftype ~= "" then
    return "other"
  end
  local filetype = vim.bo[buf].filetype
  if filetype == "" then
    return "other"
  end
  if excluded(buf) then
    return "excluded"
  end
  local choice = gate.choice(filetype, gate.languages_option(M.config.languages, M.config.filetypes))
  if choice == false then
    return "language"
  elseif choice == true then
    return nil
  end
  local served = M.server_status.languages
  if served == nil then
    return "unknown"
  end
  if vim.tbl_contains(served, filetype) then
    return nil
  end
  return "language"
end

--- Are suggestions switched on for `buf` (:Flywheel enable/disable/toggle)?
function M.enabled(buf)
  buf = (buf == nil or buf == 0) and api.nvim_get_current_buf() or buf
  local own = api.nvim_buf_is_valid(buf) and vim.b[buf].flywheel_enabled
  if own ~= nil then
    return own
  end
  return globally_enabled
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
  if not M.config or #M.clients(buf) > 0 then
    return nil
  end
  local refusal = M.refusal(buf)
  if refusal ~= nil and refusal ~= "unknown" then
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
  -- Not knowing yet which languages the backend serves, start the server without handing it the
  -- buffer: its first flywheel/didChangeStatus says, and the served buffers are attached then.
  local attach = refusal == nil
  local config = {
    name = CLIENT_NAME,
    cmd = cmd,
    root_dir = root_of(buf),
    init_options = M.init_options(),
    handlers = {
      -- Through vim.notify like the plugin's own messages (Neovim would only echo an error).
      ["window/showMessage"] = function(_, params)
        if type(params) == "table" and type(params.message) == "string" then
          local levels = { vim.log.levels.ERROR, vim.log.levels.WARN, vim.log.levels.INFO, vim.log.levels.DEBUG }
          local text = params.message:gsub("^Flywheel: ", "")
          vim.schedule(function()
            vim.notify("flywheel: " .. text, levels[params.type] or vim.log.levels.INFO, { title = "flywheel" })
          end)
        end
      end,
      [protocol.DID_CHANGE_STATUS] = function(_, status, ctx)
        vim.schedule(function()
          on_status_change(status, ctx and vim.lsp.get_client_by_id(ctx.client_id))
        end)
      end,
    },
    on_init = on_init,
    on_attach = on_attach,
    on_exit = function(code, signal, id)
      vim.schedule(function()
        on_exit(code, signal, id)
      end)
    end,
  }
  local ok, client_id
  if attach then
    ok, client_id = pcall(vim.lsp.start, config, { bufnr = buf })
  elseif util.has_011 then
    ok, client_id = pcall(vim.lsp.start, config, { bufnr = buf, attach = false })
  else
    ok, client_id = pcall(vim.lsp.start_client, config)
  end
  if not ok then
    notify_once("start", "could not start the language server: " .. tostring(client_id))
    return nil
  end
  return client_id
end

attach_all = function()
  for _, buf in ipairs(api.nvim_list_bufs()) do
    if api.nvim_buf_is_loaded(buf) then
      M.attach(buf)
    end
  end
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
  if not native() and #M.clients(0) > 0 and M.enabled(0) then
    suggestion.request(true)
    return true
  end
  return false
end
function M.visible()
  return suggestion.visible()
end

--- Switch suggestions on (true), off (false) or over (nil); for `buf` only when given (0: the
--- current buffer), else for every buffer. Returns whether they are now on.
function M.set_enabled(on, buf)
  local function apply(b)
    if not M.enabled(b) then
      suggestion.on_buf_leave(b) -- its ghost text and any request in flight go
    end
  end
  if buf ~= nil then
    buf = buf == 0 and api.nvim_get_current_buf() or buf
    if on == nil then
      on = not M.enabled(buf)
    end
    vim.b[buf].flywheel_enabled = on
    apply(buf)
  else
    if on == nil then
      on = not globally_enabled
    end
    globally_enabled = on
    for _, b in ipairs(api.nvim_list_bufs()) do
      if api.nvim_buf_is_loaded(b) then
        vim.b[b].flywheel_enabled = nil
        apply(b)
      end
    end
  end
  redraw_statusline()
  return on
end

--- A short word for a statusline: "" where Flywheel has nothing to do with the buffer, otherwise
--- "Flywheel" followed by what is wrong or different ("off", "manual", "unauthorized", ...).
function M.statusline(buf)
  buf = (buf == nil or buf == 0) and api.nvim_get_current_buf() or buf
  if not M.config or not api.nvim_buf_is_valid(buf) then
    return ""
  end
  local refusal = M.refusal(buf)
  if refusal == "other" or refusal == "language" then
    return ""
  end
  if refusal == "excluded" then
    return "Flywheel: excluded"
  end
  if not M.enabled(buf) then
    return "Flywheel: off"
  end
  if #M.clients(buf) == 0 and refusal == nil then
    return "Flywheel: not running"
  end
  local backend = M.server_status.backend
  if backend == "unauthorized" or backend == "unreachable" then
    return "Flywheel: " .. backend
  end
  if refusal == "unknown" then
    return "Flywheel: starting"
  end
  return M.config.auto_trigger and "Flywheel" or "Flywheel: manual"
end

--- The backend as the language server sees it (`status`: its flywheel/status answer), or without
--- one as the plugin's own probe of GET /v1/model with the configured token sees it. Returns the
--- state ("ok", "unauthorized", "unreachable" or "unknown"), the URL and a detail for people.
function M.backend_check(status, timeout_ms)
  local config = M.config or M.defaults
  local init = config.init_options or {}
  local url = (status and status.backend_url) or config.backend_url or init.backendUrl or DEFAULT_BACKEND_URL
  if status and status.backend then
    local detail = status.last_backend_error
    if status.backend == "ok" then
      local languages = table.concat(status.languages or {}, ", ")
      detail = "token accepted"
        .. (status.model_version and (", serving " .. tostring(status.model_version)) or "")
        .. (languages ~= "" and (", languages " .. languages) or "")
    end
    return status.backend, url, detail
  end
  local token = config.token or init.token
  local ok, body, code = util.probe_backend_sync(url, timeout_ms or 3000, token)
  if ok then
    local info = util.decode(body)
    return "ok", url, "token accepted" .. (info.live_version and (", serving " .. info.live_version) or "")
  elseif ok == false and util.unauthorized(code) then
    local why = token and "it refused the token" or "no token is set in setup() and none was accepted"
    return "unauthorized", url, why .. " (" .. tostring(body) .. ")"
  elseif ok == false then
    return "unreachable", url, body
  end
  return "unknown", url, body
end

local function backend_line(state, url, detail)
  if state == "ok" then
    return string.format("Backend: %s, reachable, %s", url, detail)
  elseif state == "unknown" then
    return string.format("Backend: %s, not probed (%s)", url, tostring(detail))
  end
  return string.format("Backend: %s, %s: %s", url, state, tostring(detail))
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
    local why = vim.fn.executable(cmd) == 1 and "open a file of a served language" or ("`" .. cmd .. "` not found")
    lines[#lines + 1] = "Flywheel language server: not running (" .. why .. ")"
    if M.config.backend_url or M.config.init_options.backendUrl then
      lines[#lines + 1] = backend_line(M.backend_check(nil, timeout_ms))
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
      lines[#lines + 1] = backend_line(M.backend_check(status, timeout_ms))
      local version = type(status.model_version) == "string" and status.model_version
      lines[#lines + 1] = "Model version: " .. (version or "unknown until the first suggestion")
      lines[#lines + 1] = "Languages: " .. table.concat(status.languages or {}, ", ")
      lines[#lines + 1] = "Telemetry: " .. (status.telemetry and "on" or "off")
      lines[#lines + 1] = string.format(
        "Events: %s delivered, %s waiting in the outbox, %s dropped",
        tostring(status.events_delivered),
        tostring(status.outbox_pending),
        tostring(status.outbox_dropped)
      )
    end
  end
  lines[#lines + 1] = "This buffer: " .. M.statusline(0):gsub("^Flywheel: ", ""):gsub("^Flywheel$", "on")
  return lines
end

function M.show_status()
  vim.notify(table.concat(M.status_lines(), "\n"), vim.log.levels.INFO, { title = "flywheel" })
end

function M.setup(opts)
  M.config = merge(M.defaults, opts)
  exclusions = {}
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
  globally_enabled = M.config.enabled ~= false
  suggestion.configure({
    auto_trigger = M.config.auto_trigger ~= false,
    menu_visible = menu.visible,
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
      return M.enabled(buf) and #M.clients(buf) > 0
    end)
    menu.autocmds(group, suggestion.hide, suggestion.on_menu_closed)
  end
  api.nvim_create_autocmd("BufWipeout", {
    group = group,
    callback = function(args)
      keymaps.forget(args.buf)
      exclusions[args.buf] = nil
    end,
  })
  attach_all()
end

return M
