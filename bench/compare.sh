#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# bench/compare.sh [--rounds N] [BASE-REV]: two loopmgrd builds side by side in one run, on
# the same bus, polkitd and udev: the daemon of BASE-REV (default main) and the daemon of this
# tree (committed or not). Scenarios 2 (daemon overhead) and 3 (8 clients) of bench-peers
# (docs/PERFORMANCE.md, "Method"), with the client of this tree for both; the daemons take
# turns round by round, in ABBA order, so that drift hits both alike. Prints a table of the
# medians over the rounds and the ratio new / base; the raw figures stay in
# $LOOPMGR_BENCH_OUT/compare-*.txt. As root; holds no lock itself (run it under the flock the
# host tests use). udisksd is not started: neither daemon shares the machine with it.
#
# Knobs: LOOPMGR_TEST_ENV (default /run/loopmgr-bench-cmp), LOOPMGR_BENCH_BUILD_DIR (this
# tree's build directory, default build-bench), LOOPMGR_BENCH_OUT
# (/var/tmp/loopmgr-bench-results), LOOPMGR_CMP_PEERS_ARGS (bench-peers counts per round).

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
export LOOPMGR_TEST_ENV=${LOOPMGR_TEST_ENV:-/run/loopmgr-bench-cmp}
BUILD=${LOOPMGR_BENCH_BUILD_DIR:-build-bench}
OUT=${LOOPMGR_BENCH_OUT:-/var/tmp/loopmgr-bench-results}
ROUNDS=8
if [[ ${1:-} == --rounds ]]; then
    ROUNDS=$2
    shift 2
fi
BASE_REV=${1:-main}
read -r -a peers_args <<<"${LOOPMGR_CMP_PEERS_ARGS:---iterations 60 --warmup 5 --cycles 10 --rounds 2}"

