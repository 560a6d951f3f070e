-- sibyl.schema.formats -- the JSON Schema `format` checks sibyl.schema
-- knows: light syntactic checks, none of which allocates.
--
--   local formats = require "sibyl.schema.formats"
--   formats.checks.date("2024-02-29")   --> true
--   formats.hints.date                  --> "a date (YYYY-MM-DD)", for messages
--
-- sibyl.schema publishes `checks` as schema.formats; add your own checks
-- there (fn(string) -> boolean) before compiling a schema that names them.
--
-- Caveats:
--  * Syntax only: date-time, date and time follow RFC 3339 (leap days are
--    checked, a leap second :60 passes); email is one "@" with no spaces
--    and no empty domain labels; uri needs a scheme; hostname is RFC 1123
--    labels, ASCII only; duration is ISO 8601 (P3DT4H, PT0.5S).
--  * time accepts a missing offset ("09:30:00"); date-time requires one.

local byte, find = string.byte, string.find

local _M = { _VERSION = "0.1.0" }


local function digits(s, i, n)
    local v = 0
    for j = i, i + n - 1 do
        local c = byte(s, j)
        if c == nil or c < 48 or c > 57 then
            return nil
        end
        v = v * 10 + (c - 48)
    end
    return v
end


local function is_digit(c) return c ~= nil and c >= 48 and c <= 57 end
local function is_hex(c)
    return c ~= nil and ((c >= 48 and c <= 57) or (c >= 65 and c <= 70) or (c >= 97 and c <= 102))
end

local DAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }


-- Index after YYYY-MM-DD at i, or nil.
local function scan_date(s, i)
    local y, m, dd = digits(s, i, 4), digits(s, i + 5, 2), digits(s, i + 8, 2)
    if not (y and m and dd) or byte(s, i + 4) ~= 45 or byte(s, i + 7) ~= 45 or m < 1 or m > 12 or dd < 1 then
        return nil
    end
    local max = DAYS[m]
    if m == 2 and y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) then
        max = 29
    end
    return dd <= max and i + 10 or nil
end


-- Index after HH:MM:SS[.fraction] at i, or nil.
local function scan_time(s, i)
    local h, m, sec = digits(s, i, 2), digits(s, i + 3, 2), digits(s, i + 6, 2)
    if not (h and m and sec) or byte(s, i + 2) ~= 58 or byte(s, i + 5) ~= 58 or h > 23 or m > 59 or sec > 60 then
        return nil
    end
    i = i + 8
    if byte(s, i) == 46 then
        local j = i + 1
        while is_digit(byte(s, j)) do j = j + 1 end
        if j == i + 1 then return nil end
        i = j
    end
    return i
end


-- Index after Z or +HH:MM / -HH:MM at i, or nil.
local function scan_offset(s, i)
    local c = byte(s, i)
    if c == 90 or c == 122 then
        return i + 1
    end
    local h, m = digits(s, i + 1, 2), digits(s, i + 4, 2)
    if (c ~= 43 and c ~= 45) or not (h and m) or byte(s, i + 3) ~= 58 or h > 23 or m > 59 then
        return nil
    end
    return i + 6
end


-- Whether s[i..last] is a dotted-quad IPv4 address.
local function scan_ipv4(s, i, last)
    local parts = 0
    while true do
        local j, v = i, 0
        while j <= last and is_digit(byte(s, j)) do
            v = v * 10 + byte(s, j) - 48
            j = j + 1
        end
        local n = j - i
        if n == 0 or n > 3 or v > 255 or (n > 1 and byte(s, i) == 48) then
            return false
        end
        parts = parts + 1
        if j > last then
            return parts == 4
        end
        if byte(s, j) ~= 46 or parts == 4 then
            return false
        end
        i = j + 1
    end
end


