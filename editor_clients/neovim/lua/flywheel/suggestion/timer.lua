-- One libuv timer per buffer, restarted by each keystroke. Its delay is 0 by default: the text
-- and cursor events of one keystroke make one request; the debounce itself is the server's.
local uv = vim.uv or vim.loop

local M = {}

local timers = {}

--- Run `fn` after `delay_ms` unless started again (or stopped) for `buf` meanwhile.
function M.start(buf, delay_ms, fn)
  local timer = timers[buf]
  if not timer then
    timer = uv.new_timer()
    timers[buf] = timer
  end
  timer:stop()
  timer:start(delay_ms, 0, vim.schedule_wrap(fn))
end

function M.stop(buf)
  if timers[buf] then
    timers[buf]:stop()
  end
end

--- The buffer is gone: free its timer.
function M.close(buf)
  local timer = timers[buf]
  timers[buf] = nil
  if timer then
    timer:stop()
    if not timer:is_closing() then
      timer:close()
    end
  end
end

return M