log() { printf 'compare.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

((EUID == 0)) || die "must run as root"
SCRATCH=
env_started=0
tmpfs_mounts=()

cleanup() {
    local rc=$? name back
    trap - EXIT INT TERM
    ((env_started)) && { bash tests/env.sh stop-daemon || true; }
    if [[ -n $SCRATCH ]]; then
        # Anything left over the scratch directory is ours (a client that failed midway).
        while read -r name back; do
            [[ $back == "$SCRATCH"/* ]] || continue
            log "taking down $name over $back"
            losetup -d "$name" 2>/dev/null || rc=1
        done < <(losetup -l -n -O NAME,BACK-FILE 2>/dev/null)
        udevadm settle --timeout=30 >/dev/null 2>&1 || true
    fi
    for name in "${tmpfs_mounts[@]}"; do
        umount "$name" 2>/dev/null || umount -l "$name" 2>/dev/null || true
    done
    [[ -n $SCRATCH ]] && rm -rf -- "$SCRATCH"
    ((env_started)) && { bash tests/env.sh stop || true; }
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

opts=(-Dbuildtype=release -Dbench=true -Dtests=false -Db_sanitize=none -Dwerror=false)
build_tree() { # build_tree SRC BUILD
    if [[ -f $1/$2/build.ninja ]]; then
        meson configure "$1/$2" "${opts[@]}" >/dev/null
    else
        (cd "$1" && meson setup "$2" "${opts[@]}" >/dev/null)
    fi
    ninja -C "$1/$2" loopmgrd loopmgrctl bench/bench-peers >/dev/null || die "building $1 failed"
}

base_commit=$(git rev-parse --short "$BASE_REV^{commit}") || die "no revision $BASE_REV"
BASE_SRC=/var/tmp/loopmgr-bench-base-$base_commit
if [[ ! -d $BASE_SRC ]]; then
    mkdir -p "$BASE_SRC.tmp"
    git archive "$base_commit" | tar -x -C "$BASE_SRC.tmp"
    mv "$BASE_SRC.tmp" "$BASE_SRC"
fi
log "building base $base_commit in $BASE_SRC/build-bench and this tree in $BUILD"
build_tree "$BASE_SRC" build-bench
build_tree "$REPO" "$BUILD"
new_commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- daemon include || new_commit+=" + uncommitted changes"

SCRATCH=$(mktemp -d /var/tmp/loopmgr-bench.XXXXXX)
env_started=1
envvars=$(bash tests/env.sh start) || die "tests/env.sh start failed"
eval "$envvars"
# As bench/run.sh: the daemon's runtime files on tmpfs, as /run is on a deployed system.
if [[ $(findmnt -n -o FSTYPE -T /run) != tmpfs ]]; then
    dir=$LOOPMGR_TEST_ENV/loopmgrd-state
    mkdir -p "$dir"
    mount -t tmpfs -o mode=0755,size=64m loopmgr-bench "$dir" && tmpfs_mounts+=("$dir")
fi
mkdir -p "$OUT"
stamp=$(date -u +%Y%m%d-%H%M%S)

run_one() { # run_one LABEL BUILD-DIR ROUND
    local metrics=$SCRATCH/$1.$3
    bash tests/env.sh start-daemon "$2" >/dev/null 2>&1 || die "start-daemon $2 failed"
    "$REPO/$BUILD/bench/bench-peers" --dir "$SCRATCH" --record "$SCRATCH/devices" \
        --loopmgrctl "$REPO/$BUILD/loopmgrctl" --metrics "$metrics" --scenarios 2,3 \
        --bus-pid "$(cat "$LOOPMGR_TEST_ENV/dbus.pid")" "${peers_args[@]}" >/dev/null ||
        die "bench-peers against $1 failed"
    bash tests/env.sh stop-daemon >/dev/null 2>&1 || true
    sed "s/^/$3 /" "$metrics" >>"$OUT/compare-$stamp-$1.txt"
}

load_start=$(cut -d ' ' -f 1-3 /proc/loadavg)
for ((i = 1; i <= ROUNDS; i++)); do
    log "round $i of $ROUNDS"
    if ((i % 4 == 1 || i % 4 == 0)); then
        run_one base "$BASE_SRC/build-bench" "$i"
        run_one new "$REPO/$BUILD" "$i"
    else
        run_one new "$REPO/$BUILD" "$i"
        run_one base "$BASE_SRC/build-bench" "$i"
    fi
done
load_end=$(cut -d ' ' -f 1-3 /proc/loadavg)

keys=(s2.overhead.attach.median s2.overhead.attach.paired_median
    s2.loopmgr-nowait.attach.median s2.loopmgr-nowait.cycle.median s2.raw.attach.median
    s2.loopmgr-nowait.attach.cpu s2.ping.median
    s3.loopmgr-dbus.throughput s3.loopmgr-dbus.cycle.median s3.loopmgr-dbus.cycle.p99
    s3.loopmgr-dbus.cpu_daemon_ms s3.loopmgr-dbus.errors)
median_of() { # median_of FILE KEY: the median over the rounds
    awk -v k="$2" '$2 == k { print $3 }' "$1" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
{
    echo "base $base_commit ($BASE_REV) against $new_commit, $ROUNDS rounds in ABBA order," \
        "bench-peers --scenarios 2,3 ${peers_args[*]}; load $load_start at the start, $load_end at the end"
    echo
    echo "| figure (median over the rounds) | base | new | new / base |"
    echo "|---|---:|---:|---:|"
    for k in "${keys[@]}"; do
        b=$(median_of "$OUT/compare-$stamp-base.txt" "$k")
        n=$(median_of "$OUT/compare-$stamp-new.txt" "$k")
        ratio=$(awk -v b="$b" -v n="$n" 'BEGIN { if (b + 0 != 0) printf "%.3f", n / b; else print "-" }')
        echo "| $k | $b | $n | $ratio |"
    done
} | tee "$OUT/compare-$stamp.md"
log "raw figures: $OUT/compare-$stamp-{base,new}.txt"
