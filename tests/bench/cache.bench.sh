#!/usr/bin/env bash
# Caches: the L1 memory cache against ../shared/bench/py_lru.py (Python's
# OrderedDict LRU with TTL; goal >= 10x), and sibyl.redis GET/SET from many
# tasks against redis-benchmark pipelined (goal >= 50% of it), all in this
# run. Each L1 client runs 7 times, alternating; rows are medians, with the
# range of the runs beside them (this machine is noisy).
set -euo pipefail
PEERS=$(realpath ../shared/bench)
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
RUNS=${CACHE_RUNS:-7}

sib=(); py=()
for _ in $(seq "$RUNS"); do
  sib+=("$("$SIBYL" tests/bench/cache_l1.lua | grep -oE '[0-9.]+ M ops/s' | cut -d' ' -f1)")
  py+=("$("$PY" "$PEERS/py_lru.py" | grep -oE '[0-9.]+ M ops/s' | cut -d' ' -f1)")
done
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
s=$(median "${sib[@]}"); p=$(median "${py[@]}")
range() { printf '%s\n' "$@" | sort -n | sed -n '1p;$p' | paste -sd' ' | awk '{ printf "%.2f-%.2f", $1, $2 }'; }
sr=$(range "${sib[@]}"); pr=$(range "${py[@]}")

echo "## Caches"
echo
echo "L1: 1M mixed get/set (25% set) over 100k keys, capacity 50k, TTL 300 s; the workload of"
echo "\`../shared/bench/py_lru.py\`, in Lua against \`sibyl.cache\` (\`tests/bench/cache_l1.lua\`)."
echo "Medians of $RUNS alternating runs."
echo
echo "| cache | M ops/s (median) | runs | vs Python |"
echo "|---|---|---|---|"
awk -v a="$s" -v b="$p" -v ar="$sr" -v br="$pr" 'BEGIN {
  printf "| sibyl.cache memory (C, FFI) | %.2f | %s | %.1fx |\n", a, ar, a / b
  printf "| Python OrderedDict LRU + TTL | %.2f | %s | 1.0x |\n", b, br }'

if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null && [ -f tests/bench/redis_bench.lua ]; then
  port=$(( 20000 + RANDOM % 20000 ))
  dir=$(mktemp -d)
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
               --pidfile "$dir/redis.pid" --dir "$dir" >/dev/null
  trap 'kill "$(cat "$dir/redis.pid")" 2>/dev/null; rm -rf "$dir"' EXIT
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  N=${REDIS_N:-200000}
  rb=$(redis-benchmark -p "$port" -n "$N" -c 50 -P 16 -t set,get -q 2>/dev/null | tr '\r' '\n' \
       | awk '/^SET:/ { s = $2 } /^GET:/ { g = $2 } END { printf "%d %d", s, g }')
  sr=$("$SIBYL" tests/bench/redis_bench.lua "$port" "$N" 800)
  read -r rb_set rb_get <<< "$rb"
  read -r sr_set sr_get <<< "$sr"
  echo
  echo "Redis: $N SETs then $N GETs on one local redis-server, 800 commands in flight on both"
  echo "sides: Sibyl from 800 tasks sharing one connection (\`tests/bench/redis_bench.lua\`, pipelined"
  echo "automatically), redis-benchmark with 50 clients and 16 commands per pipeline."
  echo
  echo "| client | SET/s | GET/s | vs redis-benchmark |"
  echo "|---|---|---|---|"
  awk -v s="$sr_set" -v g="$sr_get" -v rs="$rb_set" -v rg="$rb_get" 'BEGIN {
    printf "| sibyl.redis, 800 tasks | %d | %d | %.0f%% / %.0f%% |\n", s, g, 100 * s / rs, 100 * g / rg
    printf "| redis-benchmark -c 50 -P 16 | %d | %d | 100%% |\n", rs, rg }'
fi
