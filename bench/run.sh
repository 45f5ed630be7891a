#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# bench/run.sh [BENCH-ATTACH-ARGS...]: the loopmgrd benchmark, from scratch to a results table.
#
#   1. builds a release tree (default build-bench/: -Dbuildtype=release -Dbench=true
#      -Dtests=false -Db_sanitize=none) with loopmgrd and bench/bench-attach
#   2. brings up its own tests/env.sh instance (default /run/loopmgr-bench: private bus,
#      polkitd, udevd if none runs) and starts that loopmgrd on it with `start-daemon`
#   3. runs bench-attach with a scratch directory on /var/tmp (the backing files) and a
#      record of every device it makes
#   4. prints the tables and regenerates the results section of docs/PERFORMANCE.md
#   5. always (also on failure or Ctrl-C): takes down every device in the record that is still
#      the same binding (node and diskseq), stops the daemon and the environment instance,
#      removes the scratch directory, and checks that nothing of ours is left
#
# Extra arguments go to bench-attach (e.g. --bindings 200 --iterations 20 for a quick run;
# see bench-attach --help). Knobs (environment):
#   LOOPMGR_TEST_ENV=/run/loopmgr-bench    tests/env.sh instance
#   LOOPMGR_BENCH_BUILD_DIR=build-bench    build directory
#   LOOPMGR_BENCH_UPDATE_DOC=auto          1: rewrite the results section of docs/PERFORMANCE.md,
#                                          0: don't, auto: only for a run with the default counts

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
export LOOPMGR_TEST_ENV=${LOOPMGR_TEST_ENV:-/run/loopmgr-bench}
BUILD=${LOOPMGR_BENCH_BUILD_DIR:-build-bench}
UPDATE_DOC=${LOOPMGR_BENCH_UPDATE_DOC:-auto}
if [[ $UPDATE_DOC == auto ]]; then
    UPDATE_DOC=$(($# == 0))
fi
DOC=$REPO/docs/PERFORMANCE.md
BEGIN_MARK='<!-- BEGIN bench/run.sh results: generated, do not edit by hand -->'
END_MARK='<!-- END bench/run.sh results -->'

SCRATCH=
env_started=0
client=0

log() {
    printf 'run.sh: %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# ---- clean-up ------------------------------------------------------------------------------

# still_ours NODE DISKSEQ: NODE is bound, and is still the binding the record names.
still_ours() {
    local name=${1#/dev/}
    [[ $name =~ ^loop[0-9]+$ ]] || return 1
    [[ -d /sys/block/$name/loop && -r /sys/block/$name/diskseq ]] || return 1
    [[ $(<"/sys/block/$name/diskseq") == "$2" ]]
}

# Takes down, newest first, every recorded device that is still the same binding. Runs after
# the daemon is stopped, so nothing races with it; the newest-first order releases each
# layer of the chain before the one below it.
cleanup_devices() {
    local record=$1 node seq name part i line lines=() left=()
    [[ -s $record ]] || return 0
    mapfile -t lines <"$record"
    for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
        read -r node seq <<<"${lines[i]}" || continue
        still_ours "$node" "$seq" || continue
        name=${node#/dev/}
        log "taking down $node (diskseq $seq), left by the benchmark"
        for part in /sys/block/"$name"/"$name"p*; do
            [[ -r $part/partition ]] || continue
            delpart "$node" "$(<"$part/partition")" 2>/dev/null ||
                log "warning: delpart $node $(<"$part/partition") failed"
        done
        losetup -d "$node" 2>/dev/null || log "warning: losetup -d $node failed"
    done
    # On 6.11+ kernels the teardown happens at the last close: give udev's probes a moment.
    udevadm settle --timeout=30 >/dev/null 2>&1 || true
    for ((i = 0; i < 50; i++)); do
        left=()
        for line in "${lines[@]}"; do
            read -r node seq <<<"$line" || continue
            still_ours "$node" "$seq" && left+=("$node")
        done
        ((${#left[@]} == 0)) && return 0
        sleep 0.2
    done
    log "warning: still bound after clean-up: ${left[*]}"
    return 1
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((client)) && kill -0 "$client" 2>/dev/null; then
        kill -TERM "$client" 2>/dev/null || true
        wait "$client" 2>/dev/null || true
    fi
    if ((env_started)); then
        bash tests/env.sh stop-daemon || log "warning: stop-daemon failed"
    fi
    if [[ -n $SCRATCH ]]; then
        cleanup_devices "$SCRATCH/devices" || rc=1
        if losetup -a 2>/dev/null | grep -qF "$SCRATCH/"; then
            log "warning: loop devices over $SCRATCH remain:"
            losetup -a | grep -F "$SCRATCH/" >&2 || true
            rc=1
        fi
        rm -rf -- "$SCRATCH"
    fi
    if ((env_started)); then
        bash tests/env.sh stop || log "warning: tests/env.sh stop failed"
    fi
    exit "$rc"
}

on_signal() {
    log "interrupted"
    exit "$1"
}

# ---- the run ---------------------------------------------------------------------------------

((EUID == 0)) || die "must run as root (it configures loop devices and starts system daemons)"
[[ -c /dev/loop-control ]] || die "/dev/loop-control is missing (modprobe loop)"
for tool in meson ninja udevadm losetup delpart busctl; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done

trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

t0=$SECONDS

# What is about to be built (read-only git queries: the figures belong to the daemon as built,
# committed or not).
commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git -C "$REPO" diff --no-ext-diff --quiet HEAD -- daemon include 2>/dev/null ||
    [[ -n $(git -C "$REPO" ls-files --others --exclude-standard -- daemon include) ]]; then
    commit="$commit + uncommitted changes in daemon/ or include/"
fi

# A release build without sanitizers: the figures are about the daemon, not about ASan.
opts=(-Dbuildtype=release -Dbench=true -Dtests=false -Db_sanitize=none -Dwerror=false)
if [[ -f $BUILD/build.ninja ]]; then
    meson configure "$BUILD" "${opts[@]}" >/dev/null
else
    meson setup "$BUILD" "${opts[@]}" >/dev/null
fi
log "building $BUILD (release)"
if ! out=$(ninja -C "$BUILD" loopmgrd bench/bench-attach 2>&1); then
    printf '%s\n' "$out" >&2
    die "the build failed"
fi

SCRATCH=$(mktemp -d /var/tmp/loopmgr-bench.XXXXXX)
: >"$SCRATCH/devices"

env_started=1
envvars=$(bash tests/env.sh start) || die "tests/env.sh start failed"
eval "$envvars"
bash tests/env.sh start-daemon "$BUILD"

# Facts about the machine, for the record.
cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n 1)
[[ -n $cpu ]] || cpu=$(uname -m)
mem_kb=$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\).*/\1/p' /proc/meminfo)
fs=$(findmnt -n -o FSTYPE,SOURCE -T "$SCRATCH" 2>/dev/null | tr -s ' ' || echo unknown)
max_loop=$(cat /sys/module/loop/parameters/max_loop 2>/dev/null || echo n/a)
loops_before=$(find /sys/block -maxdepth 1 -name 'loop*' | wc -l)
log "max_loop=$max_loop: it only limits the devices created when a /dev/loopN node is opened;" \
    "LOOP_CTL_GET_FREE (loopmgrd) creates devices beyond it, so the run shows how many it got"

load_start=$(cut -d ' ' -f 1-3 /proc/loadavg)
log "running bench-attach ${*:-(default counts)}"
"$BUILD/bench/bench-attach" --dir "$SCRATCH" --record "$SCRATCH/devices" \
    --markdown "$SCRATCH/results.md" "$@" &
client=$!
client_rc=0
wait "$client" || client_rc=$?
client=0
((client_rc == 0)) ||
    die "bench-attach failed (exit $client_rc); daemon log: $LOOPMGR_TEST_ENV/loopmgrd.log"

load_end=$(cut -d ' ' -f 1-3 /proc/loadavg)
if grep -q 'failed: ' "$SCRATCH/results.md"; then
    log "warning: some scenarios failed; the tables say why"
fi

section=$SCRATCH/section.md
{
    echo "$BEGIN_MARK"
    echo
    echo "### Last run"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
    echo "| tree | $commit, \`$BUILD\` (buildtype=release, no sanitizers) |"
    echo "| kernel | $(uname -r) |"
    echo "| CPU | $cpu, $(nproc) online |"
    echo "| load average (1, 5, 15 min) | $load_start at the start, $load_end at the end |"
    echo "| memory | $((mem_kb / 1024)) MiB |"
    echo "| backing files | sparse, on $fs |"
    echo "| udev | systemd-udevd $(udevadm --version) |"
    echo "| loop module | max_loop=$max_loop, $loops_before loop devices before the run |"
    echo "| arguments | \`bench-attach${*:+ $*}\` |"
    echo
    cat "$SCRATCH/results.md"
    echo
    echo "$END_MARK"
} >"$section"

if ((UPDATE_DOC)); then
    if [[ -f $DOC ]] && grep -qF "$BEGIN_MARK" "$DOC" && grep -qF "$END_MARK" "$DOC"; then
        awk -v begin="$BEGIN_MARK" -v end="$END_MARK" -v section="$section" '
            $0 == begin { while ((getline line < section) > 0) print line; skip = 1; next }
            $0 == end { skip = 0; next }
            !skip { print }
        ' "$DOC" >"$DOC.tmp"
        mv -f "$DOC.tmp" "$DOC"
    else
        { [[ -f $DOC ]] && cat "$DOC" && echo; cat "$section"; } >"$DOC.tmp"
        mv -f "$DOC.tmp" "$DOC"
    fi
    log "results written to docs/PERFORMANCE.md"
else
    log "docs/PERFORMANCE.md left alone (arguments given; LOOPMGR_BENCH_UPDATE_DOC=1 forces it)"
fi
log "done in $((SECONDS - t0)) s"
