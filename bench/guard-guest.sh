#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# bench/guard-guest.sh: runs in the guest in place of the system suite (bench/guard-vm.sh
# boots it through tools/test-vm.sh). Measures, in one run and alternating round by round, what
# the guard costs with loopmgrd running as the shipped unit starts it but for --guard=MODE:
#   - a losetup cycle (losetup -f --show of a file nothing else uses, losetup -d, until the
#     binding is gone): the loop ioctls the guard inspects, plus udev's and loopmgrd's work on
#     the events;
#   - one ioctl that is not a loop ioctl (extra/guard-ioctl: FIONREAD on a pipe), which every
#     process pays once the program sits on the file_ioctl hook.
# Modes: off (no BPF program at all), audit, aliases. Prints a table of medians and the ratios
# to off; the figures also go to results/guard-bench.txt.

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${LOOPMGR_BENCH_ROUNDS:-5}
CYCLES=${LOOPMGR_BENCH_CYCLES:-40}
IOCTLS=${LOOPMGR_BENCH_IOCTLS:-200000}
MODES=(off audit aliases)

# use_mode MODE: loopmgrd.service with --guard=MODE, started afresh (a stop removes the guard).
use_mode() {
    mkdir -p /run/systemd/system/loopmgrd.service.d
    printf '[Service]\nExecStart=\nExecStart=/usr/libexec/loopmgrd --guard=%s\n' "$1" \
        >/run/systemd/system/loopmgrd.service.d/bench.conf
    systemctl daemon-reload
    systemctl stop loopmgrd.service
    busctl get-property "$bus" "$obj" "$iface" Version >/dev/null || die "loopmgrd does not start"
    local guard problem
    guard=$(busctl get-property "$bus" "$obj" "$iface" Guard | sed 's/^s "\(.*\)"$/\1/')
    problem=$(busctl get-property "$bus" "$obj" "$iface" GuardProblem | sed 's/^s "\(.*\)"$/\1/')
    if [[ $guard != "$1" ]]; then
        echo "SKIP: --guard=$1 gives Guard '$guard': $problem"
        exit 77
    fi
}

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

bench_guard() {
    local img r mode t0 t1 dev ns
    busctl introspect "$bus" "$obj" "$iface" | grep -q '\.Guard ' ||
        { echo "SKIP: this loopmgrd has no Guard property"; exit 77; }
    img=$(image bench.img 16)
    for ((r = 1; r <= ROUNDS; r++)); do
        for mode in "${MODES[@]}"; do
            use_mode "$mode"
            t0=$(date +%s%N)
            for ((i = 0; i < CYCLES; i++)); do
                dev=$(losetup -f --show "$img") || die "$mode: losetup -f failed"
                losetup -d "$dev"
                # Until the binding is gone: the kernel defers the teardown while udev's probe
                # holds the device, and in aliases mode the guard refuses another device over
                # the file meanwhile (the same in every mode, so the ratio stays fair).
                while [[ -e /sys/block/${dev#/dev/}/loop/backing_file ]]; do
                    sleep 0.01
                done
            done
            t1=$(date +%s%N)
            echo "$mode cycle_us $(((t1 - t0) / CYCLES / 1000))" >>"$work/raw"
            ns=$("$share/extra/guard-ioctl" "$IOCTLS" | awk '{print $2}')
            echo "$mode ioctl_ns $ns" >>"$work/raw"
        done
    done
    rm -f /run/systemd/system/loopmgrd.service.d/bench.conf
    systemctl daemon-reload
    systemctl stop loopmgrd.service
    {
        echo "guard cost: $ROUNDS rounds alternating the modes, medians"
        printf '%-8s %18s %10s %18s %10s\n' mode "losetup cycle µs" "vs off" "non-loop ioctl ns" "vs off"
        local c0 n0 c n
        c0=$(awk '$1 == "off" && $2 == "cycle_us" {print $3}' "$work/raw" | median)
        n0=$(awk '$1 == "off" && $2 == "ioctl_ns" {print $3}' "$work/raw" | median)
        for mode in "${MODES[@]}"; do
            c=$(awk -v m="$mode" '$1 == m && $2 == "cycle_us" {print $3}' "$work/raw" | median)
            n=$(awk -v m="$mode" '$1 == m && $2 == "ioctl_ns" {print $3}' "$work/raw" | median)
            printf '%-8s %18s %10.3f %18s %10.3f\n' "$mode" "$c" \
                "$(awk -v a="$c" -v b="$c0" 'BEGIN {print a / b}')" "$n" \
                "$(awk -v a="$n" -v b="$n0" 'BEGIN {print a / b}')"
        done
    } | tee "$share/results/guard-bench.txt"
}

suite_begin "guard benchmark"
run_test "guard cost: losetup cycle and a non-loop ioctl, by mode" bench_guard
suite_end
