-- sibyl.schema.pattern -- ECMA-262 regexes (JSON Schema `pattern`,
-- `patternProperties`) translated to Lua patterns for sibyl.schema.
--
--   local pattern = require "sibyl.schema.pattern"
--   local pats, why = pattern.translate("^(cat|dog)s?$")
--   --> { "^cats?$", "^dogs?$" }: a string matches when any of them finds it
--
-- The regex is parsed into a tree, then expanded into a list of Lua patterns
-- whose union matches what the regex matches (alternation and bounded
-- repeats of groups become alternatives). `.`, negated classes and \D \S \W
-- match one whole UTF-8 character. sibyl.schema publishes translate as
-- schema.translate_pattern, the name its errors use.
--
-- Caveats:
--  * Malformed regexes raise. Valid ones that cannot be translated answer
--    nil, reason: a group or non-ASCII character repeated with * or +,
--    lookaround, \b \B, backreferences, \p{...}, \c, non-ASCII in a class,
--    ^ or $ away from the ends, or an expansion too large (over 64
--    alternatives, a repeat count over 100, over 150 quantifiers).
--  * Lazy quantifiers match as greedy ones (the same strings match).

local type, next, ipairs, pairs, pcall, error, tonumber = type, next, ipairs, pairs, pcall, error, tonumber
local unpack = unpack or table.unpack
local byte, sub, find, gsub, char = string.byte, string.sub, string.find, string.gsub, string.char
local concat = table.concat
local floor = math.floor

local _M = { _VERSION = "0.1.0" }

local MAX_ALTS, MAX_REPEAT, MAX_QUANT = 64, 100, 150
local CONT = "[\128-\191]*"   -- the rest of a UTF-8 character
local BOL, EOL = {}, {}

-- Inside the translator, malformed regexes raise {re_bad = msg} and valid
-- but untranslatable ones raise {re_skip = reason}; translate sorts them out.
local function re_bad(msg) error({ re_bad = msg }, 0) end
local function re_skip(msg) error({ re_skip = msg }, 0) end


local function utf8_encode(cp)
    if cp < 0x80 then
        return char(cp)
    elseif cp < 0x800 then
        return char(0xC0 + floor(cp / 64), 0x80 + cp % 64)
    elseif cp < 0x10000 then
        return char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
    end
    return char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64, 0x80 + floor(cp / 64) % 64,
        0x80 + cp % 64)
end


-- One byte as a Lua pattern item (inside or outside a set).
local function lua_byte(b)
    if b == 0 then
        return "%z"
    end
    local c = char(b)
    if find(c, "%w") then
        return c
    elseif find(c, "%p") then
        return "%" .. c
    end
    return c
end


local ESCAPE_CHARS = { n = 10, r = 13, t = 9, f = 12, v = 11 }
local CLASS_ESCAPES = { d = "%d", w = "%w_", s = "%s" }


