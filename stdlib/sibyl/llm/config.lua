-- sibyl.llm.config -- which providers exist: llm.configure (a table or a
-- YAML file), the providers the environment describes when nothing was
-- configured, llm.provider, and the chain of clients a call falls back
-- along. Internal to sibyl.llm, which re-exports configure and provider.
--
-- install(llm) binds the sibyl.llm table: clients are made with
-- llm.client and looked up through llm.provider, so this file requires
-- nothing of init.lua. The configuration is _M.registry (nil until the
-- first configure or the first look-up, which reads the environment).

local sibyl = require "sibyl"
local usage = require "sibyl.llm.usage"

local type, pairs, ipairs, tostring, pcall, error, next, getmetatable =
    type, pairs, ipairs, tostring, pcall, error, next, getmetatable
local format, gsub = string.format, string.gsub
local concat = table.concat
local getenv = os.getenv
local mkerror = sibyl.error

local _M = {}

-- { providers = {name = client}, order = {...}, default, fallback, fallback_on }
_M.registry = nil

local llm                       -- the sibyl.llm table, set by install


--- A copy of base with over's fields on top (shared with sibyl/llm/init.lua).
local function merge(base, over)
    local t = {}
    for k, v in pairs(base) do t[k] = v end
    if over then
        for k, v in pairs(over) do t[k] = v end
    end
    return t
end
_M.merge = merge


--- s, or nil when it is nil or "" (an unset or empty environment variable).
local function nonempty(s)
    if s == nil or s == "" then return nil end
    return s
end
_M.nonempty = nonempty


