#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# bench/fio.sh: scenario 5 of bench/run.sh, the data path. Not meant to be run alone: run.sh
# sets up the bus and loopmgrd, and takes down whatever the record names if this dies.
#
# Sequential (1 MiB blocks) and random (4 KiB) reads and writes with fio, direct I/O on and
# off, on the backing file itself, through a loop device attached by loopmgrd with
# direct-io=on and with direct-io=off, and (the control: is a gap loopmgrd's doing or the
# loop driver's?) through one attached by `losetup --direct-io=on`. The targets of one job run
# one after the other in rotated order, each repetition; every loop device is attached just
# before its job and detached right after, so only one device exists over the file at a time
# (loopmgrd refuses aliases anyway).
#
# Ratios are paired: each repetition runs every target back to back (rotated order), the
# ratio of a target is the median over the repetitions of its bandwidth over the file's in
# the same repetition, so that the drift of a virtual disk (seen here: +-30% between runs a
# minute apart) cancels out. The CPU time of the whole machine (/proc/stat: everything but
# idle and iowait) during each run gives the CPU per I/O of each path: a path that needs
# more CPU per I/O than the machine has to give is bound by that, not by the disk.
#
# Environment: SCRATCH (directory), RECORD (device record), LOOPMGRCTL, METRICS (key value
# lines appended), MARKDOWN (table written), FIO_SIZE (MiB), FIO_RUNTIME and FIO_RAMP
# (seconds), FIO_REPS.

set -euo pipefail

: "${SCRATCH:?}" "${RECORD:?}" "${LOOPMGRCTL:?}" "${METRICS:?}" "${MARKDOWN:?}"
SIZE_MIB=${FIO_SIZE:-1024}
RUNTIME=${FIO_RUNTIME:-3}
RAMP=${FIO_RAMP:-1}
REPS=${FIO_REPS:-3}
IMG=$SCRATCH/fio.img
RAW=$SCRATCH/fio-raw
mkdir -p "$RAW"

log() {
    printf 'fio.sh: %s\n' "$*" >&2
}

attached=
cleanup_fio() {
    if [[ -n $attached ]]; then
        "$LOOPMGRCTL" detach --wait "$attached" >/dev/null 2>&1 || true
    fi
    if [[ -n ${losetup_node:-} ]]; then
        losetup -d "$losetup_node" 2>/dev/null || true
    fi
}
trap cleanup_fio EXIT

# attach MODE: a fresh loopmgrd device over IMG (direct-io MODE), recorded; its node goes
# into $attached (no subshell, so that the EXIT trap knows it).
attach() {
    local out node seq
    out=$("$LOOPMGRCTL" attach --json --direct-io="$1" "$IMG")
    node=$(jq -r .device <<<"$out")
    seq=$(jq -r .diskseq <<<"$out")
    [[ $node == /dev/loop* && $seq =~ ^[0-9]+$ ]] || { log "unexpected attach output: $out"; return 1; }
    echo "$node $seq" >>"$RECORD"
    attached=$node
}

detach() {
    "$LOOPMGRCTL" detach --wait "$1" >/dev/null
    attached=
}

log "writing the ${SIZE_MIB} MiB backing file"
fio --name=fill --filename="$IMG" --size="${SIZE_MIB}M" --rw=write --bs=1M --direct=1 \
    --ioengine=libaio --iodepth=8 --output=/dev/null

# Is direct I/O what a default attach gives on this file system?
attach auto
dio=$(cat "/sys/block/${attached#/dev/}/loop/dio" 2>/dev/null || echo 0)
detach "$attached"
echo "s5.default_dio $dio" >>"$METRICS"
log "a default attach (direct-io=auto) gave dio=$dio"

jobs=(seqread randread seqwrite randwrite)
declare -A rw=([seqread]=read [randread]=randread [seqwrite]=write [randwrite]=randwrite)
declare -A bs=([seqread]=1M [randread]=4k [seqwrite]=1M [randwrite]=4k)
declare -A dir=([seqread]=read [randread]=read [seqwrite]=write [randwrite]=write)
targets=(file loop-dio loop-nodio losetup-dio)

# losetup_attach: the control device, recorded like loopmgrd's.
losetup_attach() {
    local node
    node=$(losetup --find --show --direct-io=on "$IMG")
    echo "$node $(cat "/sys/block/${node#/dev/}/diskseq")" >>"$RECORD"
    losetup_node=$node
}
losetup_node=

# cpu_jiffies: "busy total" clock ticks of all CPUs so far (busy: all but idle and iowait).
cpu_jiffies() {
    awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat
}

# open_target TARGET: what fio reads and writes for TARGET, in $filename; a loop device is
# attached for it (no subshell, so that the EXIT trap knows it).
open_target() {
    case $1 in
    file) filename=$IMG ;;
    loop-dio) attach on; filename=$attached ;;
    loop-nodio) attach off; filename=$attached ;;
    losetup-dio) losetup_attach; filename=$losetup_node ;;
    esac
}

