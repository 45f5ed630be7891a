#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The system suite: runs inside the guest that tools/test-vm.sh boots (a stock Debian 12 with
# systemd as PID 1), as root in loopmgr-vm.service (a system service: no login session),
# against the installed loopmgr package. Each test prints "ok - NAME" or "not ok - NAME"
# followed by what went wrong ("#   " lines); the last line is "N passed, N failed, N skipped".
#
# Images come from the share (made on the host by tools/test-vm.sh: a GPT and an MBR disk
# image, a vfat image, an iso9660 image) or are made here in $work. Commands of the logged-in
# user's active tty1 session go through the session agent (tests/vm/session-agent.sh);
# commands of the same user outside any session are run with setpriv from this service.

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---- the tests -------------------------------------------------------------------------------

test_package() {
    dpkg-query -W -f='${Status} ${Version}\n' loopmgr | grep -q 'install ok installed' ||
        die "loopmgr is not installed"
    for f in /usr/libexec/loopmgrd /usr/bin/loopmgrctl /lib/systemd/system/loopmgrd.service \
        /usr/share/dbus-1/system-services/org.loopmgr.LoopManager1.service \
        /usr/share/dbus-1/system.d/org.loopmgr.LoopManager1.conf \
        /usr/share/polkit-1/actions/org.loopmgr.policy /lib/udev/rules.d/90-loopmgr.rules \
        /usr/share/applications/loopmgr-open.desktop /usr/share/man/man1/loopmgrctl.1.gz \
        /usr/share/man/man8/loopmgrd.8.gz; do
        [[ -e $f ]] || die "the package did not install $f"
    done
    pkaction --action-id org.loopmgr.attach >/dev/null || die "polkitd does not know org.loopmgr.attach"
}

test_activation() {
    local state pid
    state=$(systemctl show -P ActiveState loopmgrd.service)
    [[ $state == inactive ]] || die "loopmgrd.service is $state before any call (expected inactive)"
    busctl get-property "$bus" "$obj" "$iface" Version >/dev/null || die "Version could not be read"
    state=$(systemctl show -P ActiveState loopmgrd.service)
    [[ $state == active ]] || die "after the first call loopmgrd.service is $state"
    pid=$(daemon_pid)
    [[ $(readlink "/proc/$pid/exe") == /usr/libexec/loopmgrd ]] || die "MainPID $pid is not loopmgrd"
    systemctl status --no-pager loopmgrd.service
    # The sandbox, as the kernel applies it.
    grep -q '^NoNewPrivs:[[:space:]]*1' "/proc/$pid/status" || die "NoNewPrivs is not set"
    grep -q '^Seccomp:[[:space:]]*2' "/proc/$pid/status" || die "no seccomp filter"
    # CAP_DAC_OVERRIDE (1), CAP_MKNOD (27), CAP_SYS_ADMIN (21): 0x8200002
    grep -q '^CapBnd:[[:space:]]*0000000008200002' "/proc/$pid/status" ||
        die "bounding set: $(grep CapBnd "/proc/$pid/status")"
    [[ $(cat "/proc/$pid/cgroup") == *loopmgrd.service* ]] || die "not in loopmgrd.service's cgroup"
    stat -c '%a %U' /run/loopmgr | grep -qx '700 root' || die "/run/loopmgr: $(stat -c '%a %U' /run/loopmgr)"
    # The shipped policy lets everyone read.
    outside_session busctl get-property "$bus" "$obj" "$iface" Version >/dev/null ||
        die "an unprivileged user cannot read Version"
}

test_attach_fd_and_path() {
    local img node node2 state
    img=$(image fdpath.img 32)
    node=$(loopmgrctl attach "$img")
    [[ -b $node ]] || die "attach printed '$node'"
    [[ $(cat "/sys/block/${node#/dev/}/loop/backing_file") == "$img" ]] || die "wrong backing file"
    [[ $(prop "$node" managed) == true ]] || die "not managed"
    # The same file by path: the identical device comes back.
    node2=$(busctl call "$bus" "$obj" "$iface" AttachPath 'sa{sv}' "$img" 0 | awk '{print $3}')
    [[ $node2 == "\"$node\"" ]] || die "AttachPath gave $node2, not the same $node"
    [[ $(prop "$node" refs) == 2 ]] || die "References: $(prop "$node" refs)"
    state=$(loopmgrctl detach "$node")
    [[ $state == attached ]] || die "first detach: $state"
    state=$(loopmgrctl detach "$node")
    [[ $state == detached ]] || die "second detach: $state"
    # losetup beside it: a foreign device the daemon lists but does not own.
    node2=$(losetup -f --show "$img")
    wait_for 10 loopmgrctl status "$node2" >/dev/null || die "foreign $node2 never listed"
    [[ $(prop "$node2" managed) == false ]] || die "foreign device is managed"
    losetup -d "$node2"
}

