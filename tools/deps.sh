#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# tools/deps.sh: install the Debian packages loopmgr needs to build, test and run.
# Idempotent and quick when everything is there: it asks dpkg first and runs apt-get (with
# one `apt-get update`) only for what is missing. Needs root when something is missing.

set -euo pipefail

packages=(
    # build
    meson ninja-build pkg-config gcc libc6-dev
    libsystemd-dev libmount-dev libblkid-dev libcmocka-dev
    # loopmgr-losetup: tables and JSON as losetup prints them
    libsmartcols-dev
    # ACLs on /run/media/<user> (Device.Mount), as udisks sets them
    libacl1-dev
    # runtime of the test environment (tests/env.sh) and the daemon
    dbus dbus-daemon dbus-bin systemd udev polkitd
    # tools the tests and the demo call: losetup (mount), addpart/delpart/flock/setpriv
    # (util-linux), mkfs.ext4/e2fsck/debugfs (e2fsprogs), pgrep (procps), jq, and
    # mkfs.btrfs/btrfs for the btrfs sub-volume scenario of tests/test-aliases.c (btrfs-progs)
    util-linux mount e2fsprogs procps jq btrfs-progs
    # the desktop tests: mksquashfs (squashfs images to open), desktop-file-validate, sfdisk
    # (fdisk) for the partitioned images of tests/test-desktop-parts.c
    squashfs-tools desktop-file-utils fdisk
    # tests/test-mount.c: vfat images (mounted with uid=/gid=)
    dosfstools
    # tests/test-mount-slow.c: a slow image, on a FUSE file system whose reads sleep
    # (tests/slowfs.c against libfuse3; fuse3 for /dev/fuse and fusermount3)
    libfuse3-dev fuse3
    # checks in tools/test.sh and meson test: clang-format, xmllint
    clang-format libxml2-utils
    # the libFuzzer targets of fuzz/ (tools/test.sh step 6): clang and its fuzzer and
    # sanitizer runtimes
    clang libclang-rt-14-dev
    # the BPF LSM guard (daemon/kernel/bpf/): clang (above) compiles it for the BPF target, bpftool
    # makes its skeleton, libbpf loads it
    bpftool libbpf-dev libelf-dev zlib1g-dev
)

# tools/deps.sh --bench: also what bench/run.sh needs besides the above: the peers it measures
# loopmgrd against (udisks2: udisksd and udisksctl), fio for the data path, gnuplot for the
# plots.
bench_packages=(udisks2 fio gnuplot-nox)
# tools/deps.sh --deb: also what tools/build-deb.sh needs to build and check the Debian
# package: dpkg-buildpackage (dpkg-dev), build-essential (which dpkg-checkbuilddeps requires),
# dh and dh_* (debhelper), lintian. debian/control's Build-Depends are all in the list above.
# No fakeroot: Rules-Requires-Root: no.
deb_packages=(dpkg-dev build-essential debhelper lintian pkgconf)
# tools/deps.sh --vm: also what tools/test-vm.sh needs: qemu (software emulation of a PC),
# mmdebstrap for the guest's root file system, and what makes the suite's images without a loop
# device: sfdisk (fdisk) and mkfs.vfat (above), mcopy (mtools), xorriso.
vm_packages=(qemu-system-x86 mmdebstrap mtools xorriso)
# and gcc-multilib for tests/vm/build-helpers.sh: a static 32-bit program for the guard's
# compat ioctl path
vm_packages+=(gcc-multilib)
for arg in "$@"; do
    case $arg in
    --bench) packages+=("${bench_packages[@]}") ;;
    --deb) packages+=("${deb_packages[@]}") ;;
    --vm) packages+=("${vm_packages[@]}") ;;
    *) echo "deps: unknown argument '$arg' (known: --bench, --deb, --vm)" >&2; exit 2 ;;
    esac
done

missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [[ $status == ii* ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
    echo "deps: all ${#packages[@]} packages are installed"
    exit 0
fi

if ((EUID != 0)); then
    echo "deps: missing packages: ${missing[*]}; run tools/deps.sh as root" >&2
    exit 1
fi

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
    -o Dpkg::Use-Pty=0)
# One update, then the install. If the install fails with the lists we had (an old list can
# name versions that are gone), the update is what fixes it, so always do it first.
apt-get update -q </dev/null
apt-get install "${apt_opts[@]}" --no-install-recommends "${missing[@]}" </dev/null
echo "deps: done"
