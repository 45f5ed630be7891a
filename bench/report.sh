#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# bench/report.sh METRICS OUT.md PLOTDIR [PREFIX]: the targets of issue 6 (and issue 15's slow
# Mount, 6a-6b), PASS or MISS, computed
# from the "key value" lines bench-peers, bench-attach and fio.sh wrote during one run of
# bench/run.sh, as a markdown table in OUT.md; and the PNG plots (gnuplot) PLOTDIR/PREFIX*.png.
# Nothing here is hand-written: a missing figure is "n/a" and counts as a MISS.

set -euo pipefail

METRICS=$1
OUT=$2
PLOTDIR=$3
PREFIX=${4:-bench-}

declare -A m=()
while read -r key value; do
    [[ -n $key ]] && m[$key]=$value
done <"$METRICS"

get() {
    echo "${m[$1]:-}"
}

ratio() {
    [[ -n $1 && -n $2 ]] || return 0
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b }'
}

diff_() {
    [[ -n $1 && -n $2 ]] || return 0
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'
}

# check VALUE OP LIMIT: PASS, MISS, or MISS (n/a) without a value.
check() {
    [[ -n $1 ]] || { echo "MISS (no figure)"; return 0; }
    awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN {
        ok = (op == "<=") ? v <= l : (op == "<") ? v < l : (op == ">=") ? v >= l : (op == "==") ? v == l : 0
        print ok ? "PASS" : "MISS" }'
}

# The largest loaded population of scenario 4 (1,000 unless the kernel gave fewer).
big=0
for key in "${!m[@]}"; do
    if [[ $key =~ ^s4\.([0-9]+)\.attach-udev\.median$ ]] && ((BASH_REMATCH[1] > big)); then
        big=${BASH_REMATCH[1]}
    fi
done

rows=()
# row TARGET MEASURED VALUE OP LIMIT
row() {
    local verdict
    verdict=$(check "$3" "$4" "$5")
    rows+=("| $1 | $2 | ${3:-n/a} | $4 $5 | **$verdict** |")
}

t1=$(ratio "$(get s1.loopmgr-dbus.cycle.median)" "$(get s1.udisks-dbus.cycle.median)")
row "1a. in-process attach + detach with udev wait vs udisks2 LoopSetup + Delete" \
    "median cycle, loopmgr / udisks2 ($(get s1.loopmgr-dbus.cycle.median) / $(get s1.udisks-dbus.cycle.median) ms)" \
    "$t1" "<=" 0.2
t2=$(ratio "$(get s1.loopmgr-dbus.cycle.median)" "$(get s1.losetup-settle.cycle.median)")
row "1b. the same vs losetup + udevadm settle" \
    "median cycle, loopmgr / losetup+settle ($(get s1.loopmgr-dbus.cycle.median) / $(get s1.losetup-settle.cycle.median) ms)" \
    "$t2" "<=" 1.0
row "2. daemon overhead over raw LOOP_CONFIGURE, no udev wait" \
    "median attach, loopmgr - raw, ms ($(get s2.loopmgr-nowait.attach.median) - $(get s2.raw.attach.median))" \
    "$(get s2.overhead.attach.median)" "<" 0.5
row "3a. 8-client concurrency: no error" "failed operations of loopmgr" \
    "$(get s3.loopmgr-dbus.errors)" "==" 0
t3=$(ratio "$(get s3.loopmgr-dbus.throughput)" "$(get s3.udisks-dbus.throughput)")
row "3b. 8-client throughput vs udisks2" \
    "cycles/s, loopmgr / udisks2 ($(get s3.loopmgr-dbus.throughput) / $(get s3.udisks-dbus.throughput))" \
    "$t3" ">=" 3
t4=$(ratio "$(get s4.$big.attach-udev.median)" "$(get s4.0.attach-udev.median)")
row "4a. $big bindings: attach latency vs empty (default attach, udev wait)" \
    "median, $big / 0 ($(get s4.$big.attach-udev.median) / $(get s4.0.attach-udev.median) ms)" \
    "$t4" "<=" 1.2
t4b=$(ratio "$(get s4.$big.attach-nowait.median)" "$(get s4.0.attach-nowait.median)")
row "4b. $big bindings: attach latency vs empty (wait-udev=false)" \
    "median, $big / 0 ($(get s4.$big.attach-nowait.median) / $(get s4.0.attach-nowait.median) ms)" \
    "$t4b" "<=" 1.2
