#!/usr/bin/env bash
# Vector search: brute-force top-10 cosine over N x 384 float32 rows, 1 query
# and a batch of 64, sibyl.vec (tests/bench/vec_bench.lua) next to numpy and
# faiss (../shared/bench/py_vec.py, same workload) and the machine's limits:
# memory read bandwidth (membw.c: a single query must stream N x 384 x 4
# bytes) and OpenBLAS sgemv/sgemm alone (blas_limit.c), all in this run.
# Goals: 1 query within 1.15x of the bandwidth limit; 64 queries >= 4x numpy.
# Every client runs VEC_RUNS times (default 3), alternating; each figure is
# the median of the runs, each run the best of 5 repetitions.
set -euo pipefail
PEERS=$(realpath ../shared/bench)
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
RUNS=${VEC_RUNS:-3}
SIZES=${VEC_SIZES:-"100000 1000000"}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

gcc -O2 -o "$tmp/membw" "$PEERS/membw.c"
have_blas=0
if gcc -O2 $(pkg-config --cflags openblas 2>/dev/null) -o "$tmp/blas_limit" "$PEERS/blas_limit.c" \
     $(pkg-config --libs openblas 2>/dev/null || echo -lopenblas) 2>/dev/null; then
  have_blas=1
fi

median() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }
# ms NAME FILE: the "<ms> ms/batch" figure of the line "N=... NAME: ..." in FILE.
ms() { grep -F " $1: " "$2" | head -1 | grep -oE '[0-9.]+ ms/batch' | cut -d' ' -f1; }

declare -A R
bw=()
for n in $SIZES; do
  for i in $(seq "$RUNS"); do
    "$SIBYL" tests/bench/vec_bench.lua "$n" > "$tmp/sib.$n.$i" 2>/dev/null || true
    "$PY" "$PEERS/py_vec.py" "$n" > "$tmp/py.$n.$i" 2>/dev/null || true
  done
  for name in "sibyl 1q" "sibyl 64q" "sibyl 1q sgemv" "sibyl 1q 1-thread" "sibyl 64q blas-threads" "sibyl 1q int8"; do
    vals=(); for i in $(seq "$RUNS"); do v=$(ms "$name" "$tmp/sib.$n.$i" || true); [ -n "$v" ] && vals+=("$v"); done
    R["$n|$name"]=$( [ ${#vals[@]} -gt 0 ] && median "${vals[@]}" || echo "")
  done
  for name in "numpy 1q" "numpy 64q" "faiss 1q" "faiss 64q"; do
    vals=(); for i in $(seq "$RUNS"); do v=$(ms "$name" "$tmp/py.$n.$i" || true); [ -n "$v" ] && vals+=("$v"); done
    R["$n|$name"]=$( [ ${#vals[@]} -gt 0 ] && median "${vals[@]}" || echo "")
  done
  if [ "$have_blas" = 1 ]; then
    R["$n|sgemv"]=$("$tmp/blas_limit" "$n" 1 | grep -oE '[0-9.]+ ms' | cut -d' ' -f1 || true)
    R["$n|sgemm"]=$("$tmp/blas_limit" "$n" 64 | grep -oE '[0-9.]+ ms' | cut -d' ' -f1 || true)
  fi
done
for i in $(seq "$RUNS"); do bw+=("$("$tmp/membw" | grep -oE '[0-9.]+ GB/s' | cut -d' ' -f1)"); done
BW=$(median "${bw[@]}")

fmt() { awk -v v="$1" 'BEGIN { if (v == "") print "-"; else if (v < 10) printf "%.2f ms", v; else printf "%.1f ms", v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2fx", a / b }'; }

echo "## Vector search"
echo
echo "Brute-force top-10 cosine over N x 384 float32 rows, the workload of \`../shared/bench/py_vec.py\`"
echo "(numpy \`X @ q\` + argpartition; faiss IndexFlatIP), in Lua against \`sibyl.vec\`"
echo "(\`tests/bench/vec_bench.lua\`). Limit for one query: streaming N x 384 x 4 bytes at the read"
echo "bandwidth \`membw.c\` measured in this run ($BW GB/s, one thread). OpenBLAS alone: \`blas_limit.c\`"
echo "(sgemv / sgemm with OpenBLAS's default threads, no top-k). Medians of $RUNS alternating runs,"
echo "each the best of 5. Goals: 1 query <= 1.15x the limit; 64 queries >= 4x faster than numpy."
echo
echo "| workload | sibyl.vec | numpy | faiss | OpenBLAS kernel alone | bandwidth limit | sibyl / limit | numpy / sibyl |"
echo "|---|---|---|---|---|---|---|---|"
for n in $SIZES; do
  lim=$(awk -v n="$n" -v bw="$BW" 'BEGIN { printf "%.3f", n * 384 * 4 / (bw * 1e9) * 1e3 }')
  label=$(awk -v n="$n" 'BEGIN { if (n >= 1e6) printf "%gM", n / 1e6; else printf "%gk", n / 1e3 }')
  s1=${R["$n|sibyl 1q"]}; s64=${R["$n|sibyl 64q"]}
  echo "| $label rows, 1 query | $(fmt "$s1") | $(fmt "${R["$n|numpy 1q"]}") | $(fmt "${R["$n|faiss 1q"]}") | sgemv $(fmt "${R["$n|sgemv"]:-}") | $(fmt "$lim") | $(ratio "$s1" "$lim") | $(ratio "${R["$n|numpy 1q"]}" "$s1") |"
  echo "| $label rows, 64 queries | $(fmt "$s64") | $(fmt "${R["$n|numpy 64q"]}") | $(fmt "${R["$n|faiss 64q"]}") | sgemm $(fmt "${R["$n|sgemm"]:-}") | - | - | $(ratio "${R["$n|numpy 64q"]}" "$s64") |"
done
echo
echo "Variants of sibyl.vec measured in the same runs (the choices behind the defaults):"
echo
echo "| workload | default | variant | variant / default |"
echo "|---|---|---|---|"
for n in $SIZES; do
  label=$(awk -v n="$n" 'BEGIN { if (n >= 1e6) printf "%gM", n / 1e6; else printf "%gk", n / 1e3 }')
  s1=${R["$n|sibyl 1q"]}; s64=${R["$n|sibyl 64q"]}
  v=${R["$n|sibyl 1q sgemv"]}; echo "| $label, 1 query | $(fmt "$s1") | OpenBLAS sgemv in blocks instead of the SIMD kernel: $(fmt "$v") | $(ratio "$v" "$s1") |"
  v=${R["$n|sibyl 1q 1-thread"]}; echo "| $label, 1 query | $(fmt "$s1") | one worker instead of $(nproc): $(fmt "$v") | $(ratio "$v" "$s1") |"
  v=${R["$n|sibyl 64q blas-threads"]}; echo "| $label, 64 queries | $(fmt "$s64") | one part, OpenBLAS with 2 threads: $(fmt "$v") | $(ratio "$v" "$s64") |"
  v=${R["$n|sibyl 1q int8"]}; echo "| $label, 1 query | $(fmt "$s1") | int8 codes + exact re-rank of 40: $(fmt "$v") | $(ratio "$v" "$s1") |"
done
