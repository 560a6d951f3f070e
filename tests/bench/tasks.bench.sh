#!/usr/bin/env bash
# Task scale: spawn+finish cost, and 100k concurrent tasks sleeping 0.1 s,
# next to Python asyncio doing the same in this run.
set -euo pipefail
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
sib=$("$SIBYL" -e '
local sibyl = require "sibyl"
local N = 100000
local t0 = sibyl.now()
local last
for _ = 1, N do last = sibyl.spawn(function() end) end
last:wait()
local spawn_us = (sibyl.now() - t0) / N * 1e6
local tasks = {}
t0 = sibyl.now()
for i = 1, N do tasks[i] = sibyl.spawn(sibyl.sleep, 0.1) end
sibyl.gather(tasks)
print(("%.2f %.3f"):format(spawn_us, sibyl.now() - t0))')
py=$("$PY" - <<'PY'
import asyncio, time
async def nothing(): pass
async def main():
    N = 100000
    t0 = time.perf_counter()
    ts = [asyncio.ensure_future(nothing()) for _ in range(N)]
    await asyncio.gather(*ts)
    spawn_us = (time.perf_counter() - t0) / N * 1e6
    t0 = time.perf_counter()
    await asyncio.gather(*[asyncio.sleep(0.1) for _ in range(N)])
    print("%.2f %.3f" % (spawn_us, time.perf_counter() - t0))
asyncio.run(main())
PY
)
read -r s_spawn s_sleep <<< "$sib"
read -r p_spawn p_sleep <<< "$py"
echo "## Tasks"
echo
echo "| workload | Sibyl | Python asyncio | ratio |"
echo "|---|---|---|---|"
awk -v a="$s_spawn" -v b="$p_spawn" 'BEGIN { printf "| spawn + finish one task | %.2f µs | %.2f µs | %.1fx faster |\n", a, b, b / a }'
awk -v a="$s_sleep" -v b="$p_sleep" 'BEGIN { printf "| 100,000 tasks each sleeping 0.1 s, wall time | %.3f s | %.3f s | %.1fx faster |\n", a, b, b / a }'