row "4c. $big bindings: GetManagedObjects" "median, ms" "$(get s4.$big.gmo.median)" "<" 50
rss=$(get s4.$big.rss_kb)
[[ -z $rss ]] || rss=$(awk -v k="$rss" 'BEGIN { printf "%.2f", k / 1024 }')
row "4d. $big bindings: daemon RSS" "VmRSS, MiB" "$rss" "<" 16
# cpu_note JOB: what the CPU did in the direct=1 runs of JOB (fio.sh's CPU table).
cpu_note() {
    local j=$1
    [[ -n $(get s5.$j.d1.file.cpu_busy) ]] || return 0
    awk -v fb="$(get s5.$j.d1.file.cpu_busy)" -v lb="$(get s5.$j.d1.loop-dio.cpu_busy)" \
        -v fu="$(get s5.$j.d1.file.cpu_us_per_io)" -v lu="$(get s5.$j.d1.loop-dio.cpu_us_per_io)" \
        -v cr="$(get s5.$j.d1.losetup-dio.ratio)" 'BEGIN {
        printf "; CPUs busy: file %.0f%%, loop %.0f%%; CPU per I/O: file %.1f µs, loop %.1f µs; losetup control ratio %s", fb * 100, lb * 100, fu, lu, cr }'
}
row "5a. direct-I/O loop sequential reads vs direct reads of the file" \
    "bandwidth ratio (median of paired runs), 1 MiB, fio direct=1$(cpu_note seqread)" \
    "$(get s5.seqread.d1.loop-dio.ratio)" ">=" 0.95
row "5b. direct-I/O loop random reads vs direct reads of the file" \
    "bandwidth ratio (median of paired runs), 4 KiB, fio direct=1$(cpu_note randread)" \
    "$(get s5.randread.d1.loop-dio.ratio)" ">=" 0.95
row "5c. direct I/O is the default" "loop/dio of a default attach (direct-io=auto)" \
    "$(get s5.default_dio)" "==" 1
row "6a. another client's calls while a slow Mount runs (issue 15)" \
    "p99 of loopmgr's Version, Attach, Detach during Mounts of $(get s6.loopmgr-dbus.mount.median) ms (median; max $(get s6.loopmgr-dbus.others.max) ms, $(get s6.loopmgr-dbus.others.n) calls), ms" \
    "$(get s6.loopmgr-dbus.others.p99)" "<" 50
t6=$(ratio "$(get s6.loopmgr-dbus.others.p99)" "$(get s6.udisks-dbus.others.p99)")
row "6b. the same vs udisks2 (Version, LoopSetup, Loop.Delete during a slow Filesystem.Mount)" \
    "p99, loopmgr / udisks2 ($(get s6.loopmgr-dbus.others.p99) / $(get s6.udisks-dbus.others.p99) ms)" \
    "$t6" "<=" 1

{
    echo "| target | measured as | value | target | verdict |"
    echo "|---|---|---:|---|---|"
    printf '%s\n' "${rows[@]}"
} >"$OUT"

# ---- plots ----------------------------------------------------------------------------------

command -v gnuplot >/dev/null || { echo "report.sh: gnuplot is missing, no plots" >&2; exit 0; }
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT

