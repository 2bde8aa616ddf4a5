#!/usr/bin/env bash
# Renders docs/bench/mpps-vs-size.png from a bench-vs-dpdk JSON (default
# docs/bench/latest.json): median Mpps per direction against frame size, both backends,
# one line per generator. Needs gnuplot (Debian gnuplot-nox).
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
gens = sorted({s["generator"] for s in d["summary"]})
for g in gens:
    print(f'"{g}"')
    for s in sorted((s for s in d["summary"] if s["generator"] == g), key=lambda s: s["size"]):
        print(s["size"], s["ours_median"], s["dpdk_median"])
    print("\n")
PY
blocks=$(grep -c '^"' "$data")
plot=""
for ((i = 0; i < blocks; i++)); do
    plot+="'$data' index $i using 1:2 with linespoints title columnheader(1).' / vhost-switch', "
    plot+="'$data' index $i using 1:3 with linespoints dashtype 2 title columnheader(1).' / dpdk-vhost', "
done
gnuplot <<GP
set terminal pngcairo size 900,540
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
