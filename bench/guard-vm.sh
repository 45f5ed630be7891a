#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# bench/guard-vm.sh: what the guard costs, measured where it runs: a stock Debian 12 in the VM
# of tools/test-vm.sh (this machine's kernel loads no BPF LSM program). Builds
# bench/guard-ioctl.c statically, boots the guest with bench/guard-guest.sh in place of the
# system suite and prints its table: a losetup cycle and a non-loop ioctl with loopmgrd at
# --guard=off, audit and aliases, alternating round by round in one run, medians and ratios to
# off. Times under software emulation are slow in absolute terms; the ratios are the result.
#
# Knobs: LOOPMGR_BENCH_ROUNDS (5), LOOPMGR_BENCH_CYCLES (40 losetup cycles a round),
# LOOPMGR_BENCH_IOCTLS (200000), and tools/test-vm.sh's (LOOPMGR_VM_KEEP=DIR keeps
# results/guard-bench.txt).

set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

extra=$(mktemp -d "${TMPDIR:-/tmp}/loopmgr-guard-bench.XXXXXX") || exit 1
trap 'rm -rf "$extra"' EXIT
cc -O2 -Wall -Werror -static -o "$extra/guard-ioctl" bench/guard-ioctl.c || exit 1
export LOOPMGR_BENCH_ROUNDS=${LOOPMGR_BENCH_ROUNDS:-5}
export LOOPMGR_BENCH_CYCLES=${LOOPMGR_BENCH_CYCLES:-40}
export LOOPMGR_BENCH_IOCTLS=${LOOPMGR_BENCH_IOCTLS:-200000}
LOOPMGR_VM_MAIN=bench/guard-guest.sh LOOPMGR_VM_EXTRA=$extra LOOPMGR_VM_VERBOSE=1 \
    bash tools/test-vm.sh
