#!/usr/bin/env bash
# Server throughput: `sibyl serve` answering a JSON route, and nginx answering
# the same bytes, each loaded by wrk (-t2 -c64, 5 s) in this run.
set -euo pipefail
PEERS=$(realpath ../shared/bench)
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
PORT=${SERVE_PORT:-18097}
( cd "$PEERS" && "$PY" gen_conf.py >/dev/null && ./start.sh >/dev/null 2>&1 ) || true
CHAT_JSON="$PEERS/chat.json" PORT=$PORT "$SIBYL" serve tests/bench/serve_app.lua 2>/dev/null &
spid=$!
trap 'kill $spid 2>/dev/null || true; ( cd "$PEERS" && ./stop.sh >/dev/null 2>&1 ) || true' EXIT
for _ in $(seq 50); do
  curl -s -o /dev/null -X POST "http://127.0.0.1:$PORT/v1/chat/completions" && \
  curl -s -o /dev/null -X POST http://127.0.0.1:18080/v1/chat/completions && break
  sleep 0.1
done
bench() {
  wrk -t2 -c64 -d5s -s "$PEERS/post.lua" "$1" 2>/dev/null | awk '
    /Requests\/sec/ { r = $2 } /Latency/ { l = $2 } END { printf "%d|%s\n", r, l }'
}
sib=$(bench "http://127.0.0.1:$PORT/v1/chat/completions")
ngx=$(bench http://127.0.0.1:18080/v1/chat/completions)
IFS='|' read -r s_rps s_lat <<< "$sib"
IFS='|' read -r n_rps n_lat <<< "$ngx"
echo "## Serving"
echo
echo "A POST route answering a fixed 390-byte JSON body, \`wrk -t2 -c64 -d5s\` on loopback (wrk, the"
echo "server and nginx share the machine's 2 cores). Sibyl runs each request in its own task."
echo
echo "| server | req/s | mean latency | vs nginx |"
echo "|---|---|---|---|"
echo "| \`sibyl serve\` (one process, one core) | $s_rps | $s_lat | $(awk -v a="$s_rps" -v b="$n_rps" 'BEGIN { printf "%.2fx", a / b }') |"
echo "| nginx fixed reply (../shared/bench/nginx.conf) | $n_rps | $n_lat | 1.00x |"