test_deferred_teardown() {
    local img node name seq state
    img=$(image deferred.img 32)
    node=$(loopmgrctl attach "$img")
    name=${node#/dev/}
    seq=$(cat "/sys/block/$name/diskseq")
    exec 3<"$node"
    state=$(loopmgrctl detach "$node")
    [[ $state == pending ]] || die "detach of an open device: $state (expected pending)"
    [[ $(prop "$node" state) == detach-pending ]] || die "State: $(prop "$node" state)"
    exec 3<&-
    wait_for 20 binding_gone "$name" "$seq" || die "the binding stayed after the last close"
    wait_for 10 bash -c "! loopmgrctl status $node >/dev/null 2>&1" ||
        die "the object stayed after the teardown"
}

test_loop_over_loop() {
    local img lower upper again state n
    img=$(image stacked.img 32)
    lower=$(loopmgrctl attach "$img")
    # All of the lower device would be its alias (the same bytes): the daemon hands it back.
    again=$(loopmgrctl attach "$lower")
    [[ $again == "$lower" ]] || die "all of $lower again gave $again"
    loopmgrctl detach "$lower" >/dev/null
    upper=$(loopmgrctl attach --offset=1M "$lower")
    [[ $upper != "$lower" && -b $upper ]] || die "loop over loop gave '$upper'"
    loopmgrctl status "$upper" | grep -F "$img" || die "the chain of $upper does not end at $img"
    # The same bytes through the other layer: the image at 1 MiB is what $upper shows.
    again=$(loopmgrctl attach --offset=1M "$img")
    [[ $again == "$upper" ]] || die "the image at 1 MiB gave $again, not $upper"
    loopmgrctl detach "$upper" >/dev/null
    loopmgrctl detach "$upper" >/dev/null
    # pending when an opener (udev probing the upper device's teardown) still holds the lower
    # one for a moment; the teardown completes by itself.
    state=$(loopmgrctl detach --recursive "$lower")
    [[ $state == detached || $state == pending ]] || die "recursive detach: $state"
    for n in "$upper" "$lower"; do
        wait_for 10 bash -c "! loopmgrctl status $n >/dev/null 2>&1" || die "$n stayed"
    done
}

# The kernel's own partition scan (the host kernel has no partition-table parsers).
partitioned() { # partitioned IMAGE-NAME LABEL-TYPE
    local img=$work/$1 node name p n out
    cp "$share/images/$1" "$img"
    node=$(loopmgrctl attach --partscan "$img")
    name=${node#/dev/}
    wait_for 10 test -b "/dev/${name}p2" || die "no ${name}p1/p2 after the partition scan: $(ls /dev/"$name"*)"
    [[ $(blkid -o value -s PTTYPE "$node") == "$2" ]] || die "partition table: $(blkid "$node")"
    # Each partition maps to its range of the image, so the same bytes are refused.
    p=$(cat "/sys/block/$name/${name}p1/start")
    n=$(cat "/sys/block/$name/${name}p1/size")
    loopmgrctl resolve "/dev/${name}p1" | grep -F "bytes $((p * 512))+$((n * 512)) of $img" ||
        die "resolve does not map ${name}p1 to its bytes of $img"
    expect_fail "a second device over the same data would corrupt it" \
        loopmgrctl attach --offset=$((p * 512)) --size-limit=$((n * 512)) "$img"
    # pending when udev is still probing the partitions' file systems: torn down at its close.
    out=$(loopmgrctl detach "$node")
    [[ $out == detached || $out == pending ]] || die "detach of the partitioned device: $out"
    wait_for 10 bash -c "[[ ! -e /dev/${name}p1 ]]" || die "${name}p1 stayed after the detach"
    wait_for 10 bash -c "! losetup -j '$img' | grep -q ." || die "$node stayed after the detach"
}
test_partitions_gpt() { partitioned gpt.img gpt; }
test_partitions_mbr() { partitioned mbr.img dos; }

test_mount_run_media() {
    local img mp
    img=$(image media.img 32 -L rootmedia)
    mp=$(loopmgrctl open --writable "$img")
    [[ $mp == /run/media/root/rootmedia ]] || die "open printed '$mp'"
    findmnt -n -o OPTIONS "$mp" | grep -q nosuid || die "not nosuid: $(findmnt "$mp")"
    touch "$mp/written"
    loopmgrctl close "$img"
    [[ ! -e $mp ]] || die "$mp stayed after close"
}

# The daemon binds through a private node (/dev/.loopmgr-loopN-PID), so udev gets no
# synthesised change event from the close of the daemon's fd; inside the unit that needs
# CAP_MKNOD and DeviceAllow=block-loop m. Without them the daemon falls back to /dev/loopN,
# whose close makes udev synthesise a change (SYNTH_UUID=0). A partition scan always takes that
# locked way (daemon/kernel/loop-kernel.c): that attach is the control, showing that the check sees a
# synthesised event when there is one.
synthesised_changes() { # synthesised_changes ATTACH-OPTIONS...: attaches; prints "NODE COUNT"
    local img=$work/private.img node mon
    rm -f "$img"
    truncate -s 32M "$img"
    udevadm monitor --udev --property --subsystem-match=block >"$work/monitor.log" 2>&1 </dev/null &
    mon=$!
    # Gone however the test ends (and not on the test's output pipe, above).
    trap "kill $mon 2>/dev/null || true" EXIT
    sleep 1
    node=$(loopmgrctl attach "$@" "$img")
    sleep 2
    kill "$mon"
    wait "$mon" 2>/dev/null || true
    grep -q "^DEVNAME=$node\$" "$work/monitor.log" || die "udev announced nothing for $node"
    loopmgrctl detach "$node" >/dev/null
    echo "$node $(awk -v n="DEVNAME=$node" '/^UDEV/ {d = 0; s = 0} $0 == n {d = 1}
        /^SYNTH_UUID=/ {s = 1} /^$/ {if (d && s) c++; d = 0; s = 0} END {print c + 0}' \
        "$work/monitor.log")"
}
test_private_node() {
    local quiet locked
    quiet=$(synthesised_changes)
    locked=$(synthesised_changes --partscan)
    echo "synthesised change events: quiet attach ${quiet#* }, locked (partscan) ${locked#* }"
    ((${locked#* } > 0)) || die "the control saw no synthesised change: the check is blind"
    ((${quiet#* } == 0)) ||
        die "udev synthesised a change of ${quiet% *}: the daemon could not bind through a private node"
    if ls /dev/.loopmgr-* 2>/dev/null; then
        die "a private node was left behind"
    fi
}

test_restart() {
    local img node pid1 pid2 n1 n2
    img=$(image restart.img 32)
    node=$(in_session "loopmgrctl attach $img") || die "the session user could not attach"
    [[ $(prop "$node" uid) == 1000 ]] || die "OwnerUID: $(prop "$node" uid)"
    pid1=$(daemon_pid)
    systemctl restart loopmgrd.service
    pid2=$(daemon_pid)
    [[ $pid2 != "$pid1" && $pid2 != 0 ]] || die "systemctl restart did not start a new daemon"
    [[ $(prop "$node" uid) == 1000 && $(prop "$node" managed) == true ]] ||
        die "after restart: OwnerUID $(prop "$node" uid), Managed $(prop "$node" managed)"
    [[ $(prop "$node" refs) == 1 ]] || die "after restart: References $(prop "$node" refs)"
    n1=$(systemctl show -P NRestarts loopmgrd.service)
    kill -9 "$pid2"
    wait_for 30 bash -c '[[ $(systemctl show -P MainPID loopmgrd.service) != '"$pid2"' &&
        $(systemctl show -P ActiveState loopmgrd.service) == active ]]' ||
        die "no restart after kill -9: $(systemctl status --no-pager loopmgrd.service)"
    n2=$(systemctl show -P NRestarts loopmgrd.service)
    ((n2 == n1 + 1)) || die "NRestarts $n1 -> $n2"
    [[ $(prop "$node" uid) == 1000 && $(prop "$node" refs) == 1 ]] ||
        die "after kill -9: OwnerUID $(prop "$node" uid), References $(prop "$node" refs)"
    in_session "loopmgrctl detach $node" | grep -qx detached || die "the owner could not detach"
}

# polkit's defaults from the action file, with no rule added: attach and mount are "yes" for
# the active local session, everything is auth_admin outside one.
test_polkit_active_session() {
    local out img mp
    in_session 'loginctl show-session "$XDG_SESSION_ID" -p Active -p Seat -p Type -p Class' |
        tee "$work/session" | grep -qx 'Active=yes' || die "tty1 session: $(cat "$work/session")"
    img=$(in_session 'truncate -s 32M s.img && /sbin/mkfs.ext4 -q -L usermedia s.img && echo ~/s.img')
    out=$(in_session "loopmgrctl --no-ask-password attach $img") || die "attach in the session: $out"
    in_session "loopmgrctl --no-ask-password detach $out" | grep -qx detached || die "detach"
    mp=$(in_session "loopmgrctl --no-ask-password open $img") || die "open in the session: $mp"
    [[ $mp == /run/media/$user/usermedia ]] || die "open printed '$mp'"
    in_session "ls -la '$mp'" | grep -q lost+found || die "the user cannot list $mp"
    in_session "loopmgrctl --no-ask-password close $img" || die "close in the session"
    [[ ! -e $mp ]] || die "$mp stayed after close"
    # attach-path is auth_admin_keep even in the session: a password, which nobody may ask for.
    expect_fail "$no_interaction" in_session \
        "busctl --allow-interactive-authorization=no call $bus $obj $iface AttachPath 'sa{sv}' $img 0"
}

test_polkit_outside_session() {
    local img
    img=$(in_session 'truncate -s 32M o.img && /sbin/mkfs.ext4 -q o.img && echo ~/o.img')
    expect_fail "$no_interaction" outside_session \
        busctl --allow-interactive-authorization=no call "$bus" "$obj" "$iface" AttachPath \
        'sa{sv}' "$img" 0
    # loopmgrctl passes its fd (Attach): org.loopmgr.attach is auth_admin here, and no agent
    # runs for the user.
    expect_fail "$no_interaction" outside_session loopmgrctl --no-ask-password attach "$img"
    expect_fail "$no_interaction" outside_session loopmgrctl --no-ask-password open "$img"
    ! losetup -j "$img" | grep -q . || die "a device was made: $(losetup -j "$img")"
}

# open/close of images the host kernel cannot mount, in the session, as a desktop would.
open_in_session() { # open_in_session IMAGE-NAME CHECK-SCRIPT
    local img=$home/$1 mp out node
    cp "$share/images/$1" "$img"
    chown "$user:$user" "$img"
    mp=$(in_session "loopmgrctl --no-ask-password open --writable $img 2>&1 ||
                     loopmgrctl --no-ask-password open $img") || die "open $1: $mp"
    mp=$(tail -n 1 <<<"$mp")
    [[ $mp == /run/media/$user/* ]] || die "open $1 printed '$mp'"
    node=$(findmnt -n -o SOURCE --mountpoint "$mp")
    out=$(in_session "cd '$mp' && $2") || die "in $mp: $out"
    echo "$out"
    in_session "loopmgrctl --no-ask-password close '$mp'" || die "close $mp"
    [[ ! -e $mp ]] || die "$mp stayed after close"
    wait_for 10 bash -c "! loopmgrctl status $node >/dev/null 2>&1" || die "$node stayed after close"
}

test_open_vfat() {
    # vfat has no owners: the daemon mounts it with uid=/gid= of the user.
    open_in_session vfat.img 'cat hello.txt; stat -c "%U %G" .; touch mine && stat -c %U mine' |
        tee "$work/vfat" | grep -qx "hello from vfat" || die "hello.txt: $(cat "$work/vfat")"
    grep -qx "$user $user" "$work/vfat" || die "not owned by $user: $(cat "$work/vfat")"
}

test_open_iso9660() {
    modprobe -n iso9660 2>/dev/null || modinfo isofs >/dev/null || die "no iso9660 in this kernel"
    open_in_session cd.iso 'cat README.TXT; ls -la' | tee "$work/iso" |
        grep -qx "hello from iso9660" || die "README.TXT: $(cat "$work/iso")"
}

# open of a whole-disk image: every partition holding a file system is mounted, one mount point
# a line in partition order; close (by the image, or by one of the mount points) unmounts all of
# them and the device and its partitions go.
open_partitioned() { # open_partitioned IMAGE-NAME LABEL-PREFIX image|mount-point
    local img=$home/$1 mp1=/run/media/$user/${2}1 mp2=/run/media/$user/${2}2 out mp node name by
    cp "$share/images/$1" "$img"
    chown "$user:$user" "$img"
    out=$(in_session "loopmgrctl --no-ask-password open $img") || die "open $1: $out"
    [[ $out == "$mp1"$'\n'"$mp2" ]] || die "open $1 printed '$out'"
    node=$(findmnt -n -o SOURCE --mountpoint "$mp1")
    [[ $node == /dev/loop*p1 ]] || die "$mp1 is mounted from '$node'"
    name=${node#/dev/}
    name=${name%p1}
    [[ $(findmnt -n -o SOURCE --mountpoint "$mp2") == "/dev/${name}p2" ]] ||
        die "$mp2: $(findmnt --mountpoint "$mp2")"
    # One session job for both (the guest is slow): the listings, then the files.
    out=$(in_session "ls '$mp1' '$mp2' && cat '$mp1/hello.txt' '$mp2/hello.txt'") ||
        die "the user cannot read $mp1 and $mp2: $out"
    echo "$out"
    (($(grep -cx hello.txt <<<"$out") == 2)) || die "hello.txt is not listed in both"
    grep -qx "hello from ${1%.img} partition 1" <<<"$out" || die "$mp1/hello.txt is wrong"
    grep -qx "hello from ${1%.img} partition 2" <<<"$out" || die "$mp2/hello.txt is wrong"
    by=$img
    [[ $3 == image ]] || by=$mp2
    in_session "loopmgrctl --no-ask-password close '$by'" || die "close $by"
    for mp in "$mp1" "$mp2"; do
        ! findmnt --mountpoint "$mp" >/dev/null || die "$mp is still mounted after close"
        [[ ! -e $mp ]] || die "$mp stayed after close"
    done
    wait_for 10 bash -c "! losetup -j '$img' | grep -q ." || die "a device stayed: $(losetup -j "$img")"
    wait_for 10 bash -c "! ls -d /sys/block/$name/${name}p* >/dev/null 2>&1" ||
        die "partitions of $name stayed: $(ls -d /sys/block/"$name"/"$name"p*)"
}
test_open_partitioned() { open_partitioned gpt.img LMGPT image; }
test_open_partitioned_mbr() { open_partitioned mbr.img LMMBR mount-point; }

test_udev_properties() {
    local img node info
    img=$(in_session 'truncate -s 32M u.img && /sbin/mkfs.ext4 -q u.img && echo ~/u.img')
    node=$(in_session "loopmgrctl --no-ask-password attach $img")
    info=$(udevadm info --query=property "$node")
    grep -qx LOOPMGR_MANAGED=1 <<<"$info" || die "no LOOPMGR_MANAGED=1: $info"
    grep -qx LOOPMGR_OWNER_UID=1000 <<<"$info" || die "no LOOPMGR_OWNER_UID=1000: $info"
    grep -qx "LOOPMGR_OWNER=$user" <<<"$info" || die "no LOOPMGR_OWNER=$user: $info"
    in_session "loopmgrctl detach $node" >/dev/null
}

test_udisks_beside() {
    local img mp node n
    systemctl start udisks2.service
    [[ $(systemctl show -P ActiveState udisks2.service) == active ]] || die "udisks2 does not run"
    img=$(in_session 'truncate -s 32M d.img && /sbin/mkfs.ext4 -q -L besideudisks d.img && echo ~/d.img')
    mp=$(in_session "loopmgrctl --no-ask-password open $img") || die "open with udisks2: $mp"
    node=$(findmnt -n -o SOURCE --mountpoint "$mp")
    sleep 2
    n=$(findmnt -rn -S "$node" | wc -l)
    ((n == 1)) || die "$node is mounted $n times: $(findmnt -S "$node")"
    udisksctl info -b "$node" | grep -q "MountPoints:.*$mp" || die "udisks2 does not see $mp"
    in_session "loopmgrctl --no-ask-password close $img" || die "close with udisks2 running"
    wait_for 10 bash -c "! loopmgrctl status $node >/dev/null 2>&1" || die "$node stayed"
    systemctl is-active udisks2.service >/dev/null || die "udisks2 stopped"
    # And the other way round: a device udisks2 makes is one loopmgrd lists as foreign.
    node=$(udisksctl loop-setup --no-user-interaction -f "$img" | grep -o '/dev/loop[0-9]*')
    wait_for 10 loopmgrctl status "$node" >/dev/null || die "udisks2's $node is not listed"
    [[ $(prop "$node" managed) == false ]] || die "udisks2's $node counts as managed"
    udisksctl loop-delete --no-user-interaction -b "$node"
}

test_security_report() {
    systemd-analyze security --no-pager loopmgrd.service >"$share/results/security.txt" 2>&1 || true
    tail -n 1 "$share/results/security.txt"
    grep -q 'Overall exposure level for loopmgrd.service' "$share/results/security.txt" ||
        die "$(cat "$share/results/security.txt")"
}

# The maintainer scripts: a reinstall (what an upgrade runs) restarts a running daemon, which
# keeps its records; removal stops it and takes the files away.
test_maintainer_scripts() {
    local img node pid1 pid2
    img=$(image upgrade.img 32)
    node=$(loopmgrctl attach "$img")
    pid1=$(daemon_pid)
    dpkg -i "$share"/loopmgr_*.deb >/dev/null
    pid2=$(daemon_pid)
    [[ $pid2 != 0 && $pid2 != "$pid1" ]] || die "the upgrade did not restart loopmgrd ($pid1 -> $pid2)"
    [[ $(prop "$node" managed) == true ]] || die "$node is not managed after the upgrade"
    [[ $(loopmgrctl detach "$node") == detached ]] || die "detach after the upgrade"
    dpkg -r loopmgr >/dev/null
    [[ $(systemctl show -P ActiveState loopmgrd.service) != active ]] || die "loopmgrd still runs"
    [[ ! -e /usr/libexec/loopmgrd ]] || die "/usr/libexec/loopmgrd stayed"
    expect_fail "not provided by any .service files" busctl get-property "$bus" "$obj" "$iface" Version
    dpkg -i "$share"/loopmgr_*.deb >/dev/null
    busctl get-property "$bus" "$obj" "$iface" Version >/dev/null || die "not activatable again"
}

# ---- main --------------------------------------------------------------------------------------

suite_begin "system suite"

run_test "package files in place" test_package
run_test "D-Bus activation starts loopmgrd.service in its sandbox" test_activation
run_test "attach by fd and by path, detach" test_attach_fd_and_path
run_test "detach of an open device is pending, then torn down" test_deferred_teardown
run_test "loop over loop, recursive detach" test_loop_over_loop
run_test "partitions of a GPT image (kernel scan)" test_partitions_gpt
run_test "partitions of an MBR image (kernel scan)" test_partitions_mbr
run_test "Mount under /run/media" test_mount_run_media
run_test "bind through the private node" test_private_node
run_test "state survives systemctl restart and kill -9" test_restart
run_test "polkit defaults: the active tty1 session" test_polkit_active_session
run_test "polkit defaults: the same user outside a session" test_polkit_outside_session
run_test "open and close a vfat image" test_open_vfat
run_test "open and close an iso9660 image" test_open_iso9660
run_test "open and close a whole-disk (GPT) image" test_open_partitioned
run_test "open a whole-disk (MBR) image, close by a mount point" test_open_partitioned_mbr
run_test "udev rule: LOOPMGR_ properties" test_udev_properties
run_test "udisks2 beside loopmgrd" test_udisks_beside
run_test "systemd-analyze security" test_security_report
# Further tests of one subject each: tests/vm/tests-*.sh define test_* functions and call
# run_test, like the ones above (with the package installed and the daemon activatable). The
# maintainer-script test goes last: it removes and reinstalls the package.
for f in "$share"/tests-*.sh; do
    [[ -e $f ]] || continue
    echo "# $(basename "$f")"
    . "$f"
done
run_test "upgrade restarts the daemon, removal stops it" test_maintainer_scripts

suite_end