# close_target: takes down what open_target attached.
close_target() {
    local seq k
    [[ -z $attached ]] || detach "$attached"
    if [[ -n $losetup_node ]]; then
        seq=$(cat "/sys/block/${losetup_node#/dev/}/diskseq")
        losetup -d "$losetup_node"
        # On 6.11+ the teardown happens at the last close (udev's probe may hold it): wait for
        # it, or loopmgrd would rightly refuse the next attach of the file as an alias.
        for ((k = 0; k < 100; k++)); do
            [[ -d /sys/block/${losetup_node#/dev/}/loop &&
                $(cat "/sys/block/${losetup_node#/dev/}/diskseq" 2>/dev/null) == "$seq" ]] || break
            sleep 0.1
        done
        losetup_node=
    fi
}

# run_one JOB DIRECT TARGET REP: one fio run, its JSON kept in RAW, and the share of all CPUs
# that was busy during it in RAW/...cpu.
run_one() {
    local job=$1 direct=$2 target=$3 rep=$4 filename
    open_target "$target"
    # fio invalidates the page cache of what it reads (the loop device), not that of the
    # file below it: drop the backing file's cached pages too (fadvise DONTNEED), or a loop
    # device without direct I/O would read the file's cache.
    sync "$IMG"
    dd if="$IMG" iflag=nocache count=0 status=none
    local b0 t0 b1 t1
    read -r b0 t0 < <(cpu_jiffies)
    fio --name="$job" --filename="$filename" --size="${SIZE_MIB}M" --rw="${rw[$job]}" \
        --bs="${bs[$job]}" --direct="$direct" --ioengine=libaio --iodepth=16 \
        --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --invalidate=1 \
        --randrepeat=0 --output-format=json \
        --output="$RAW/$job-d$direct-$target-$rep.json" >/dev/null
    read -r b1 t1 < <(cpu_jiffies)
    awk -v b="$((b1 - b0))" -v t="$((t1 - t0))" 'BEGIN { printf "%.4f\n", (t > 0 ? b / t : 0) }' \
        >"$RAW/$job-d$direct-$target-$rep.cpu"
    close_target
}

total=$((${#jobs[@]} * 2 * ${#targets[@]} * REPS))
log "$total fio runs of ${RUNTIME} s (+${RAMP} s ramp)"
i=0
for job in "${jobs[@]}"; do
    for direct in 1 0; do
        for ((rep = 0; rep < REPS; rep++)); do
            for ((j = 0; j < ${#targets[@]}; j++)); do
                target=${targets[(i + j) % ${#targets[@]}]}
                run_one "$job" "$direct" "$target" "$rep"
            done
            i=$((i + 1))
        done
    done
done

# median VALUES...: the median of numbers.
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

NCPU=$(nproc)
{
    echo "Bandwidth in MiB/s (median of $REPS runs of ${RUNTIME} s after ${RAMP} s ramp-up;"
    echo "fio, libaio, queue depth 16, ${SIZE_MIB} MiB file), completion-latency p99 in"
    echo "microseconds, and the ratio of the loop device's bandwidth to the file's: the median of"
    echo "the $REPS repetitions' ratios, each against the file's run of the same repetition. The"
    echo "losetup columns are the control: a device losetup made, with direct I/O, over the same"
    echo "file."
    echo
    echo "| job | fio direct | file MiB/s | file p99 | loopmgr dio=on MiB/s | p99 | ratio | loopmgr dio=off MiB/s | p99 | ratio | losetup dio=on MiB/s | p99 | ratio |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} >"$MARKDOWN"
cpu_rows=()
for job in "${jobs[@]}"; do
    for direct in 1 0; do
        line="| $job (${bs[$job]}) | $direct |"
        cpu_line="| $job (${bs[$job]}) | $direct |"
        declare -A filebws=()
        for target in "${targets[@]}"; do
            bws=() lats=() ratios=() busys=() cpuios=()
            for ((rep = 0; rep < REPS; rep++)); do
                f=$RAW/$job-d$direct-$target-$rep.json
                b=$(jq ".jobs[0].${dir[$job]}.bw_bytes / 1048576" "$f")
                iops=$(jq ".jobs[0].${dir[$job]}.iops" "$f")
                busy=$(cat "$RAW/$job-d$direct-$target-$rep.cpu")
                bws+=("$b")
                lats+=("$(jq ".jobs[0].${dir[$job]}.clat_ns.percentile.\"99.000000\" / 1000" "$f")")
                busys+=("$busy")
                # CPU microseconds of the whole machine per I/O: busy share x CPUs / IOPS.
                cpuios+=("$(awk -v c="$busy" -v n="$NCPU" -v i="$iops" 'BEGIN { if (i > 0) printf "%.2f", c * n * 1e6 / i; else print "nan" }')")
                if [[ $target == file ]]; then
                    filebws[$rep]=$b
                else
                    ratios+=("$(awk -v a="$b" -v f="${filebws[$rep]}" 'BEGIN { if (f > 0) printf "%.4f", a / f; else print "nan" }')")
                fi
            done
            bw=$(median "${bws[@]}")
            lat=$(median "${lats[@]}")
            busy=$(median "${busys[@]}")
            cpuio=$(median "${cpuios[@]}")
            echo "s5.$job.d$direct.$target.bw_mib $bw" >>"$METRICS"
            echo "s5.$job.d$direct.$target.p99_us $lat" >>"$METRICS"
            echo "s5.$job.d$direct.$target.cpu_busy $busy" >>"$METRICS"
            echo "s5.$job.d$direct.$target.cpu_us_per_io $cpuio" >>"$METRICS"
            line+=$(printf ' %.1f | %.0f |' "$bw" "$lat")
            cpu_line+=$(awk -v b="$busy" -v c="$cpuio" 'BEGIN { printf " %.0f%% | %.1f |", b * 100, c }')
            if [[ $target != file ]]; then
                ratio=$(median "${ratios[@]}")
                echo "s5.$job.d$direct.$target.ratio $ratio" >>"$METRICS"
                line+=$(printf ' %.3f |' "$ratio")
            fi
        done
        unset filebws
        echo "$line" >>"$MARKDOWN"
        cpu_rows+=("$cpu_line")
    done
done
{
    echo
    echo "CPU during the same runs: the share of the machine's $NCPU CPUs that was busy (all"
    echo "processes and kernel threads: fio, the loop driver's workers, interrupts) and the CPU"
    echo "microseconds that cost per I/O (busy share x CPUs / IOPS); medians of the repetitions."
    echo "When a path's CPU per I/O times its IOPS fills the CPUs, it cannot go faster on this"
    echo "machine, whatever the disk could do."
    echo
    echo "| job | fio direct | file CPU busy | µs/IO | loopmgr dio=on busy | µs/IO | loopmgr dio=off busy | µs/IO | losetup dio=on busy | µs/IO |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${cpu_rows[@]}"
} >>"$MARKDOWN"
# Random reads by queue depth (direct I/O everywhere): where the loop device's gap comes from.
# A gap that stays while the CPUs are mostly idle, and that the losetup control shares, is
# the loop driver's own path per request, not anything a loop manager sets.
sweep_qds=(1 16 64 128)
sweep_targets=(file loop-dio losetup-dio)
log "random reads by queue depth: $((${#sweep_qds[@]} * ${#sweep_targets[@]} * REPS)) fio runs"
declare -A sweep_bw=()
for qd in "${sweep_qds[@]}"; do
    for ((rep = 0; rep < REPS; rep++)); do
        for ((j = 0; j < ${#sweep_targets[@]}; j++)); do
            target=${sweep_targets[(rep + j) % ${#sweep_targets[@]}]}
            open_target "$target"
            fio --name=sweep --filename="$filename" --size="${SIZE_MIB}M" --rw=randread --bs=4k \
                --direct=1 --ioengine=libaio --iodepth="$qd" --time_based --runtime="$RUNTIME" \
                --ramp_time="$RAMP" --randrepeat=0 --output-format=json \
                --output="$RAW/sweep-$qd-$target-$rep.json" >/dev/null
            sweep_bw[$qd.$target.$rep]=$(jq '.jobs[0].read.bw_bytes / 1048576' "$RAW/sweep-$qd-$target-$rep.json")
            close_target
        done
    done
done
{
    echo
    echo "Random 4 KiB reads with direct I/O by queue depth (fio, libaio; MiB/s, medians of $REPS"
    echo "runs) and the paired ratio to the file."
    echo
    echo "| queue depth | file MiB/s | loopmgr dio=on MiB/s | ratio | losetup dio=on MiB/s | ratio |"
    echo "|---:|---:|---:|---:|---:|---:|"
} >>"$MARKDOWN"
for qd in "${sweep_qds[@]}"; do
    line="| $qd |"
    for target in "${sweep_targets[@]}"; do
        bws=() ratios=()
        for ((rep = 0; rep < REPS; rep++)); do
            bws+=("${sweep_bw[$qd.$target.$rep]}")
            ratios+=("$(awk -v a="${sweep_bw[$qd.$target.$rep]}" -v f="${sweep_bw[$qd.file.$rep]}" 'BEGIN { if (f > 0) printf "%.4f", a / f; else print "nan" }')")
        done
        bw=$(median "${bws[@]}")
        echo "s5.sweep.qd$qd.$target.bw_mib $bw" >>"$METRICS"
        line+=$(printf ' %.1f |' "$bw")
        if [[ $target != file ]]; then
            ratio=$(median "${ratios[@]}")
            echo "s5.sweep.qd$qd.$target.ratio $ratio" >>"$METRICS"
            line+=$(printf ' %.3f |' "$ratio")
        fi
    done
    echo "$line" >>"$MARKDOWN"
done

rm -f "$IMG"
log "done"
