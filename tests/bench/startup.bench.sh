#!/usr/bin/env bash
# Start-up: `sibyl -e 'print(1)'` against LuaJIT itself and Python's asyncio
# import, with hyperfine in one run. Goal: within 3 ms of LuaJIT.
set -euo pipefail
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
json=$(mktemp)
hyperfine -N -w 10 -r 50 --export-json "$json" \
  "$SIBYL -e 'print(1)'" "luajit -e 'print(1)'" "$PY -c 'import asyncio'" >/dev/null 2>&1
"$SIBYL" - "$json" <<'LUA'
local json = require "sibyl.json"
local fs = require "sibyl.fs"
local res = assert(json.decode(assert(fs.read(arg[1])))).results
local function ms(r) return r.mean * 1000 end
local sib, lj, py = res[1], res[2], res[3]
print("## Start-up")
print()
print("`hyperfine -N -w 10 -r 50`; mean ± σ of 50 runs.")
print()
print("| command | mean ms | σ ms | vs LuaJIT |")
print("|---|---|---|---|")
local rows = { { "sibyl -e 'print(1)'", sib }, { "luajit -e 'print(1)'", lj }, { "python3 -c 'import asyncio'", py } }
for _, row in ipairs(rows) do
    local r = row[2]
    print(("| `%s` | %.2f | %.2f | %+.2f ms |"):format(row[1], ms(r), r.stddev * 1000, ms(r) - ms(lj)))
end
print()
print(("Sibyl starts %.2f ms after LuaJIT (goal: within 3 ms) and %.0fx faster than importing asyncio."):format(
    ms(sib) - ms(lj), ms(py) / ms(sib)))
LUA
rm -f "$json"
