#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# tools/test-vm.sh: the system suite on a real system. Builds loopmgr's Debian package
# (tools/build-deb.sh), boots a stock Debian 12 with systemd as PID 1 under qemu (software
# emulation), installs the package there and runs tests/vm/system-suite.sh inside against it;
# prints the suite's result lines here and ends with "vm: N passed, N failed, N skipped".
# Exit status 0 only when the suite ran to its end with no failure.
#
#   1. tools/deps.sh --vm --deb: qemu, mmdebstrap, the package's build tools
#   2. tests/vm/image.sh: the guest image, cached in $LOOPMGR_VM_CACHE (default
#      /var/cache/loopmgr-vm) under a hash of its recipe; built once (about a minute)
#   3. tools/build-deb.sh: the package of this tree
#   4. the images the suite opens, made here without a loop device (sfdisk and mkfs.vfat on
#      files, xorriso), put with the package and the suite into a folder the guest mounts (9p)
#   5. qemu: -snapshot (the cached image never changes), no network; the guest powers itself
#      off when the suite is done, and qemu is killed after $LOOPMGR_VM_TIMEOUT seconds
#      whatever happens. Every qemu this script starts is gone when it returns.
#
# Knobs (environment):
#   LOOPMGR_VM_CACHE=DIR      where guest images are kept (outside the repository)
#   LOOPMGR_VM_TIMEOUT=SEC    bound on the whole boot + suite + power-off (default 1200)
#   LOOPMGR_VM_DEB=FILE       install this package instead of building one
#   LOOPMGR_VM_KEEP=DIR       keep the share (results, console and journal) in DIR
#   LOOPMGR_VM_TESTS="A B"    run only these tests of the suite (function names without test_)
#   LOOPMGR_VM_VERBOSE=1      show every test's output, not only that of failures
#   LOOPMGR_VM_TRACE=1        and trace their commands (set -x)
#   LOOPMGR_VM_MEMORY=MIB     guest memory (default 2048)
#   LOOPMGR_VM_MAIN=FILE      run this script in the guest instead of tests/vm/system-suite.sh
#                             (it sources lib.sh from the share and ends with suite_end)
#   LOOPMGR_VM_EXTRA=DIR      copy DIR to the share as extra/ (programs such a script runs)

set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
src=$PWD
CACHE=${LOOPMGR_VM_CACHE:-/var/cache/loopmgr-vm}
TIMEOUT=${LOOPMGR_VM_TIMEOUT:-1200}
MEMORY=${LOOPMGR_VM_MEMORY:-2048}
t0=$SECONDS
qemu_pid=0