local function is_ipv6(s)
    local n = #s
    if n < 2 or n > 45 then return false end
    local groups, double, i = 0, false, 1
    if byte(s, 1) == 58 then
        if byte(s, 2) ~= 58 then return false end
        double, i = true, 3
    end
    while i <= n do
        local j = i
        while j <= n and is_hex(byte(s, j)) do j = j + 1 end
        local c = byte(s, j)
        if c == 46 then
            if not scan_ipv4(s, i, n) then return false end
            groups = groups + 2
            break
        end
        if j == i or j - i > 4 then return false end
        groups = groups + 1
        if j > n then break end
        if c ~= 58 or j == n then return false end
        if byte(s, j + 1) == 58 then
            if double then return false end
            double, j = true, j + 1
            if j == n then break end
        end
        i = j + 1
    end
    if double then
        return groups <= 7
    end
    return groups == 8
end


local function is_hostname(s)
    local n = #s
    if n == 0 or n > 253 then return false end
    local label = 0
    for i = 1, n do
        local c = byte(s, i)
        if c == 46 then
            if label == 0 or byte(s, i - 1) == 45 then return false end
            label = 0
        else
            local alnum = (c >= 48 and c <= 57) or (c >= 65 and c <= 90) or (c >= 97 and c <= 122)
            if not alnum and (c ~= 45 or label == 0) then return false end
            label = label + 1
            if label > 63 then return false end
        end
    end
    return label > 0 and byte(s, n) ~= 45
end


local DATE_UNITS = { [89] = 1, [77] = 2, [87] = 3, [68] = 4 }  -- Y M W D
local TIME_UNITS = { [72] = 1, [77] = 2, [83] = 3 }            -- H M S

local function is_duration(s)
    local n = #s
    if byte(s, 1) ~= 80 or n < 3 then return false end          -- "P"
    local i, units, last, in_time, count = 2, DATE_UNITS, 0, false, 0
    while i <= n do
        if byte(s, i) == 84 then                                  -- "T"
            if in_time or i == n then return false end
            in_time, units, last, i = true, TIME_UNITS, 0, i + 1
        end
        local j = i
        while is_digit(byte(s, j)) do j = j + 1 end
        if byte(s, j) == 46 or byte(s, j) == 44 then              -- fraction
            j = j + 1
            if not is_digit(byte(s, j)) then return false end
            while is_digit(byte(s, j)) do j = j + 1 end
        end
        local rank = units[byte(s, j)]
        if j == i or not rank or rank <= last then return false end
        last, count, i = rank, count + 1, j + 1
    end
    return count > 0 and byte(s, n) ~= 84
end


--- Format checks by name: fn(string) -> boolean.
_M.checks = {
    ["date-time"] = function(s)
        local i = scan_date(s, 1)
        local c = i and byte(s, i)
        if c ~= 84 and c ~= 116 then return false end
        i = scan_time(s, i + 1)
        i = i and scan_offset(s, i)
        return i == #s + 1
    end,
    date = function(s)
        return scan_date(s, 1) == #s + 1
    end,
    time = function(s)
        local i = scan_time(s, 1)
        if i == #s + 1 then return true end               -- offset optional here
        return i ~= nil and scan_offset(s, i) == #s + 1
    end,
    email = function(s)
        local at = find(s, "@", 1, true)
        return at ~= nil and at > 1 and at < #s and not find(s, "@", at + 1, true)
            and not find(s, "[%s%c]") and byte(s, at + 1) ~= 46 and byte(s, #s) ~= 46
            and not find(s, "..", at, true)
    end,
    uri = function(s)
        return find(s, "^%a[%w%+%-%.]*:[^%s%c<>\"{}|\\%^`]*$") ~= nil
    end,
    uuid = function(s)
        return #s == 36 and find(s, "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$") ~= nil
    end,
    ipv4 = function(s) return scan_ipv4(s, 1, #s) end,
    ipv6 = is_ipv6,
    hostname = is_hostname,
    duration = is_duration,
}


--- What each format is, for error messages ("expected <hint>, got ...").
_M.hints = {
    ["date-time"] = "a date-time (RFC 3339, e.g. 2024-01-31T09:30:00Z)",
    date = "a date (YYYY-MM-DD)",
    time = "a time (HH:MM:SS)",
    email = "an email address",
    uri = "an absolute URI",
    uuid = "a UUID",
    ipv4 = "an IPv4 address",
    ipv6 = "an IPv6 address",
    hostname = "a hostname",
    duration = "an ISO 8601 duration (e.g. P3DT4H)",
}


return _M
