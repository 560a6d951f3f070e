#!/usr/bin/env bash
# MCP: tools/call round trips over stdio, Sibyl's client and server
# (`sibyl mcp serve`) against the official TypeScript SDK's client and
# server (tests/node, installed into the test cache folder), and the two
# crossed, all in this run. One call at a time, then 32 in flight on the
# one connection. Skipped without Node/npm.
set -euo pipefail
RUNS=${MCP_RUNS:-3}
NB=$("$SIBYL" tests/bench/mcp_node.lua mcp_bench.mjs 2>/dev/null || true)
NS=$("$SIBYL" tests/bench/mcp_node.lua mcp_server.mjs 2>/dev/null || true)
SS="$SIBYL mcp serve tests/fixtures/mcp_tools.lua"

echo "## MCP"
echo
if [ -z "$NB" ]; then
  echo "Skipped: Node.js or npm is not available to install the official MCP SDK."
  exit 0
fi
echo "\`tools/call\` round trips over stdio (\`add\`, JSON in and out): each client spawns its server"
echo "and calls it N times, one call at a time (N = 5000) and with 32 calls in flight on the one"
echo "connection (N = 20000). Sibyl: \`tests/bench/mcp_bench.lua\` and \`sibyl mcp serve\` (protocol"
echo "2026-07-28 between them); the official TypeScript SDK 1.32.2: \`tests/node/mcp_bench.mjs\` and"
echo "\`tests/node/mcp_server.mjs\` (2025-11-25, also when crossed). Medians of $RUNS alternating runs."
echo

median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
run() {  # client server N C -> calls/s
  local client=$1 server=$2
  if [ "$client" = sibyl ]; then
    "$SIBYL" tests/bench/mcp_bench.lua "$3" "$4" $server 2>/dev/null | grep -oE '[0-9]+ calls/s' | cut -d' ' -f1
  else
    $NB "$3" "$4" $server 2>/dev/null | grep -oE '[0-9]+ calls/s' | cut -d' ' -f1
  fi
}
declare -A r
for C in 1 32; do
  N=5000; [ "$C" = 32 ] && N=20000
  for pair in "sibyl|$SS" "node|$NS" "sibyl|$NS" "node|$SS"; do r["$pair|$C"]=""; done
  for _ in $(seq "$RUNS"); do
    for pair in "sibyl|$SS" "node|$NS" "sibyl|$NS" "node|$SS"; do
      r["$pair|$C"]+="$(run "${pair%%|*}" "${pair#*|}" "$N" "$C") "
    done
  done
done
m() { median ${r["$1|$2"]}; }
s1=$(m "sibyl|$SS" 1); s32=$(m "sibyl|$SS" 32); n1=$(m "node|$NS" 1); n32=$(m "node|$NS" 32)
echo "| client → server | calls/s, 1 in flight | calls/s, 32 in flight | vs SDK ↔ SDK |"
echo "|---|---|---|---|"
awk -v a="$s1" -v b="$s32" -v c="$n1" -v d="$n32" \
  'BEGIN { printf "| Sibyl → sibyl mcp serve | %d | %d | %.1fx / %.1fx |\n", a, b, a / c, b / d }'
awk -v a="$(m "sibyl|$NS" 1)" -v b="$(m "sibyl|$NS" 32)" -v c="$n1" -v d="$n32" \
  'BEGIN { printf "| Sibyl → SDK server | %d | %d | %.1fx / %.1fx |\n", a, b, a / c, b / d }'
awk -v a="$(m "node|$SS" 1)" -v b="$(m "node|$SS" 32)" -v c="$n1" -v d="$n32" \
  'BEGIN { printf "| SDK client → sibyl mcp serve | %d | %d | %.1fx / %.1fx |\n", a, b, a / c, b / d }'
awk -v c="$n1" -v d="$n32" 'BEGIN { printf "| SDK client → SDK server | %d | %d | 1.0x |\n", c, d }'