# Scenario 1 and 2: median and p99 of each peer's cycle (or attach, for scenario 2).
{
    for p in loopmgr-dbus udisks-dbus loopmgrctl udisksctl losetup losetup-settle; do
        [[ -n $(get s1.$p.cycle.median) ]] &&
            echo "\"$p\" $(get s1.$p.cycle.median) $(get s1.$p.cycle.p99)"
    done
} >"$DATA/s1"
{
    for p in loopmgr-nowait raw; do
        [[ -n $(get s2.$p.attach.median) ]] &&
            echo "\"$p\" $(get s2.$p.attach.median) $(get s2.$p.attach.p99)"
    done
} >"$DATA/s2"
{
    for p in loopmgr-dbus udisks-dbus losetup; do
        [[ -n $(get s3.$p.throughput) ]] &&
            echo "\"$p\" $(get s3.$p.throughput)" \
                "$(awk -v t="$(get s3.$p.cpu_total_ms)" -v n="$(nproc)" 'BEGIN { if (t > 0) printf "%.1f", n * 1000 / t; else print 0 }')"
    done
} >"$DATA/s3"
{
    for n in $(printf '%s\n' "${!m[@]}" | sed -n 's/^s4\.\([0-9]*\)\.attach-udev\.median$/\1/p' | sort -n); do
        echo "$n $(get s4.$n.attach-udev.median) $(get s4.$n.attach-nowait.median)" \
            "$(get s4.$n.gmo.median) $(awk -v k="$(get s4.$n.rss_kb)" 'BEGIN { printf "%.2f", k / 1024 }')"
    done
} >"$DATA/s4"
{
    for job in seqread randread seqwrite randwrite; do
        for d in 1 0; do
            [[ -n $(get s5.$job.d$d.loop-dio.ratio) ]] || continue
            echo "\"$job d=$d\" $(get s5.$job.d$d.loop-dio.ratio)" \
                "$(get s5.$job.d$d.loop-nodio.ratio)" "$(get s5.$job.d$d.losetup-dio.ratio)"
        done
    done
} >"$DATA/s5"
{
    for p in loopmgr-dbus udisks-dbus; do
        [[ -n $(get s6.$p.others.p99) ]] &&
            echo "\"$p\" $(get s6.$p.others.median) $(get s6.$p.others.p99) $(get s6.$p.others.max)"
    done
} >"$DATA/s6"

gnuplot <<EOF
set terminal pngcairo size 900,500 font "sans,10"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set grid ytics
set key top left
set xtics rotate by -20

set output "$PLOTDIR/${PREFIX}latency.png"
set title "1. Attach + detach cycle, sequential (ms; lower is better)"
set ylabel "ms"
set logscale y
plot "$DATA/s1" using 2:xtic(1) title "median", "" using 3 title "p99"

set output "$PLOTDIR/${PREFIX}overhead.png"
set title "2. Attach without udev wait: loopmgr vs raw LOOP_CONFIGURE (ms)"
unset logscale y
set yrange [0:*]
plot "$DATA/s2" using 2:xtic(1) title "median", "" using 3 title "p99"

set output "$PLOTDIR/${PREFIX}concurrency.png"
set title "3. Eight clients at once: throughput (attach + detach cycles per second)"
set ylabel "cycles/s"
plot "$DATA/s3" using 2:xtic(1) title "throughput", "" using 3 title "CPU-bound ceiling (online CPUs / CPU per cycle)"

set output "$PLOTDIR/${PREFIX}fio.png"
set title "5. Loop device bandwidth / backing file bandwidth (fio; 1.0 = as fast as the file)"
set ylabel "ratio"
set yrange [0:*]
set arrow from graph 0, first 0.95 to graph 1, first 0.95 nohead dt 2 lc rgb "red"
plot "$DATA/s5" using 2:xtic(1) title "loopmgr, direct-io=on", "" using 3 title "loopmgr, direct-io=off", \
     "" using 4 title "losetup --direct-io=on (control)"
unset arrow

set output "$PLOTDIR/${PREFIX}mount.png"
set title "6. Another client's calls while a slow Mount runs (ms; lower is better)"
set ylabel "ms"
set logscale y
set yrange [*:*]
set arrow from graph 0, first 50 to graph 1, first 50 nohead dt 2 lc rgb "red"
plot "$DATA/s6" using 2:xtic(1) title "median", "" using 3 title "p99", "" using 4 title "max"
unset arrow
unset logscale y

set output "$PLOTDIR/${PREFIX}scale.png"
set title "4. Scale: latency and memory against the number of bindings"
set style data linespoints
set xtics norotate
set xlabel "bindings of ours (0 is drawn at 1)"
set ylabel "ms"
set y2label "MiB"
set y2tics
set yrange [0:*]
set y2range [0:*]
set logscale x
set xrange [0.8:*]
plot "$DATA/s4" using (\$1 < 1 ? 1 : \$1):2 title "Attach (udev wait), median" lw 2, \
     "" using (\$1 < 1 ? 1 : \$1):3 title "Attach (no udev wait), median" lw 2, \
     "" using (\$1 < 1 ? 1 : \$1):4 title "GetManagedObjects, median" lw 2, \
     "" using (\$1 < 1 ? 1 : \$1):5 axes x1y2 title "daemon VmRSS (MiB, right)" lw 2
EOF
