#!/usr/bin/env bash
# LLM-call fan-out: N chat-completion POSTs at concurrency C, each reply
# JSON-decoded, against the fixed-reply nginx endpoint from ../shared/bench,
# next to Python aiohttp, the official Node openai client and wrk (the raw
# HTTP limit), all in this run. Two Sibyl rows: sibyl.http with json decode
# (fanout.lua; goal >= 10x aiohttp, RSS < 30 MB) and llm.chat with the full
# normalised result (llm_fanout.lua; goal >= 40,000 calls/s and >= 10x aiohttp).
set -euo pipefail
N=${FANOUT_N:-20000}; C=${FANOUT_C:-256}
PEERS=$(realpath ../shared/bench)
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
( cd "$PEERS" && "$PY" gen_conf.py >/dev/null && ./start.sh >/dev/null 2>&1 ) || true
trap '( cd "$PEERS" && ./stop.sh >/dev/null 2>&1 ) || true' EXIT
for _ in $(seq 50); do curl -s -o /dev/null -X POST http://127.0.0.1:18080/v1/chat/completions && break; sleep 0.1; done

# run NAME CMD...: runs the client RUNS times (default 3) and prints
# "NAME|req/s|cpu s|peak RSS MB" for the run with the median req/s, using
# the client's own "N req/s" line. Every client gets the same treatment.
RUNS=${FANOUT_RUNS:-5}
run() {
  local name=$1; shift
  local results=() out tm u s m rps
  for _ in $(seq "$RUNS"); do
    tm=$(mktemp)
    out=$(/usr/bin/time -f "%U %S %M" -o "$tm" "$@" 2>/dev/null | tail -1) || { rm -f "$tm"; echo "$name|failed|-|-"; return; }
    read -r u s m < "$tm"; rm -f "$tm"
    rps=$(echo "$out" | grep -oE '[0-9]+ req/s' | grep -oE '[0-9]+')
    results+=("$(awk -v r="$rps" -v u="$u" -v s="$s" -v m="$m" 'BEGIN { printf "%d|%.2f|%.1f", r, u + s, m / 1024 }')")
  done
  printf '%s\n' "${results[@]}" | sort -t'|' -k1,1n | sed -n "$(( (RUNS + 1) / 2 ))p" | sed "s/^/$name|/"
}

rows=()
rows+=("$(run "Sibyl llm.chat (sibyl.llm, this build)" "$SIBYL" tests/bench/llm_fanout.lua "$N" "$C")")
rows+=("$(run "Sibyl http.post + json (sibyl.http, this build)" "$SIBYL" tests/bench/fanout.lua "$N" "$C")")
rows+=("$(run "Python 3 asyncio + aiohttp" "$PY" "$PEERS/py_aiohttp.py" "$N" "$C")")
if command -v node >/dev/null && { [ -d "$PEERS/node/node_modules/openai" ] || (cd "$PEERS/node" && npm ci --silent >/dev/null 2>&1); }; then
  rows+=("$(run "Node + official openai client" node "$PEERS/node/openai_client.mjs" "$N" "$C")")
fi
wrk_rps=$(wrk -t2 -c"$C" -d5s -s "$PEERS/post.lua" http://127.0.0.1:18080/v1/chat/completions 2>/dev/null \
          | awk '/Requests\/sec/ { printf "%d", $2 }')

echo "## LLM-call fan-out"
echo
echo "$N chat completions at concurrency $C against a fixed-reply nginx endpoint on loopback,"
echo "every reply JSON-decoded. \`llm.chat\` (\`tests/bench/llm_fanout.lua\`) decodes each reply into"
echo "its normalised result (content, tool calls, usage), as the Node openai client does;"
echo "\`http.post\` (\`tests/bench/fanout.lua\`) only JSON-decodes, as the aiohttp client does."
echo "Each client ran $RUNS times, one after another, in this run; each row is that client's median run."
echo
echo "| client | req/s | CPU s | peak RSS MB | vs aiohttp |"
echo "|---|---|---|---|---|"
aio=$(printf '%s\n' "${rows[@]}" | awk -F'|' '/aiohttp/ { print $2 }')
for r in "${rows[@]}"; do
  IFS='|' read -r name rps cpu rss <<< "$r"
  ratio=$(awk -v a="$rps" -v b="$aio" 'BEGIN { if (b > 0 && a > 0) printf "%.1fx", a / b; else print "-" }')
  echo "| $name | $rps | $cpu | $rss | $ratio |"
done
echo "| wrk -t2 -c$C (raw HTTP, no parsing: the limit) | ${wrk_rps:-?} | - | - | - |"
