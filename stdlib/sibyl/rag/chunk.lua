-- sibyl.rag.chunk -- split documents into overlapping chunks for retrieval.
--
--   local chunk = require "sibyl.rag.chunk"
--   for _, c in ipairs(chunk.split(text, { source = "doc/http.md", size = 800, overlap = 120 })) do
--       print(c.index, c.heading, c.start, c.stop, c.line, #c.text)
--   end
--
-- Text is cut into units (sentences; a code block or a table is one unit,
-- split at line ends only when it alone is too big), and units are packed
-- into chunks of at most `size` bytes. Consecutive chunks of a section share
-- up to `overlap` bytes of whole units. In Markdown a heading ends the chunk
-- before it, and every chunk carries its heading path ("HTTP > Errors").
-- Offsets are byte positions in the original text (start and stop
-- inclusive), so a chunk can always be traced back to its source.

local type, ipairs, error, setmetatable = type, ipairs, error, setmetatable
local find, sub, match, gsub, byte = string.find, string.sub, string.match, string.gsub, string.byte
local concat, remove = table.concat, table.remove
local max, min = math.max, math.min

local _M = {}

_M.defaults = {
    size = 800,             -- bytes per chunk at most (a longer line is split at spaces)
    overlap = 120,          -- bytes of trailing units repeated at the start of the next chunk
    min_size = 40,          -- a smaller tail is merged into the chunk before it
}

local MARKDOWN_EXT = { md = true, markdown = true, mdx = true, rst = false }


-- Line number of byte offset pos (1-based), counting from a cache.
local function line_index(text)
    local starts = { 1 }
    local p = 1
    while true do
        local nl = find(text, "\n", p, true)
        if not nl then break end
        starts[#starts + 1] = nl + 1
        p = nl + 1
    end
    return function(pos)
        local lo, hi = 1, #starts
        while lo < hi do
            local mid = math.floor((lo + hi + 1) / 2)
            if starts[mid] <= pos then lo = mid else hi = mid - 1 end
        end
        return lo
    end
end


-- Sentences of a prose block [s, e] as units {start, stop}.
local function sentences(text, s, e, out)
    local p = s
    while p <= e do
        -- a sentence ends at . ! ? (then quotes/brackets) followed by whitespace
        local a, b = find(text, "[%.!?][\"')%]]*%s", p)
        if not a or b > e + 1 then
            out[#out + 1] = { p, e }
            return
        end
        local stop = b - 1
        while stop > p and match(sub(text, stop, stop), "%s") do stop = stop - 1 end
        out[#out + 1] = { p, stop }
        p = b
        while p <= e and match(sub(text, p, p), "%s") do p = p + 1 end
    end
end


-- Split a too-long unit at whitespace (or hard) into pieces of <= size.
local function split_long(text, u, size, out)
    local s, e = u[1], u[2]
    while e - s + 1 > size do
        local cut = s + size - 1
        local ws = cut
        while ws > s + size / 2 and not match(sub(text, ws, ws), "%s") do ws = ws - 1 end
        if ws > s + size / 2 then cut = ws end
        out[#out + 1] = { s, cut, u[3] }
        s = cut + 1
        while s <= e and match(sub(text, s, s), "%s") do s = s + 1 end
    end
    if s <= e then out[#out + 1] = { s, e, u[3] } end
end


-- Units of the whole text: {start, stop, heading, hard (a heading boundary)}.
local function units(text, markdown)
    local out = {}
    local path = {}                         -- heading path, by level
    local heading = nil
    local pos, n = 1, #text
    local block_start, block_kind = nil, nil
    local boundary = false

    local function flush_block(stop)
        if not block_start then return end
        local s, e = block_start, stop
        while s <= e and match(sub(text, s, s), "%s") do s = s + 1 end
        while e >= s and match(sub(text, e, e), "%s") do e = e - 1 end
        if s <= e then
            local first = #out + 1
            if block_kind == "prose" then
                sentences(text, s, e, out)
            else
                out[#out + 1] = { s, e }    -- code, tables, lists: one unit
            end
            for i = first, #out do out[i][3] = heading end
            if boundary and out[first] then out[first].hard = true end
            boundary = false
        end
        block_start, block_kind = nil, nil
    end

    local in_fence = false
    while pos <= n do
        local nl = find(text, "\n", pos, true) or (n + 1)
        local line = sub(text, pos, nl - 1)
        if markdown and match(line, "^%s*```") or markdown and match(line, "^%s*~~~") then
            if in_fence then
                in_fence = false
                flush_block(nl - 1)
            else
                flush_block(pos - 1)
                in_fence = true
                block_start, block_kind = pos, "code"
            end
        elseif in_fence then
            -- inside a fence: keep going
        elseif markdown and match(line, "^#+%s") then
            flush_block(pos - 1)
            local hashes, title = match(line, "^(#+)%s+(.-)%s*#*%s*$")
            local level = #hashes
            for l = level, #path do path[l] = nil end
            path[level] = title
            local parts = {}
            for l = 1, level do if path[l] then parts[#parts + 1] = path[l] end end
            heading = concat(parts, " > ")
            boundary = true
        elseif match(line, "^%s*$") then
            flush_block(pos - 1)
        else
            local kind = "prose"
            if match(line, "^%s*|") or match(line, "^%s*[-*+]%s") or match(line, "^%s*%d+[.)]%s")
               or match(line, "^    ") or match(line, "^\t") then
                kind = "block"
            end
            if block_start and block_kind ~= kind and (kind == "block" or block_kind == "block") then
                flush_block(pos - 1)
            end
            if not block_start then block_start, block_kind = pos, kind end
        end
        pos = nl + 1
    end
    flush_block(n)
    return out
end


--- Split text into chunks. opts: size, overlap, min_size, source (a path,
-- also used to tell Markdown by its extension), markdown (true/false to
-- force). Returns a list of {index, text, source, start, stop, line,
-- heading}; an empty text gives an empty list.
function _M.split(text, opts)
    if type(text) ~= "string" then error("chunk.split: text must be a string", 2) end
    opts = opts or {}
    local d = _M.defaults
    local size = opts.size or d.size
    local overlap = opts.overlap or d.overlap
    local min_size = opts.min_size or d.min_size
    if size < 16 then error("chunk.split: size must be at least 16 bytes", 2) end
    if overlap < 0 or overlap >= size then error("chunk.split: overlap must be >= 0 and < size", 2) end
    local markdown = opts.markdown
    if markdown == nil then
        local ext = opts.source and match(opts.source, "%.([%w]+)$")
        markdown = ext and MARKDOWN_EXT[ext:lower()] or false
    end

    local us = {}
    for _, u in ipairs(units(text, markdown)) do
        if u[2] - u[1] + 1 > size then
            local pieces = {}
            split_long(text, u, size, pieces)
            pieces[1].hard = u.hard
            for _, p in ipairs(pieces) do us[#us + 1] = p end
        else
            us[#us + 1] = u
        end
    end

    local line_of = line_index(text)
    local chunks = {}
    local function emit(list)
        if #list == 0 then return end
        local s, e = list[1][1], list[#list][2]
        chunks[#chunks + 1] = {
            index = #chunks + 1, text = sub(text, s, e), source = opts.source,
            start = s, stop = e, line = line_of(s), heading = list[1][3],
        }
    end

    local cur, cur_len = {}, 0
    for _, u in ipairs(us) do
        local len = u[2] - u[1] + 1
        local span = #cur > 0 and (u[2] - cur[1][1] + 1) or len
        if #cur > 0 and (u.hard or u[3] ~= cur[#cur][3] or span > size) then
            emit(cur)
            -- the next chunk starts with the tail units that fit in `overlap`
            local keep = {}
            if not u.hard and u[3] == cur[#cur][3] then
                local budget = overlap
                for i = #cur, 1, -1 do
                    local l = cur[i][2] - cur[i][1] + 1
                    if l > budget then break end
                    budget = budget - l
                    table.insert(keep, 1, cur[i])
                end
                -- overlap plus the new unit must still fit
                while #keep > 0 and u[2] - keep[1][1] + 1 > size do remove(keep, 1) end
            end
            cur = keep
        end
        cur[#cur + 1] = u
        cur_len = u[2] - cur[1][1] + 1
    end
    -- a tiny tail joins the chunk before it when they fit together
    if #cur > 0 and cur_len < min_size and #chunks > 0 then
        local last = chunks[#chunks]
        if cur[#cur][2] - last.start + 1 <= size and cur[1][3] == last.heading then
            last.stop = cur[#cur][2]
            last.text = sub(text, last.start, last.stop)
            cur = {}
        end
    end
    emit(cur)
    return chunks
end


return _M
