#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# tests/vm/image.sh CACHE-DIR: the recipe of the guest that tools/test-vm.sh boots, and its
# builder. Makes CACHE-DIR/<key>/ with
#   rootfs.img   ext4 file system of a Debian 12 (bookworm) system: systemd as PID 1, udev,
#                dbus, polkitd, libpam-systemd, udisks2, the stock kernel, what loopmgr's
#                package depends on and the tools the system suite calls
#   vmlinuz, initrd.img   the stock kernel and its initramfs, taken out of rootfs.img's /boot
#   packages.txt the packages installed in it, one a line
# and prints that directory. <key> is a hash of this file, so an edit of the recipe builds a new
# image and an unchanged one is reused (the suite itself comes over the 9p share at each boot,
# not from the image). Packages come from the machine's own Debian apt sources; no loop device
# is used (mkfs.ext4 -d fills the file system from a directory).
#
# The guest, as built here:
#   - user `lmuser` (uid 1000), logged in automatically on tty1 (getty@tty1 --autologin): an
#     active local session on seat0, which is what polkit's allow_active is about. Its login
#     shell runs the share's session agent (tests/vm/session-agent.sh) when there is one, so
#     the suite can run commands inside that session.
#   - the host folder shared as 9p tag `lmshare`, mounted on /mnt/share.
#   - loopmgr-vm.service: runs /mnt/share/guest-run.sh once the system is up, then powers the
#     machine off, whatever happened (FailureAction=, and a watchdog in guest-run.sh).
#   - no network, no root password (root has no login at all), the serial console for logs.

set -euo pipefail

cache=${1:?usage: tests/vm/image.sh CACHE-DIR}
self=$(readlink -f "${BASH_SOURCE[0]}")
key=$(sha256sum "$self" | cut -c1-16)
out=$cache/bookworm-$key

# What the guest has besides minbase. The first group is the system the issue is about; the
# second is what loopmgr's package depends on; the third the tools the suite uses.
packages=(
    systemd systemd-sysv udev dbus polkitd libpam-systemd linux-image-amd64 initramfs-tools
    kmod login passwd udisks2
    libsystemd0 libmount1 libblkid1 libacl1 libbpf1
    util-linux mount fdisk e2fsprogs dosfstools procps psmisc jq
)

if [[ -s $out/rootfs.img && -s $out/vmlinuz && -s $out/initrd.img && -s $out/packages.txt ]]; then
    echo "$out"
    exit 0
fi

for tool in mmdebstrap mkfs.ext4; do
    command -v "$tool" >/dev/null || {
        echo "image.sh: $tool is missing (tools/deps.sh --vm installs it)" >&2
        exit 1
    }
done

mkdir -p "$cache"
# One build at a time (two test runs may start together); the second finds the first's image.
exec 9>"$cache/.lock"
flock 9
if [[ -s $out/rootfs.img && -s $out/vmlinuz && -s $out/initrd.img && -s $out/packages.txt ]]; then
    echo "$out"
    exit 0
fi
work=$(mktemp -d "$cache/build.XXXXXX")
# --one-file-system: should mmdebstrap be killed before it unmounts what it mounted in the
# root (/proc, /sys, /dev), the clean-up must not descend into the host's.
trap 'rm -rf --one-file-system "$work"' EXIT

# Only the machine's Debian sources, in deb822 form: other repositories the host may list
# (vendor SDKs) have nothing the guest needs.
sources=$work/sources
for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    if grep -q '^Suites:.*bookworm' "$f" && grep -qi '^URIs:.*debian' "$f"; then
        cat "$f"
        echo
    fi
done >"$sources"
if [[ -f /etc/apt/sources.list ]]; then
    grep -E '^deb .*debian.* bookworm' /etc/apt/sources.list >>"$sources" || true
fi
if [[ ! -s $sources ]]; then
    echo "image.sh: no Debian bookworm source in /etc/apt/sources.list{,.d/}" >&2
    exit 1
fi