local function parse_regex(src)
    local pos, len = 1, #src

    local function at(i) return sub(src, i, i) end

    -- A code point from \xHH, \uHHHH, \u{H...} (pos is after the letter).
    local function hex_escape(letter)
        local digits
        if letter == "u" and at(pos) == "{" then
            local close = find(src, "}", pos, true)
            digits = close and sub(src, pos + 1, close - 1)
            if not digits or not find(digits, "^%x+$") then re_bad("bad \\u{...} escape") end
            pos = close + 1
        else
            local n = letter == "x" and 2 or 4
            digits = sub(src, pos, pos + n - 1)
            if not find(digits, "^%x+$") or #digits ~= n then re_bad("bad \\" .. letter .. " escape") end
            pos = pos + n
        end
        local cp = tonumber(digits, 16)
        if cp >= 0xD800 and cp <= 0xDBFF and sub(src, pos, pos + 1) == "\\u" then
            local lo = tonumber(sub(src, pos + 2, pos + 5), 16)
            if lo and lo >= 0xDC00 and lo <= 0xDFFF then
                cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00)
                pos = pos + 6
            end
        end
        if cp > 0x10FFFF then re_bad("code point out of range") end
        return cp
    end

    -- One UTF-8 character at pos as a code point (bytes stay in src).
    local function take_char()
        local c = byte(src, pos)
        local n = c < 0xC0 and 1 or c < 0xE0 and 2 or c < 0xF0 and 3 or 4
        local s = sub(src, pos, pos + n - 1)
        pos = pos + n
        return s
    end

    -- Escape after "\" (pos at the letter). Returns either { cls = "%d" },
    -- { neg = "%d" } for \D \S \W, or { cp = n } / { s = bytes } literals.
    local function escape(in_class)
        if pos > len then re_bad("trailing \\") end
        local c = at(pos)
        pos = pos + 1
        local cls = CLASS_ESCAPES[c]
        if cls then return { cls = cls } end
        cls = CLASS_ESCAPES[c:lower()]
        if cls then return { neg = cls } end
        if ESCAPE_CHARS[c] then return { cp = ESCAPE_CHARS[c] } end
        if c == "x" or c == "u" then return { cp = hex_escape(c) } end
        if c == "0" and not find(at(pos), "%d") then return { cp = 0 } end
        if c == "b" and in_class then return { cp = 8 } end
        if c == "b" or c == "B" then re_skip("word boundary \\" .. c) end
        if find(c, "%d") then re_skip("backreference \\" .. c) end
        if c == "k" then re_skip("named backreference") end
        if c == "p" or c == "P" then re_skip("Unicode property escape \\" .. c) end
        if c == "c" then re_skip("control escape \\c") end
        pos = pos - 1
        return { s = take_char() }   -- identity escape: \. \/ \- \\ ...
    end

    local function parse_class()
        pos = pos + 1                      -- past "["
        local negated = at(pos) == "^"
        if negated then pos = pos + 1 end
        if at(pos) == "]" then re_skip("empty class [] or [^]") end
        local body, pos_cls, neg_cls = {}, {}, {}

        local function member()
            if pos > len then re_bad("missing ]") end
            if at(pos) == "\\" then
                pos = pos + 1
                local e = escape(true)
                if e.s then
                    if #e.s > 1 then re_skip("non-ASCII character in a class") end
                    return { cp = byte(e.s) }
                end
                return e
            end
            local s = take_char()
            if #s > 1 then re_skip("non-ASCII character in a class") end
            return { cp = byte(s) }
        end

        while true do
            if pos > len then re_bad("missing ]") end
            if at(pos) == "]" then
                pos = pos + 1
                break
            end
            local lo = member()
            if lo.cp and lo.cp > 127 then re_skip("non-ASCII character in a class") end
            if at(pos) == "-" and pos + 1 <= len and at(pos + 1) ~= "]" then
                pos = pos + 1
                local hi = member()
                if not lo.cp or not hi.cp then re_skip("class escape in a range") end
                if lo.cp > hi.cp then re_bad("range out of order in character class") end
                if hi.cp > 127 then re_skip("non-ASCII range in a class") end
                local a, b = char(lo.cp), char(hi.cp)
                if (find(a, "%l") and find(b, "%l")) or (find(a, "%u") and find(b, "%u"))
                        or (find(a, "%d") and find(b, "%d")) then
                    body[#body + 1] = a .. "-" .. b
                else
                    for x = lo.cp, hi.cp do body[#body + 1] = lua_byte(x) end
                end
            elseif lo.cls then
                body[#body + 1] = lo.cls
                pos_cls[lo.cls] = true
            elseif lo.neg then
                neg_cls[lo.neg] = true
            else
                body[#body + 1] = lua_byte(lo.cp)
            end
        end
        if next(neg_cls) then
            -- [\s\S] and friends: any character. Other mixes are rare.
            for cls in pairs(neg_cls) do
                if negated or not pos_cls[cls] then re_skip("\\D, \\S or \\W inside a class") end
            end
            return { k = "wide", ex = "" }
        end
        if negated then
            return { k = "wide", ex = concat(body) }
        end
        return { k = "set", p = "[" .. concat(body) .. "]" }
    end

    -- {n}, {n,}, {n,m} at pos: min, max (nil = unbounded), end index.
    local function brace_at(i)
        local _, e, a, comma, b = find(src, "^{(%d+)(,?)(%d*)}", i)
        if not e then return nil end
        local min = tonumber(a)
        local max = comma == "" and min or (b ~= "" and tonumber(b) or nil)
        return min, max, e
    end

    local parse_alts

    local function parse_seq()
        local items = {}
        while pos <= len do
            local c = at(pos)
            if c == "|" or c == ")" then break end
            local atom
            if c == "^" then
                pos = pos + 1
                atom = { k = "anchor", mark = BOL }
            elseif c == "$" then
                pos = pos + 1
                atom = { k = "anchor", mark = EOL }
            elseif c == "(" then
                pos = pos + 1
                local look = false
                if at(pos) == "?" then
                    local two, three = sub(src, pos, pos + 1), sub(src, pos, pos + 2)
                    if two == "?:" then
                        pos = pos + 2
                    elseif two == "?=" or two == "?!" then
                        pos, look = pos + 2, true
                    elseif three == "?<=" or three == "?<!" then
                        pos, look = pos + 3, true
                    elseif two == "?<" then
                        local close = find(src, ">", pos, true)
                        if not close then re_bad("bad group name") end
                        pos = close + 1
                    else
                        re_bad("bad group (?" .. at(pos + 1) .. "")
                    end
                end
                local alts = parse_alts()
                if at(pos) ~= ")" then re_bad("missing )") end
                pos = pos + 1
                atom = { k = "group", alts = alts, look = look }
            elseif c == "[" then
                atom = parse_class()
            elseif c == "." then
                pos = pos + 1
                atom = { k = "wide", ex = "\n\r" }
            elseif c == "\\" then
                pos = pos + 1
                local e = escape(false)
                if e.cls then
                    atom = { k = "set", p = e.cls == "%w_" and "[%w_]" or e.cls }
                elseif e.neg then
                    atom = { k = "wide", ex = e.neg }
                else
                    atom = { k = "lit", s = e.s or utf8_encode(e.cp) }
                end
            elseif c == "*" or c == "+" or c == "?" or (c == "{" and brace_at(pos)) then
                re_bad("nothing to repeat at " .. pos)
            else
                atom = { k = "lit", s = take_char() }
            end

            local min, max
            c = at(pos)
            if c == "*" then
                min, max, pos = 0, nil, pos + 1
            elseif c == "+" then
                min, max, pos = 1, nil, pos + 1
            elseif c == "?" then
                min, max, pos = 0, 1, pos + 1
            elseif c == "{" then
                local e
                min, max, e = brace_at(pos)
                if min then
                    if max and max < min then re_bad("numbers out of order in {} quantifier") end
                    pos = e + 1
                end
            end
            if min then
                if atom.k == "anchor" or atom.look then re_bad("nothing to repeat at " .. pos) end
                if at(pos) == "?" then pos = pos + 1 end     -- lazy: same matches
                atom.min, atom.max, atom.q = min, max, true
            end
            items[#items + 1] = atom
        end
        return items
    end

    parse_alts = function()
        local alts = { parse_seq() }
        while at(pos) == "|" do
            pos = pos + 1
            alts[#alts + 1] = parse_seq()
        end
        return alts
    end

    local alts = parse_alts()
    if pos <= len then re_bad("unmatched )") end
    return alts
end


local expand_alts

-- Union of `alts` (lists of tokens) repeated min..max times.
local function repeat_alts(alts, min, max)
    local out = {}
    local cur = { {} }
    for count = 0, max do
        if count >= min then
            for _, a in ipairs(cur) do
                if #out >= MAX_ALTS then re_skip("too many alternatives") end
                out[#out + 1] = a
            end
        end
        if count < max then
            local nxt = {}
            for _, a in ipairs(cur) do
                for _, b in ipairs(alts) do
                    if #nxt >= MAX_ALTS then re_skip("too many alternatives") end
                    local t = { unpack(a) }
                    for _, tok in ipairs(b) do t[#t + 1] = tok end
                    nxt[#nxt + 1] = t
                end
            end
            cur = nxt
        end
    end
    return out
end


-- One item -> list of alternatives, each a list of tokens.
local function expand_item(it)
    local min, max = 1, 1
    if it.q then
        min, max = it.min, it.max
    end
    if min > MAX_REPEAT or (max and max > MAX_REPEAT) then re_skip("repeat count above " .. MAX_REPEAT) end
    local k = it.k
    if k == "anchor" then
        return { { it.mark } }
    end
    if k == "group" or (k == "lit" and #it.s > 1) then
        if it.look then re_skip("lookaround") end
        if not max then re_skip(k == "group" and "group repeated with * or +" or "non-ASCII character repeated with * or +") end
        local inner = k == "group" and expand_alts(it.alts) or { { it.s } }
        return repeat_alts(inner, min, max)
    end
    local one, tail_star, tail_opt
    if k == "wide" then
        local lead = "[^" .. it.ex .. "\128-\191]"
        one = lead .. CONT
        tail_star = (it.ex == "" and "." or "[^" .. it.ex .. "]") .. "*"
        tail_opt = lead .. "?" .. CONT
    else
        one = k == "set" and it.p or lua_byte(byte(it.s))
        tail_star, tail_opt = one .. "*", one .. "?"
    end
    local base = {}
    for i = 1, min do base[i] = one end
    if max == min then
        return { base }
    elseif max == nil and min > 0 and k ~= "wide" then
        base[min] = one .. "+"
        return { base }
    elseif max == nil then
        base[#base + 1] = tail_star
        return { base }
    elseif max == min + 1 then
        base[#base + 1] = tail_opt
        return { base }
    end
    return repeat_alts({ { one } }, min, max)
end


local function expand_seq(items)
    local acc = { {} }
    for _, it in ipairs(items) do
        local opts = expand_item(it)
        local nxt = {}
        for _, a in ipairs(acc) do
            for _, o in ipairs(opts) do
                if #nxt >= MAX_ALTS then re_skip("too many alternatives") end
                local t = { unpack(a) }
                for _, tok in ipairs(o) do t[#t + 1] = tok end
                nxt[#nxt + 1] = t
            end
        end
        acc = nxt
    end
    return acc
end


expand_alts = function(alts)
    local out = {}
    for _, seq in ipairs(alts) do
        for _, a in ipairs(expand_seq(seq)) do
            if #out >= MAX_ALTS then re_skip("too many alternatives") end
            out[#out + 1] = a
        end
    end
    return out
end


-- Tokens -> one Lua pattern (anchors only at the ends).
local function finish(tokens)
    local bol, eol, parts = false, false, {}
    for _, t in ipairs(tokens) do
        if t == BOL then
            if #parts > 0 or eol then re_skip("^ not at the start") end
            bol = true
        elseif t == EOL then
            eol = true
        else
            if eol then re_skip("$ not at the end") end
            parts[#parts + 1] = t
        end
    end
    local p = (bol and "^" or "") .. concat(parts) .. (eol and "$" or "")
    local _, quants = gsub(gsub(p, "%%.", ""), "[%*%+%?]", "")
    if quants > MAX_QUANT then re_skip("too many repeats for a Lua pattern") end
    return p
end


--- Translate an ECMA-262 regex to Lua patterns; a string matches the regex
-- when string.find matches any of them. Returns the list, or nil, reason
-- when the regex uses something untranslatable. Raises for malformed regexes.
--- Translate an ECMA-262 regex to Lua patterns; a string matches the regex
-- when string.find matches any of them. Returns the list, or nil, reason
-- when the regex uses something untranslatable. Raises for malformed regexes.
function _M.translate(src)
    if type(src) ~= "string" then
        error("bad argument #1 to 'translate_pattern' (string expected, got " .. type(src) .. ")", 2)
    end
    local ok, res = pcall(function()
        local out, seen = {}, {}
        for _, tokens in ipairs(expand_alts(parse_regex(src))) do
            local p = finish(tokens)
            if not seen[p] then
                seen[p] = true
                out[#out + 1] = p
            end
        end
        return out
    end)
    if ok then
        return res
    elseif type(res) == "table" and res.re_skip then
        return nil, res.re_skip
    elseif type(res) == "table" and res.re_bad then
        error("bad pattern /" .. src .. "/: " .. res.re_bad, 2)
    end
    error(res, 0)
end


return _M
