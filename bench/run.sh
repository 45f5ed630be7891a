#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# bench/run.sh [--quick] [BENCH-ATTACH-ARGS...]: the benchmark suite of loopmgrd and its peers
# (issue 6), from scratch to the tables, the targets and the plots. docs/PERFORMANCE.md says
# what each scenario measures.
#
#   1. installs what is missing (tools/deps.sh --bench: udisks2, fio, gnuplot) and builds a
#      release tree (default build-bench/: -Dbuildtype=release -Dbench=true -Dtests=false
#      -Db_sanitize=none) with loopmgrd, loopmgrctl, bench/bench-peers, bench/bench-attach and
#      bench/slowfs (tests/slowfs.c)
#   2. brings up its own tests/env.sh instance (default /run/loopmgr-bench: private bus,
#      polkitd, udevd if none runs), starts that loopmgrd on it with `start-daemon`, and
#      udisksd on the same bus
#   3. scenarios 1-3 (latency, daemon overhead, concurrency; every peer in the same run) and 6
#      (another client's calls during a slow Mount, loopmgrd and udisks2): bench-peers; then
#      udisksd is stopped
#   4. scenario 4 (scale: 0, 100 and 1,000 bindings): bench-attach
#   5. scenario 5 (data path): bench/fio.sh
#   6. bench/report.sh: the targets table (PASS/MISS from the measured figures) and the PNG
#      plots; the results section of docs/PERFORMANCE.md is regenerated, the plots go to
#      docs/bench-*.png
#   7. always (also on failure or Ctrl-C): stops udisksd, unmounts what is mounted from a
#      device in the record that is still the same binding (node and diskseq) and takes the
#      device down, stops slowfs, takes down any loop device over the scratch directory, stops
#      the daemon and the environment instance, removes the scratch directory, and checks that
#      nothing of ours is left
#
# --quick: small counts everywhere (a smoke test of a minute or two); it leaves docs/ alone
# and writes the tables and plots to $LOOPMGR_BENCH_OUT. Extra arguments go to bench-attach
# (see bench-attach --help) and, like --quick, leave docs/ alone. Knobs (environment):
#   LOOPMGR_TEST_ENV=/run/loopmgr-bench    tests/env.sh instance
#   LOOPMGR_BENCH_BUILD_DIR=build-bench    build directory
#   LOOPMGR_BENCH_UPDATE_DOC=auto          1: rewrite the results section of docs/PERFORMANCE.md
#                                          and docs/bench-*.png, 0: don't, auto: only for a
#                                          run with the default counts
#   LOOPMGR_BENCH_OUT=/var/tmp/loopmgr-bench-results  where a run that leaves docs/ alone
#                                          puts its results.md and plots

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
export LOOPMGR_TEST_ENV=${LOOPMGR_TEST_ENV:-/run/loopmgr-bench}
BUILD=${LOOPMGR_BENCH_BUILD_DIR:-build-bench}
UPDATE_DOC=${LOOPMGR_BENCH_UPDATE_DOC:-auto}
if [[ $UPDATE_DOC == auto ]]; then
    UPDATE_DOC=$(($# == 0))
fi
QUICK=0
if [[ ${1:-} == --quick ]]; then
    QUICK=1
    shift
fi
if ((QUICK)); then
    peers_args=(--iterations 10 --warmup 2 --cycles 3 --rounds 1 --mount-rounds 1
        --slow-read-msec 100)
    attach_args=(--bindings 20,100 --iterations 10 --resolve-iterations 50 --gmo-iterations 5
        --warmup 2)
    export FIO_SIZE=128 FIO_RUNTIME=1 FIO_RAMP=0 FIO_REPS=1
else
    peers_args=(--iterations 100 --warmup 10 --cycles 10 --rounds 5 --mount-rounds 3
        --slow-read-msec 300)
    attach_args=(--bindings 100,1000)
    export FIO_SIZE=1024 FIO_RUNTIME=3 FIO_RAMP=1 FIO_REPS=3
fi
attach_args+=("$@")
if ((UPDATE_DOC)); then
    OUT=$REPO/docs
else
    OUT=${LOOPMGR_BENCH_OUT:-/var/tmp/loopmgr-bench-results}
fi
DOC=$REPO/docs/PERFORMANCE.md
BEGIN_MARK='<!-- BEGIN bench/run.sh results: generated, do not edit by hand -->'
END_MARK='<!-- END bench/run.sh results -->'

SCRATCH=
env_started=0
tmpfs_mounts=()
client=0
udisksd_pid=
udisks_run_created=0

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
        unmount_from "$node"
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

# unmount_from NODE: every mount of NODE or of its partitions (scenario 6 mounts, a run that
# failed may leave one), and the mount point when the daemon or udisksd made it under
# /run/media or /media.
unmount_from() {
    local node=$1 source target
    while read -r source target; do
        [[ $source == "$node" || $source == "$node"p[0-9]* ]] || continue
        target=$(printf '%b' "$target")
        log "unmounting $target ($source), left by the benchmark"
        umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null ||
            log "warning: cannot unmount $target"
        [[ $target == /run/media/* || $target == /media/* ]] && rmdir "$target" 2>/dev/null
    done < <(findmnt -rn -o SOURCE,TARGET 2>/dev/null)
    return 0
}

# Scenario 6's slowfs, when bench-peers did not get to stop it.
stop_slowfs() {
    [[ -n $SCRATCH ]] || return 0
    pkill -TERM -f -- "$SCRATCH/slowfs" 2>/dev/null && sleep 0.5
    if findmnt -rn -M "$SCRATCH/slowfs" >/dev/null 2>&1; then
        umount -l "$SCRATCH/slowfs" 2>/dev/null || log "warning: cannot unmount $SCRATCH/slowfs"
    fi
    return 0
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((client)) && kill -0 "$client" 2>/dev/null; then
        kill -TERM "$client" 2>/dev/null || true
        wait "$client" 2>/dev/null || true
    fi
    stop_udisksd
    if ((env_started)); then
        bash tests/env.sh stop-daemon || log "warning: stop-daemon failed"
    fi
    unmount_runtime_tmpfs
    if [[ -n $SCRATCH ]]; then
        cleanup_devices "$SCRATCH/devices" || rc=1
        stop_slowfs
        cleanup_scratch_devices || rc=1
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

# Any loop device whose backing file lies in the scratch directory is ours (the directory is
# unique to this run): a tool may have made one and failed before it said which (a udisks
# error, a killed client). Deleted backing files show as "PATH (deleted)".
cleanup_scratch_devices() {
    local name back left=0
    [[ -n $SCRATCH ]] || return 0
    for name in /sys/block/loop*; do
        [[ -r $name/loop/backing_file ]] || continue
        back=$(<"$name/loop/backing_file") || continue
        [[ $back == "$SCRATCH"/* ]] || continue
        log "taking down /dev/${name##*/} over $back, left by the benchmark"
        losetup -d "/dev/${name##*/}" 2>/dev/null || left=1
    done
    udevadm settle --timeout=30 >/dev/null 2>&1 || true
    return $left
}

# loopmgrd's runtime files (its state record, the udev properties of its devices) live in /run,
# which systemd mounts as tmpfs on every machine the daemon is made for. Where /run is part of
# the root file system instead (this VM's image: ext4), every attach would pay for journalled
# creates and unlinks that no deployment has, so the run puts a tmpfs of its own over the
# daemon's state directory and /run/loopmgr, and says so in the results. Not over a
# /run/loopmgr/udev that holds other daemons' files (test instances running meanwhile).
mount_runtime_tmpfs() {
    local dir fstype
    fstype=$(findmnt -n -o FSTYPE -T /run 2>/dev/null || echo unknown)
    runtime_note="/run is $fstype"
    [[ $fstype == tmpfs ]] && return 0
    for dir in "$LOOPMGR_TEST_ENV/loopmgrd-state" /run/loopmgr; do
        mkdir -p "$dir"
        if [[ $dir == /run/loopmgr && -n $(ls -A /run/loopmgr/udev 2>/dev/null) ]]; then
            log "warning: /run/loopmgr/udev holds other daemons' files; it stays on $fstype"
            continue
        fi
        if mount -t tmpfs -o mode=0755,size=256m loopmgr-bench "$dir"; then
            tmpfs_mounts+=("$dir")
        else
            log "warning: cannot mount a tmpfs on $dir"
        fi
    done
    ((${#tmpfs_mounts[@]})) &&
        runtime_note+="; run.sh mounted a tmpfs over ${tmpfs_mounts[*]} for the run, as /run is on a deployed system"
    return 0
}

unmount_runtime_tmpfs() {
    local dir
    for dir in "${tmpfs_mounts[@]}"; do
        umount "$dir" 2>/dev/null || umount -l "$dir" 2>/dev/null || log "warning: cannot unmount $dir"
    done
    tmpfs_mounts=()
}

# udisksd on our private bus, for the udisks2 peers of scenarios 1 and 3.
start_udisksd() {
    local udisksd=/usr/libexec/udisks2/udisksd i
    [[ -x $udisksd ]] || udisksd=/usr/lib/udisks2/udisksd
    if [[ ! -x $udisksd ]]; then
        log "warning: udisksd not found (tools/deps.sh --bench installs udisks2); its rows will fail"
        return 0
    fi
    if pgrep -x udisksd >/dev/null; then
        log "warning: another udisksd runs on this host (pid $(pgrep -x udisksd | tr '\n' ' '));" \
            "both keep their state in /run/udisks2"
    fi
    [[ -e /run/udisks2 ]] || udisks_run_created=1
    log "starting udisksd on the private bus"
    (DBUS_SYSTEM_BUS_ADDRESS=$DBUS_SYSTEM_BUS_ADDRESS exec setsid "$udisksd" --no-sigint \
        --disable-modules) </dev/null >>"$SCRATCH/udisksd.log" 2>&1 &
    udisksd_pid=$!
    for ((i = 0; i < 100; i++)); do
        busctl status org.freedesktop.UDisks2 >/dev/null 2>&1 && return 0
        kill -0 "$udisksd_pid" 2>/dev/null || break
        sleep 0.1
    done
    log "warning: udisksd did not come up (log: $SCRATCH/udisksd.log); its rows will fail"
    tail -n 5 "$SCRATCH/udisksd.log" >&2 || true
}

stop_udisksd() {
    local i
    [[ -n $udisksd_pid ]] || return 0
    if [[ $(cat "/proc/$udisksd_pid/comm" 2>/dev/null) == udisksd ]]; then
        kill -TERM "$udisksd_pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$udisksd_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$udisksd_pid" 2>/dev/null; then
            log "udisksd ignored SIGTERM, sending SIGKILL"
            kill -KILL "$udisksd_pid" 2>/dev/null || true
        fi
    fi
    wait "$udisksd_pid" 2>/dev/null || true
    udisksd_pid=
    if ((udisks_run_created)); then
        rm -rf /run/udisks2
        udisks_run_created=0
    fi
}

on_signal() {
    log "interrupted"
    exit "$1"
}

# ---- the run ---------------------------------------------------------------------------------

((EUID == 0)) || die "must run as root (it configures loop devices and starts system daemons)"
[[ -c /dev/loop-control ]] || die "/dev/loop-control is missing (modprobe loop)"
bash tools/deps.sh --bench >&2 || die "tools/deps.sh --bench failed"
for tool in meson ninja udevadm losetup delpart busctl fio jq gnuplot udisksctl mkfs.ext4 findmnt; do
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
if ! out=$(ninja -C "$BUILD" loopmgrd loopmgrctl bench/bench-attach bench/bench-peers bench/slowfs 2>&1); then
    printf '%s\n' "$out" >&2
    die "the build failed"
fi

SCRATCH=$(mktemp -d /var/tmp/loopmgr-bench.XXXXXX)
: >"$SCRATCH/devices"

env_started=1
envvars=$(bash tests/env.sh start) || die "tests/env.sh start failed"
eval "$envvars"
runtime_note=
mount_runtime_tmpfs
bash tests/env.sh start-daemon "$BUILD"

# Facts about the machine, for the record.
cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n 1)
[[ -n $cpu ]] || cpu=$(uname -m)
mem_kb=$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\).*/\1/p' /proc/meminfo)
fs=$(findmnt -n -o FSTYPE,SOURCE -T "$SCRATCH" 2>/dev/null | tr -s ' ' || echo unknown)
max_loop=$(cat /sys/module/loop/parameters/max_loop 2>/dev/null || echo n/a)
loops_before=$(find /sys/block -maxdepth 1 -name 'loop*' | wc -l)
# Bound loop devices (anyone's): other users' devices are work for every daemon on the host.
count_bindings() {
    local n=0 d
    for d in /sys/block/loop*/loop; do
        [[ -d $d ]] && n=$((n + 1))
    done
    echo "$n"
}
bindings_before=$(count_bindings)
log "max_loop=$max_loop: it only limits the devices created when a /dev/loopN node is opened;" \
    "LOOP_CTL_GET_FREE (loopmgrd) creates devices beyond it, so the run shows how many it got"

load_start=$(cut -d ' ' -f 1-3 /proc/loadavg)
METRICS=$SCRATCH/metrics
: >"$METRICS"

# run_client WHAT CMD...: runs a benchmark client in the background (so that a signal reaches
# the trap at once) and dies when it fails.
run_client() {
    local what=$1 rc=0
    shift
    "$@" &
    client=$!
    wait "$client" || rc=$?
    client=0
    ((rc == 0)) || die "$what failed (exit $rc); daemon log: $LOOPMGR_TEST_ENV/loopmgrd.log"
}

start_udisksd
log "scenarios 1-3 and 6: bench-peers ${peers_args[*]}"
run_client bench-peers "$BUILD/bench/bench-peers" --dir "$SCRATCH" --record "$SCRATCH/devices" \
    --loopmgrctl "$REPO/$BUILD/loopmgrctl" --markdown "$SCRATCH/peers.md" --metrics "$METRICS" \
    --slowfs "$REPO/$BUILD/bench/slowfs" \
    --bus-pid "$(cat "$LOOPMGR_TEST_ENV/dbus.pid")" "${peers_args[@]}" >/dev/null
# udisksd watches every block device: it would add its own work to the scale scenario's
# thousand devices.
stop_udisksd

log "scenario 4: bench-attach ${attach_args[*]}"
run_client bench-attach "$BUILD/bench/bench-attach" --dir "$SCRATCH" --record "$SCRATCH/devices" \
    --markdown "$SCRATCH/results.md" --metrics "$METRICS" "${attach_args[@]}" >/dev/null

log "scenario 5: fio (${FIO_SIZE} MiB, ${FIO_RUNTIME} s runs, ${FIO_REPS} repetitions)"
SCRATCH=$SCRATCH RECORD=$SCRATCH/devices LOOPMGRCTL=$REPO/$BUILD/loopmgrctl METRICS=$METRICS \
    MARKDOWN=$SCRATCH/fio.md run_client fio.sh bash bench/fio.sh

load_end=$(cut -d ' ' -f 1-3 /proc/loadavg)
bindings_end=$(count_bindings)
mkdir -p "$OUT"
bash bench/report.sh "$METRICS" "$SCRATCH/targets.md" "$OUT" bench- ||
    die "bench/report.sh failed"
# The raw figures, for whoever wants to compare runs (not into docs/: the tables hold them).
((UPDATE_DOC)) || cp "$METRICS" "$OUT/bench-metrics.txt"

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
    echo "| backing files | on $fs |"
    echo "| loopmgrd's runtime files | $runtime_note |"
    echo "| udev | systemd-udevd $(udevadm --version) |"
    echo "| peers | $(dpkg-query -W -f='udisks2 ${Version}' udisks2 2>/dev/null || echo 'udisks2 ?'), $(losetup --version), fio $(fio --version | sed 's/^fio-//') |"
    echo "| loop module | max_loop=$max_loop, $loops_before loop devices before the run |"
    echo "| other users' bindings | $bindings_before bound loop devices at the start, $bindings_end at the end (none of them ours) |"
    echo "| arguments | \`bench/run.sh$( ((QUICK)) && echo ' --quick')${*:+ $*}\`: bench-peers \`${peers_args[*]}\`, bench-attach \`${attach_args[*]}\`, fio ${FIO_SIZE} MiB, ${FIO_RUNTIME} s + ${FIO_RAMP} s ramp, ${FIO_REPS} repetitions |"
    echo
    echo "### Targets"
    echo
    cat "$SCRATCH/targets.md"
    echo
    echo "![latency](bench-latency.png) ![overhead](bench-overhead.png)"
    echo "![concurrency](bench-concurrency.png) ![scale](bench-scale.png)"
    echo "![data path](bench-fio.png) ![slow Mount](bench-mount.png)"
    echo
    sed -e '/^#### 6\./,$d' -e 's/^#### /### /' "$SCRATCH/peers.md"
    echo
    echo "### 4. Scale: 0, ${attach_args[1]//,/, } bindings"
    echo
    sed 's/^#### /#### 4. /' "$SCRATCH/results.md"
    echo
    echo "### 5. Data path (fio)"
    echo
    cat "$SCRATCH/fio.md"
    echo
    sed -n -e '/^#### 6\./,$p' "$SCRATCH/peers.md" | sed 's/^#### /### /'
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
    log "results written to docs/PERFORMANCE.md and docs/bench-*.png"
else
    cp "$section" "$OUT/results.md"
    log "docs/ left alone (--quick or arguments given; LOOPMGR_BENCH_UPDATE_DOC=1 forces it);" \
        "results in $OUT/results.md and $OUT/bench-*.png"
fi
echo
cat "$SCRATCH/targets.md"
log "done in $((SECONDS - t0)) s"