# The customisation, run by mmdebstrap with the root directory as $1.
cat >"$work/customize.sh" <<'EOF'
#!/bin/sh
set -eu
root=$1
echo lmvm >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 lmvm\n' >"$root/etc/hosts"
cat >"$root/etc/fstab" <<'FSTAB'
/dev/vda / ext4 rw,errors=remount-ro 0 1
lmshare /mnt/share 9p trans=virtio,version=9p2000.L,msize=262144,nofail 0 0
FSTAB
mkdir -p "$root/mnt/share"
printf '9p\n9pnet_virtio\n' >"$root/etc/modules-load.d/9p.conf"

chroot "$root" useradd --create-home --uid 1000 --user-group --shell /bin/bash lmuser
chroot "$root" passwd --lock root >/dev/null

mkdir -p "$root/etc/systemd/system/getty@tty1.service.d"
cat >"$root/etc/systemd/system/getty@tty1.service.d/autologin.conf" <<'UNIT'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin lmuser --noclear %I $TERM
UNIT

cat >>"$root/home/lmuser/.profile" <<'PROFILE'

# loopmgr VM: on tty1, serve the system suite's requests from inside this session.
if [ "$(tty)" = /dev/tty1 ] && [ -r /mnt/share/session-agent.sh ]; then
        exec /bin/bash /mnt/share/session-agent.sh
fi
PROFILE

cat >"$root/etc/systemd/system/loopmgr-vm.service" <<'UNIT'
[Unit]
Description=loopmgr system suite (from the host's share)
After=multi-user.target getty@tty1.service systemd-logind.service mnt-share.mount
ConditionPathExists=/mnt/share/guest-run.sh
FailureAction=poweroff-force
SuccessAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/bin/bash /mnt/share/guest-run.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl enable loopmgr-vm.service getty@tty1.service >/dev/null 2>&1

# Nothing the suite does needs these, and each costs seconds at every boot under emulation.
for u in e2scrub_reap.service e2scrub_all.timer apt-daily.timer apt-daily-upgrade.timer \
         fstrim.timer man-db.timer dpkg-db-backup.timer systemd-timesyncd.service; do
        chroot "$root" systemctl mask "$u" >/dev/null 2>&1 || true
done
EOF
chmod +x "$work/customize.sh"

echo "image.sh: building the guest's root file system in $work (mmdebstrap)" >&2
t0=$SECONDS
# Documentation and translations are of no use in the guest and make the image slower to
# write; man pages stay (the package installs one).
mmdebstrap --variant=minbase --mode=root --quiet \
    --include="$(IFS=,; echo "${packages[*]}")" \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="$work/customize.sh \"\$1\"" \
    bookworm "$work/root" - <"$sources" >&2

# What is installed and what it provides (virtual packages such as dbus-system-bus), for
# tools/test-vm.sh to check the package's dependencies against.
chroot "$work/root" dpkg-query -W -f='${Package},${Provides}\n' |
    tr ',' '\n' | sed 's/(.*//; s/ //g; /^$/d' | sort -u >"$work/packages.txt"
cp "$(readlink -f "$work/root/vmlinuz")" "$work/vmlinuz"
cp "$(readlink -f "$work/root/initrd.img")" "$work/initrd.img"
chmod 0644 "$work/vmlinuz" "$work/initrd.img"

# ext4 filled from the directory: no loop device on the host. 3 GiB, sparse; the guest gets
# a writable overlay of it (snapshot=on), so the image itself never changes.
mkfs.ext4 -q -F -L lmvm-root -d "$work/root" "$work/rootfs.img" 3G >&2
rm -rf --one-file-system "$work/root"
mkdir -p "$out"
mv "$work/rootfs.img" "$work/vmlinuz" "$work/initrd.img" "$work/packages.txt" "$out/"
echo "image.sh: built in $((SECONDS - t0)) s" >&2
# Images of older recipes: keep the newest other one (another checkout may still use it).
ls -dt "$cache"/bookworm-* 2>/dev/null | grep -vxF "$out" | tail -n +2 | while read -r old; do
    echo "image.sh: removing $old, an image of an older recipe" >&2
    rm -rf --one-file-system "$old"
done
echo "$out"
