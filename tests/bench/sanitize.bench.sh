#!/usr/bin/env bash
# Input sanitization: sibyl.sanitize's Aho-Corasick scanner (C) against
# ../shared/bench/py_regex.py (Python re, one IGNORECASE alternation of 200
# phrases; goal >= 20x), same phrases and same kind of text (2M random words,
# ~12 MB; tests/bench/sanitize_bench.lua), all in this run. Also the whole
# sanitize:check with the default phrases plus the secret and PII detectors.
# Each client runs SANITIZE_RUNS times (default 3), alternating; rows are medians.
set -euo pipefail
PEERS=$(realpath ../shared/bench)
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
RUNS=${SANITIZE_RUNS:-3}

scan=(); check=(); py=()
for _ in $(seq "$RUNS"); do
  out=$("$SIBYL" tests/bench/sanitize_bench.lua)
  scan+=("$(grep '^sibyl scanner' <<< "$out" | grep -oE '[0-9.]+ MB/s' | cut -d' ' -f1)")
  check+=("$(grep '^sibyl check' <<< "$out" | grep -oE '[0-9.]+ MB/s' | cut -d' ' -f1)")
  py+=("$("$PY" "$PEERS/py_regex.py" | grep -oE '[0-9.]+ MB/s' | cut -d' ' -f1)")
done
median() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }
s=$(median "${scan[@]}"); c=$(median "${check[@]}"); p=$(median "${py[@]}")

echo "## Input sanitization"
echo
echo "200 phrases (the list of \`../shared/bench/py_regex.py\`: 18 injection / SQL phrases and"
echo "\`secretphrase000..181\`), case-insensitive, over 2M random words (~12 MB) with one injection"
echo "in the middle; the Python peer is one \`re.IGNORECASE\` alternation and \`findall\`. Sibyl's"
echo "scanner normalizes as it goes (zero-width, look-alikes, spaces; see doc/sanitize.md)."
echo "Medians of $RUNS alternating runs."
echo
echo "| scanner | MB/s | vs Python |"
echo "|---|---|---|"
awk -v s="$s" -v c="$c" -v p="$p" 'BEGIN {
  printf "| sibyl.sanitize scanner, 200 phrases (C, Aho-Corasick) | %.1f | %.0fx |\n", s, s / p
  printf "| sanitize:check, default phrases + secrets + PII | %.1f | %.0fx |\n", c, c / p
  printf "| Python re, 200-way IGNORECASE alternation | %.2f | 1.0x |\n", p }'
