#!/usr/bin/env bash
# Renders docs/bench/mpps-vs-size.png from a bench-vs-dpdk JSON (default
# docs/bench/latest.json): median Mpps per direction against frame size, both backends,
# one line per generator and placement class (near / far; a JSON from before the classes
# gives one line per generator). Sizes a class has no counted pair for are left out.
# Needs gnuplot (Debian gnuplot-nox).
set -euo pipefail
cd "$(dirname "$0")/.."
json=${1:-docs/bench/latest.json}
out=${2:-docs/bench/mpps-vs-size.png}
command -v gnuplot >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox >/dev/null; }
data=$(mktemp)
trap 'rm -f "$data"' EXIT
python3 - "$json" > "$data" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
lines = {}
for s in d["summary"]:
    if s["ours_median"] is not None and s["dpdk_median"] is not None:
        cls = s.get("class")
        lines.setdefault(f'{s["generator"]} {cls}' if cls else s["generator"], []).append(s)
# One gnuplot data block per line, blocks separated by two blank lines.
for title in sorted(lines):
    print(f'"{title}"')
    for s in sorted(lines[title], key=lambda s: s["size"]):
        print(s["size"], s["ours_median"], s["dpdk_median"])
    print("\n")
PY
blocks=$(grep -c '^"' "$data" || true)
if [ "$blocks" -eq 0 ]; then
    echo "plot-bench: no size with medians for both backends in $json; nothing plotted" >&2
    exit 1
fi
plot=""
for ((i = 0; i < blocks; i++)); do
    # One colour per generator and class: solid vhost-switch, dashed dpdk-vhost.
    plot+="'$data' index $i using 1:2 with linespoints linecolor $((i + 1)) title columnheader(1).' / vhost-switch', "
    plot+="'$data' index $i using 1:3 with linespoints linecolor $((i + 1)) dashtype 2 title columnheader(1).' / dpdk-vhost', "
done
gnuplot <<GP
set terminal pngcairo size 1040,560
set output '$out'
set title 'Median Mpps per direction, same generator, same cores ($(python3 -c "import json;print(json.load(open('$json'))['date'])"))'
set xlabel 'frame size (bytes)'
set ylabel 'Mpps per direction'
set logscale x 2
set xtics (64, 128, 256, 512, 1024, 1500)
set grid
set key outside right
plot ${plot%, }
GP
echo "wrote $out"
