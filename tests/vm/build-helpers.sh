#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# tests/vm/build-helpers.sh DIR: builds the guest's helper programs into DIR (tools/test-vm.sh
# puts DIR into the share). loop-ioctl32: a static 32-bit program for the guard's compat
# ioctl path (gcc-multilib: tools/deps.sh --vm).

set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:?usage: build-helpers.sh DIR}
mkdir -p "$out"
gcc -m32 -static -O2 -Wall -Werror -o "$out/loop-ioctl32" "$here/loop-ioctl32.c"
