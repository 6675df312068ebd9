-- Small helpers that hide the differences between Neovim 0.10, 0.11 and 0.12.
local M = {}

local uv = vim.uv or vim.loop

M.has_011 = vim.fn.has("nvim-0.11") == 1
M.has_012 = vim.fn.has("nvim-0.12") == 1

--- Length of `s` in UTF-16 code units (what LSP positions and acceptedLength count).
function M.utf16_len(s)
  if s == nil or s == "" then
    return 0
  end
  if M.has_011 then
    local ok, n = pcall(vim.str_utfindex, s, "utf-16")
    if ok and n then
      return n
    end
  else
    local ok, _, n16 = pcall(vim.str_utfindex, s)
    if ok and n16 then
      return n16
    end
  end
  -- Not valid UTF-8: count code units by hand (lead bytes; 4-byte sequences are surrogate pairs).
  local n = 0
  for i = 1, #s do
    local b = s:byte(i)
    if b < 0x80 or b >= 0xC0 then
      n = n + (b >= 0xF0 and 2 or 1)
    end
  end
  return n
end

--- Byte column in `line` of an LSP character offset in `encoding`.
function M.byte_col(line, character, encoding)
  encoding = encoding or "utf-16"
  if encoding == "utf-8" then
    return math.min(character, #line)
  end
  local ok, col
  if M.has_011 then
    ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  else
    ok, col = pcall(vim.str_byteindex, line, character, encoding == "utf-16")
  end
  if ok and col then
    return math.min(col, #line)
  end
  return #line
end

function M.get_clients(filter)
  if vim.lsp.get_clients then
    return vim.lsp.get_clients(filter)
  end
  return vim.lsp.get_active_clients(filter)
end

function M.is_stopped(client)
  if M.has_011 then
    return client:is_stopped()
  end
  return client.is_stopped()
end

-- 0.11 made client methods `client:method()`; 0.10 has `client.method()`.
function M.request(client, method, params, handler, bufnr)
  if M.has_011 then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

function M.notify(client, method, params)
  if M.has_011 then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

function M.cancel_request(client, id)
  if M.has_011 then
    return client:cancel_request(id)
  end
  return client.cancel_request(id)
end

--- A request answered synchronously (for :checkhealth, :FlywheelStatus and tests).
function M.request_sync(client, method, params, timeout_ms, bufnr)
  local done, result, err = false, nil, nil
  local ok = M.request(client, method, params or {}, function(e, r)
    done, err, result = true, e, r
  end, bufnr)
  if not ok then
    return nil, "the request could not be sent"
  end
  vim.wait(timeout_ms or 3000, function()
    return done
  end, 10)
  if not done then
    return nil, "no answer within " .. (timeout_ms or 3000) .. " ms"
  end
  if err then
    return nil, err.message or vim.inspect(err)
  end
  return result, nil
end

--- GET <url>/v1/model over plain HTTP with libuv (no curl needed), with `token` as the bearer
--- token when given: a client route, so a wrong token shows (where /healthz answers anyone). Calls
--- `callback(ok, detail, status)` on the main loop: ok is true with the JSON body, false with a
--- reason (status is the HTTP status when there was an answer: 401 and 403 mean the token was
--- refused), or nil when the URL can't be probed this way (https).
function M.probe_backend(url, timeout_ms, callback, token)
  local host, port, base = tostring(url or ""):match("^http://([^/:]+):?(%d*)(.*)$")
  if not host then
    vim.schedule(function()
      callback(nil, "only http:// backends can be probed from here")
    end)
    return
  end
  port = tonumber(port) or 80
  base = (base or ""):gsub("/+$", "")
  local finished = false
  local tcp, timer
  local function finish(ok, detail, status)
    if finished then
      return
    end
    finished = true
    if timer and not timer:is_closing() then
      timer:stop()
      timer:close()
    end
    if tcp and not tcp:is_closing() then
      tcp:close()
    end
    vim.schedule(function()
      callback(ok, detail, status)
    end)
  end
  timer = uv.new_timer()
  timer:start(timeout_ms or 2000, 0, function()
    finish(false, "no answer within " .. (timeout_ms or 2000) .. " ms")
  end)
  local lookup = host == "localhost" and "127.0.0.1" or host
  uv.getaddrinfo(lookup, tostring(port), { socktype = "stream" }, function(err, addresses)
    if finished then
      return
    end
    if err or not addresses or not addresses[1] then
      return finish(false, "cannot resolve " .. host .. (err and (": " .. err) or ""))
    end
    tcp = uv.new_tcp()
    tcp:connect(addresses[1].addr, addresses[1].port, function(connect_err)
      if connect_err then
        return finish(false, "cannot connect to " .. host .. ":" .. port .. " (" .. connect_err .. ")")
      end
      local chunks = {}
      tcp:read_start(function(read_err, chunk)
        if read_err then
          return finish(false, read_err)
        end
        if chunk then
          chunks[#chunks + 1] = chunk
          return
        end
        local response = table.concat(chunks)
        local status = tonumber(response:match("^HTTP/%d[%.%d]* (%d+)"))
        local body = response:match("\r\n\r\n(.*)$") or ""
        if status == 200 then
          finish(true, body, status)
        else
          finish(false, "HTTP " .. tostring(status or "?") .. " from " .. base .. "/v1/model", status)
        end
      end)
      local auth = (token and token ~= "") and ("Authorization: Bearer " .. token .. "\r\n") or ""
      tcp:write(
        "GET "
          .. base
          .. "/v1/model HTTP/1.0\r\nHost: "
          .. host
          .. "\r\n"
          .. auth
          .. "Connection: close\r\n\r\n"
      )
    end)
  end)
end

--- The JSON body of a healthy answer, decoded (on the main loop).
function M.decode(body)
  local ok, value = pcall(vim.json.decode, body or "")
  if ok and type(value) == "table" then
    return value
  end
  return {}
end

function M.probe_backend_sync(url, timeout_ms, token)
  local done, ok, detail, status = false, nil, nil, nil
  M.probe_backend(url, timeout_ms, function(o, d, s)
    done, ok, detail, status = true, o, d, s
  end, token)
  vim.wait((timeout_ms or 2000) + 500, function()
    return done
  end, 10)
  return ok, detail, status
end

--- 401 and 403: the backend refused the token.
function M.unauthorized(status)
  return status == 401 or status == 403
end

return M