--- Configure providers: a table or the path of a YAML file (sibyl.config,
-- so ${VAR} works). Returns true or nil, err (kind "config", "io", "parse").
-- { default = "main", fallback = {"main", "backup"}, fallback_on = {...},
--   providers = { main = { type = "openai", base_url = ..., model = ... } },
--   prices = { ["gpt-4o-mini"] = { input = 0.15, output = 0.6 } },
--   retry = { attempts = 4 } }
-- `retry` applies to every configured provider (its own `retry` wins); a new
-- configuration replaces the previous one, prices included.
function _M.configure(conf)
    if type(conf) == "string" then
        local err
        conf, err = require("sibyl.config").load(conf)
        if not conf then return nil, err end
        conf = conf.llm or conf
    end
    if type(conf) ~= "table" then error("llm.configure: a table or a YAML file path expected", 2) end
    local reg = { providers = {}, order = {} }
    if type(conf.providers) ~= "table" then
        return nil, mkerror("config", "llm.configure: `providers` must map names to provider settings "
            .. "(e.g. providers: {main: {type: openai, base_url: ..., model: ...}})")
    end
    local names = {}
    for name in pairs(conf.providers) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do
        local pc = merge(conf.providers[name], { name = name })
        if conf.retry then pc.retry = merge(conf.retry, pc.retry) end    -- the provider's own wins
        local ok, c = pcall(llm.client, pc)
        if not ok then
            return nil, mkerror("config", format("llm.configure: provider %q: %s", name,
                                                 gsub(tostring(c), "^[^:]*:%d+: ", "")))
        end
        reg.providers[name] = c
        reg.order[#reg.order + 1] = name
    end
    reg.default = conf.default or reg.order[1]
    if not reg.providers[reg.default] then
        return nil, mkerror("config", format("llm.configure: default provider %q is not among the providers (%s)",
                                             tostring(reg.default), concat(reg.order, ", ")))
    end
    reg.fallback = conf.fallback
    reg.fallback_on = conf.fallback_on
    for _, f in ipairs(reg.fallback or {}) do
        local fname = type(f) == "table" and f.provider or f
        if not reg.providers[fname] then
            return nil, mkerror("config", format("llm.configure: fallback provider %q is not configured", tostring(fname)))
        end
    end
    usage.set_prices(merge(conf.prices or {}))
    _M.registry = reg
    return true
end


-- Providers from the environment, when nothing was configured.
local function from_env()
    local path = nonempty(getenv("SIBYL_LLM_CONFIG"))
    if path then
        local ok, err = llm.configure(path)
        if not ok then return nil, err end
        return _M.registry
    end
    local conf = { providers = {} }
    local model = nonempty(getenv("SIBYL_MODEL"))
    if nonempty(getenv("OPENAI_API_KEY")) or nonempty(getenv("OPENAI_BASE_URL")) then
        conf.providers.openai = { type = "openai", base_url = nonempty(getenv("OPENAI_BASE_URL")),
                                  model = nonempty(getenv("OPENAI_MODEL")) }
    end
    if nonempty(getenv("ANTHROPIC_API_KEY")) or nonempty(getenv("ANTHROPIC_BASE_URL")) then
        conf.providers.anthropic = { type = "anthropic", base_url = nonempty(getenv("ANTHROPIC_BASE_URL")),
                                     model = nonempty(getenv("ANTHROPIC_MODEL")) }
    end
    local want = nonempty(getenv("SIBYL_PROVIDER"))
    if want == "mock" then conf.providers.mock = { type = "mock" } end
    if want == "ollama" then
        conf.providers.ollama = { type = "openai", api_key = false,
            base_url = (nonempty(getenv("OLLAMA_HOST")) and ("http://" .. gsub(getenv("OLLAMA_HOST"), "^https?://", "")) or "http://127.0.0.1:11434") .. "/v1",
            model = "llama3.2" }
    end
    if next(conf.providers) == nil then
        return nil, mkerror("config", "sibyl.llm: no provider configured; set OPENAI_API_KEY (and "
            .. "OPENAI_BASE_URL for other OpenAI-compatible servers), ANTHROPIC_API_KEY, "
            .. "SIBYL_PROVIDER=ollama or =mock, or call llm.configure{...} (see doc/llm.md)")
    end
    conf.default = want or (conf.providers.openai and "openai") or "anthropic"
    if not conf.providers[conf.default] then
        return nil, mkerror("config", format("sibyl.llm: SIBYL_PROVIDER=%s, but that provider has no settings "
            .. "(set its API key or base URL)", want))
    end
    if model then conf.providers[conf.default].model = model end
    local ok, err = llm.configure(conf)
    if not ok then return nil, err end
    return _M.registry
end


local function get_registry()
    local reg = _M.registry
    if reg then return reg end
    return from_env()
end


--- The configured client called `name` (default: the default provider).
function _M.provider(name)
    local reg, err = get_registry()
    if not reg then return nil, err end
    name = name or reg.default
    local c = reg.providers[name]
    if not c then
        return nil, mkerror("config", format("sibyl.llm: no provider %q (configured: %s)", tostring(name),
                                             concat(reg.order, ", ")))
    end
    return c
end


-- The chain of {client, model} to try for a call.
function _M.chain_for(opts)
    local first = opts.provider
    local chain = {}
    if type(first) == "table" then
        chain[1] = { first, opts.model }
    else
        local c, err = llm.provider(first)
        if not c then return nil, err end
        chain[1] = { c, opts.model }
    end
    local fallback = opts.fallback
    if fallback == nil and opts.provider == nil and _M.registry then fallback = _M.registry.fallback end
    for _, f in ipairs(fallback or {}) do
        local fc, fmodel = f, nil
        if type(f) == "table" and getmetatable(f) ~= llm._client_mt and not f.chat then
            fc, fmodel = f.provider, f.model
        end
        if type(fc) ~= "table" then
            local err
            fc, err = llm.provider(fc)
            if not fc then return nil, err end
        end
        if fc ~= chain[1][1] or fmodel then chain[#chain + 1] = { fc, fmodel } end
    end
    return chain
end


--- Bind the sibyl.llm table `l` (its client, configure and provider).
function _M.install(l)
    llm = l
end


return _M