fail() {
    echo "test-vm: $*" >&2
    echo "vm: 0 passed, 1 failed, 0 skipped"
    exit 1
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/loopmgr-vm.XXXXXX") || fail "mktemp failed"
cleanup() {
    if ((qemu_pid > 0)) && kill -0 "$qemu_pid" 2>/dev/null; then
        kill -TERM "$qemu_pid" 2>/dev/null
        sleep 1
        kill -KILL "$qemu_pid" 2>/dev/null
        wait "$qemu_pid" 2>/dev/null
    fi
    if [[ -n ${LOOPMGR_VM_KEEP:-} ]]; then
        mkdir -p "$LOOPMGR_VM_KEEP"
        cp -R "$tmp/share/results" "$tmp/console.log" "$LOOPMGR_VM_KEEP/" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "==> dependencies"
bash tools/deps.sh --vm --deb || fail "tools/deps.sh --vm --deb failed"
[[ -e /dev/kvm ]] && echo "test-vm: /dev/kvm is not used: software emulation runs any stock kernel"

echo "==> guest image"
image_dir=$(bash tests/vm/image.sh "$CACHE" | tail -n 1)
[[ -s $image_dir/rootfs.img ]] || fail "no guest image (tests/vm/image.sh $CACHE)"
echo "test-vm: $image_dir ($((SECONDS - t0)) s)"

share=$tmp/share
mkdir -p "$share/images" "$share/results"
if [[ -n ${LOOPMGR_VM_DEB:-} ]]; then
    deb=$LOOPMGR_VM_DEB
else
    echo "==> package"
    deb=$(bash tools/build-deb.sh "$tmp/deb" | tail -n 1)
fi
[[ -f $deb && $deb == *.deb ]] || fail "no package ('$deb')"
cp "$deb" "$share/"
echo "test-vm: $(basename "$deb") ($((SECONDS - t0)) s)"
# The guest has no network: what the package depends on must be in the image already.
missing=()
IFS=',' read -ra deps <<<"$(dpkg-deb -f "$deb" Depends)"
for dep in "${deps[@]}"; do
    found=0
    IFS='|' read -ra alternatives <<<"$dep"
    for a in "${alternatives[@]}"; do
        a=${a%%(*}
        a=${a// /}
        grep -qxF "${a%%:*}" "$image_dir/packages.txt" && found=1
    done
    ((found)) || missing+=("${dep# }")
done
((${#missing[@]} == 0)) ||
    fail "the guest image lacks what the package depends on: ${missing[*]}; add it to tests/vm/image.sh"

echo "==> images for the suite"
make_images() {
    local d=$share/images f t p start size
    # A GPT and an MBR disk image (64 MiB) with two partitions each: 1 MiB + 16 MiB and
    # 17 MiB + 40 MiB, each holding ext4 labelled LMGPT1/LMGPT2 (LMMBR1/LMMBR2) with hello.txt,
    # made in files of their own (mkfs.ext4 -d) and copied into place with dd.
    for t in gpt mbr; do
        f=$d/$t.img
        truncate -s 64M "$f"
        if [[ $t == gpt ]]; then
            printf 'label: gpt\nstart=1M, size=16M, type=L\nstart=17M, size=40M, type=L\n'
        else
            printf 'label: dos\nstart=1M, size=16M, type=83\nstart=17M, size=40M, type=83\n'
        fi | sfdisk -q "$f" || return 1
        for p in 1 2; do
            start=$((p == 1 ? 1 : 17)) size=$((p == 1 ? 16 : 40))
            rm -rf "$tmp/tree" "$tmp/fs.img"
            mkdir -p "$tmp/tree"
            printf 'hello from %s partition %s\n' "$t" "$p" >"$tmp/tree/hello.txt"
            chmod 0755 "$tmp/tree"
            chmod 0644 "$tmp/tree/hello.txt"
            truncate -s "${size}M" "$tmp/fs.img"
            mkfs.ext4 -q -F -L "LM${t^^}$p" -d "$tmp/tree" "$tmp/fs.img" || return 1
            dd if="$tmp/fs.img" of="$f" bs=1M seek="$start" conv=notrunc status=none || return 1
        done
    done
    rm -rf "$tmp/tree" "$tmp/fs.img"
    # vfat with a file in it, put there by mcopy (mtools): no mount needed.
    mkfs.vfat -C -n LMVFAT "$d/vfat.img" 32768 >/dev/null
    printf 'hello from vfat\n' >"$tmp/hello.txt"
    mcopy -i "$d/vfat.img" "$tmp/hello.txt" ::hello.txt
    # iso9660 with Rock Ridge and Joliet, as CD images come.
    mkdir -p "$tmp/iso"
    printf 'hello from iso9660\n' >"$tmp/iso/README.TXT"
    xorriso -as mkisofs -quiet -R -J -V LMISO -o "$d/cd.iso" "$tmp/iso" 2>/dev/null
}
make_images || fail "could not make the suite's images"
cp tests/vm/guest-run.sh tests/vm/lib.sh tests/vm/system-suite.sh tests/vm/session-agent.sh \
    "$share/"
# What the guest runs: the system suite, or another script in its place (bench/guard-vm.sh
# runs bench/guard-guest.sh), with files of its own in the share's extra/.
main=${LOOPMGR_VM_MAIN:-tests/vm/system-suite.sh}
[[ -f $main ]] || fail "LOOPMGR_VM_MAIN: no $main"
cp "$main" "$share/"
basename "$main" >"$share/main"
if [[ -n ${LOOPMGR_VM_EXTRA:-} ]]; then
    cp -R "$LOOPMGR_VM_EXTRA" "$share/extra" || fail "LOOPMGR_VM_EXTRA: cannot copy $LOOPMGR_VM_EXTRA"
fi
cp tests/vm/tests-*.sh "$share/" 2>/dev/null
# Programs the guest's tests run that the guest cannot build (it has no compiler).
if [[ -f tests/vm/build-helpers.sh ]]; then
    bash tests/vm/build-helpers.sh "$share/bin" || fail "tests/vm/build-helpers.sh failed"
fi
echo "$TIMEOUT" >"$share/time-limit"
for v in LOOPMGR_VM_TESTS LOOPMGR_VM_VERBOSE LOOPMGR_VM_TRACE LOOPMGR_BENCH_ROUNDS \
    LOOPMGR_BENCH_CYCLES LOOPMGR_BENCH_IOCTLS; do
    printf '%s=%q\n' "$v" "${!v:-}"
done >"$share/suite.env"
# The guest's users read the share as they would any directory of that mode.
chmod -R a+rX "$share"

echo "==> boot (qemu, software emulation; the guest runs the suite and powers off)"
kernel_args="root=/dev/vda rw console=ttyS0 mitigations=off quiet loglevel=3"
kernel_args+=" systemd.show_status=false"
qemu-system-x86_64 -machine q35 -accel tcg -cpu max -smp 2 -m "$MEMORY" \
    -kernel "$image_dir/vmlinuz" -initrd "$image_dir/initrd.img" -append "$kernel_args" \
    -drive "file=$image_dir/rootfs.img,format=raw,if=virtio,snapshot=on" \
    -virtfs "local,path=$share,mount_tag=lmshare,security_model=none,id=lmshare" \
    -nic none -display none -monitor none -serial "file:$tmp/console.log" -no-reboot \
    </dev/null >"$tmp/qemu.log" 2>&1 &
qemu_pid=$!
deadline=$((SECONDS + TIMEOUT))
while kill -0 "$qemu_pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
        echo "test-vm: the guest did not power off within $TIMEOUT s; killing qemu" >&2
        break
    fi
    sleep 1
done
cleanup_qemu_rc=0
if kill -0 "$qemu_pid" 2>/dev/null; then
    kill -KILL "$qemu_pid"
    cleanup_qemu_rc=1
fi
wait "$qemu_pid" 2>/dev/null
qemu_pid=0
echo "test-vm: guest done ($((SECONDS - t0)) s)"

log=$share/results/suite.log
if [[ ! -s $log ]]; then
    echo "test-vm: the suite left no results; qemu said:" >&2
    cat "$tmp/qemu.log" >&2
    echo "test-vm: the last lines of the guest's console:" >&2
    tail -n 40 "$tmp/console.log" >&2
    fail "no results from the guest"
fi
cat "$share/results/guest-info.txt" 2>/dev/null
cat "$log"
last=$(tail -n 1 "$log")
if [[ $last =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed,\ ([0-9]+)\ skipped$ ]]; then
    p=${BASH_REMATCH[1]} f=${BASH_REMATCH[2]} s=${BASH_REMATCH[3]}
else
    echo "test-vm: the suite did not finish (last line: $last)" >&2
    p=$(grep -c '^ok ' "$log") f=$(($(grep -c '^not ok ' "$log") + 1)) s=0
fi
((cleanup_qemu_rc == 0)) || f=$((f + 1))
if ((f)) && [[ -s $share/results/journal.txt ]]; then
    echo "test-vm: loopmgrd's journal in the guest:"
    grep -E 'loopmgrd|polkit' "$share/results/journal.txt" | tail -n 60
fi
echo "test-vm: $((SECONDS - t0)) s in all"
echo "vm: $p passed, $f failed, $s skipped"
((f == 0))
