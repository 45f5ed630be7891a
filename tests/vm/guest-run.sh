#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Runs inside the guest (loopmgr-vm.service, as root, from the 9p share /mnt/share): runs the
# script the host named in /mnt/share/main (the system suite, which installs the package the
# host built and tests it), and leaves the results in /mnt/share/results/. The unit powers the
# machine off when this returns.

share=/mnt/share
results=$share/results
mkdir -p "$results"
limit=$(cat "$share/time-limit" 2>/dev/null || echo 900)

# Whatever hangs, the machine goes down in time and the host learns why.
(
    sleep "$limit"
    echo "guest-run: the suite ran out of its ${limit} s; powering off" | tee -a "$results/suite.log"
    journalctl -b --no-pager >"$results/journal.txt" 2>&1
    sync
    systemctl poweroff --force --force
) &

{
    echo "guest: $(uname -r), systemd $(systemctl --version | head -n 1 | cut -d' ' -f2)," \
        "$(systemctl is-system-running 2>&1)"
} >"$results/guest-info.txt"

# What the host passed on: LOOPMGR_VM_TESTS, LOOPMGR_VM_VERBOSE, LOOPMGR_VM_TRACE and the
# benchmark's LOOPMGR_BENCH_*.
set -a
. "$share/suite.env"
set +a
bash "$share/$(cat "$share/main")" 2>&1 | tee "$results/suite.log" >/dev/console
journalctl -b --no-pager >"$results/journal.txt" 2>&1
sync
