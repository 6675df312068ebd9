-- Which buffers the plugin hands to the language server: never an excluded path, and by default
-- only the languages the backend's model serves (the server says which, in flywheel/status and
-- flywheel/didChangeStatus). The server applies the same rules (lsp_server/gate.py); the plugin
-- applies them too so that an excluded file's text never even reaches the server.
local M = {}

-- The same list as lsp_server/gate.py DEFAULT_EXCLUDE (a test checks that they agree). Without "/"
-- a glob matches the file name, with "/" the whole path; "*" also crosses "/".
M.DEFAULT_EXCLUDE = {
  ".env",
  ".env.*",
  "*.env",
  ".envrc",
  "*.pem",
  "*.key",
  "*.p12",
  "*.pfx",
  "*.jks",
  "*.keystore",
  "*.kdbx",
  "*.gpg",
  "id_rsa*",
  "id_dsa*",
  "id_ecdsa*",
  "id_ed25519*",
  ".netrc",
  ".pgpass",
  ".pypirc",
  ".npmrc",
  ".git-credentials",
  "credentials",
  "credentials.json",
  "*/.ssh/*",
  "*/.aws/*",
  "*/.gnupg/*",
}

M.EVERY_LANGUAGE = "*"

local patterns = {}

-- fnmatch's rules as a Lua pattern: "*" any run, "?" one character, everything else literal.
local function to_pattern(glob)
  local cached = patterns[glob]
  if cached then
    return cached
  end
  local out = { "^" }
  for char in glob:gmatch(".") do
    if char == "*" then
      out[#out + 1] = ".*"
    elseif char == "?" then
      out[#out + 1] = "."
    elseif char:match("%p") then
      out[#out + 1] = "%" .. char
    else
      out[#out + 1] = char
    end
  end
  out[#out + 1] = "$"
  cached = table.concat(out)
  patterns[glob] = cached
  return cached
end

--- Whether the file at `path` (absolute) is excluded by the defaults or `user` globs; `root` is the
--- workspace root, for globs relative to it.
function M.excluded(path, user, root)
  if path == nil or path == "" then
    return false
  end
  local name = vim.fs.basename(path)
  local relative = nil
  if root and root ~= "" and path:sub(1, #root + 1) == root .. "/" then
    relative = path:sub(#root + 2)
  end
  local function matches(glob)
    if not glob:find("/", 1, true) then
      return name:match(to_pattern(glob)) ~= nil
    end
    if path:match(to_pattern(glob)) then
      return true
    end
    return relative ~= nil and relative:match(to_pattern((glob:gsub("^/+", "")))) ~= nil
  end
  for _, glob in ipairs(M.DEFAULT_EXCLUDE) do
    if matches(glob) then
      return true
    end
  end
  for _, glob in ipairs(user or {}) do
    if matches(glob) then
      return true
    end
  end
  return false
end

--- The user's word on `filetype`: true, false, or nil (then what the backend serves decides).
function M.choice(filetype, languages)
  languages = languages or {}
  if languages[filetype] ~= nil then
    return languages[filetype]
  end
  if languages[M.EVERY_LANGUAGE] == false then
    return false
  end
  if languages[M.EVERY_LANGUAGE] == true then
    return true
  end
  return nil
end

--- setup()'s `languages` and the older `filetypes` list as the server's `languages` option.
function M.languages_option(languages, filetypes)
  local out = vim.deepcopy(languages or {})
  if type(filetypes) == "table" then
    for _, filetype in ipairs(filetypes) do
      if out[filetype] == nil then
        out[filetype] = true
      end
    end
    if out[M.EVERY_LANGUAGE] == nil then
      out[M.EVERY_LANGUAGE] = false -- a list names the only filetypes wanted
    end
  end
  return out
end

return M
