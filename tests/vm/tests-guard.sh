# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The guard (docs/SECURITY.md, "The guard"): the BPF LSM program of the shipped unit (aliases)
# on the guest's stock kernel, against real losetup, mount -o loop and udisks2, the 32-bit
# ioctl path (loop-ioctl32 from tests/vm/build-helpers.sh, in the share's bin/), and the pins
# across kill -9, restart and stop. Sourced by system-suite.sh.

pins=/sys/fs/bpf/loopmgr
dropin=/run/systemd/system/loopmgrd.service.d

# foreign_devices_of FILE: how many loop devices have FILE as their backing (by inode).
devices_of() {
    losetup -n -O NAME -j "$1" | wc -l
}

guard_prop() { # guard_prop PROPERTY
    busctl get-property "$bus" "$obj" "$iface" "$1" | sed 's/^s "\(.*\)"$/\1/'
}

daemon_up() {
    busctl get-property "$bus" "$obj" "$iface" Version >/dev/null
}

# The unit with a runtime drop-in (guard_unit_set "Environment=LOOPMGR_GUARD=exclusive"), or
# back to the shipped one (guard_unit_set); restarts the daemon either way.
guard_unit_set() {
    rm -rf "$dropin"
    if (($# > 0)); then
        mkdir -p "$dropin"
        printf '[Service]\n%s\n' "$@" >"$dropin/guard-test.conf"
    fi
    systemctl daemon-reload
    systemctl restart loopmgrd.service
    wait_for 20 daemon_up || die "loopmgrd does not answer after the restart"
}

test_guard_in_force() {
    grep -qw bpf /sys/kernel/security/lsm || die "no bpf in $(cat /sys/kernel/security/lsm)"
    daemon_up
    [[ $(guard_prop Guard) == aliases ]] ||
        die "Guard: $(guard_prop Guard), GuardProblem: $(guard_prop GuardProblem)"
    [[ -z $(guard_prop GuardProblem) ]] || die "GuardProblem: $(guard_prop GuardProblem)"
    ls -la "$pins"
    for f in link-ioctl link-ioctl-compat config bases allowed events pending; do
        [[ -e $pins/$f ]] || die "$pins/$f is not pinned"
    done
    journalctl -b -u loopmgrd.service -o cat | grep -F "Guard in force: aliases"
}

# The three commands of the issue: a managed mount, then losetup and mount -o loop of the same
# image. One device, and a refusal.
test_guard_three_commands() {
    local img out n mb=$work/guard-b ma=$work/guard-a
    img=$(image guard3.img 32)
    mkdir -p "$ma" "$mb"
    loopmgrctl mount "$img" "$ma"
    findmnt -n "$ma" >/dev/null || die "loopmgrctl mount did not mount $ma"
    if out=$(losetup -f --show "$img" 2>&1); then
        losetup -d "$out" || true
        die "losetup made a second device over a managed image: $out"
    fi
    echo "losetup: $out"
    [[ $out == *"File exists"* ]] || die "losetup failed otherwise than with EEXIST: $out"
    mount -o loop "$img" "$mb"
    n=$(devices_of "$img")
    losetup -l -j "$img"
    findmnt -n -o SOURCE,TARGET -S "$(findmnt -n -o SOURCE "$ma")"
    umount "$mb"
    ((n == 1)) || die "$n devices over $img after mount -o loop"
    loopmgrctl list
    loopmgrctl list | grep -E "^loop[0-9]+ .*loopmgrd" >/dev/null ||
        die "loopmgrctl list names no creator for the managed device"
    loopmgrctl umount "$ma"
    journalctl -b -u loopmgrd.service -o cat | grep -F "refused (EEXIST, an alias)" | tail -n 2
}

# Foreign devices: an unrelated file attaches, names its creator; its aliases (hard link,
# symlink, bind mount, loop over the device itself) are refused.
test_guard_foreign() {
    local img node out alias mp=$work/guard-bind
    img=$(image guardf.img 16)
    node=$(losetup -f --show "$img") || die "losetup of an unrelated file failed"
    wait_for 10 loopmgrctl status "$node" >/dev/null || die "$node never listed"
    wait_for 5 bash -c "[[ \$(loopmgrctl status --json $node | jq -r '.devices[0].creator') == losetup* ]]" ||
        die "Creator of $node: '$(prop "$node" creator)'"
    echo "Creator of $node: $(prop "$node" creator)"
    [[ $(prop "$node" creator) =~ ^losetup\ \(pid\ [0-9]+,\ uid\ 0\)$ ]] ||
        die "Creator: $(prop "$node" creator)"
    ln -f "$img" "$work/guardf-hard.img"
    ln -sf "$img" "$work/guardf-sym.img"
    mkdir -p "$mp"
    mount --bind "$work" "$mp"
    for alias in "$img" "$work/guardf-hard.img" "$work/guardf-sym.img" "$mp/guardf.img" "$node"; do
        if out=$(losetup -f --show "$alias" 2>&1); then
            losetup -d "$out" || true
            umount "$mp"
            die "losetup of $alias (an alias of $node) made $out"
        fi
        echo "$alias: $out"
        [[ $out == *"File exists"* ]] || { umount "$mp"; die "$alias: $out"; }
    done
    umount "$mp"
    loopmgrctl list | grep -F "losetup (pid" || die "loopmgrctl list does not name losetup"
    losetup -d "$node"
}

test_guard_udisks() {
    local img node out
    systemctl start udisks2.service
    img=$(image guardu.img 16)
    node=$(loopmgrctl attach "$img")
    if out=$(udisksctl loop-setup --no-user-interaction -f "$img" 2>&1); then
        die "udisks2 made a second device: $out"
    fi
    echo "udisksctl: $out"
    (($(devices_of "$img") == 1)) || die "$(devices_of "$img") devices over $img"
    loopmgrctl detach "$node" >/dev/null
}

# The 32-bit path: LOOP_SET_FD and LOOP_CONFIGURE through the compat ioctl hook.
test_guard_compat() {
    local helper=$share/bin/loop-ioctl32 img other node free out
    [[ -x $helper ]] || die "no $helper (tests/vm/build-helpers.sh)"
    img=$(image guardc.img 16)
    other=$(image guardc-other.img 16)
    node=$(loopmgrctl attach "$img")
    for how in set-fd configure; do
        free=$(losetup -f)
        if out=$("$helper" "$how" "$free" "$img" 2>&1); then
            losetup -d "$free" || true
            die "32-bit $how of a managed image bound $free"
        fi
        echo "32-bit $how: $out"
        [[ $out == *"File exists"* ]] || die "32-bit $how: $out"
    done
    # And the compat path does not refuse what it should not.
    free=$(losetup -f)
    "$helper" configure "$free" "$other"
    losetup -d "$free"
    journalctl -b -u loopmgrd.service -o cat | grep -F "(32-bit)" | tail -n 2
    loopmgrctl detach "$node" >/dev/null
}

# kill -9 of the daemon: the pinned guard keeps refusing while no daemon runs; the next one
# takes it over (new program, same maps).
test_guard_kill() {
    local img node pid out before after
    img=$(image guardk.img 16)
    node=$(loopmgrctl attach "$img")
    guard_unit_set "Restart=no"
    before=$(stat -c %i "$pins/link-ioctl")
    pid=$(daemon_pid)
    kill -9 "$pid"
    wait_for 10 bash -c "[[ \$(systemctl show -P MainPID loopmgrd.service) == 0 ]]" ||
        die "loopmgrd $pid still runs"
    [[ -e $pins/link-ioctl ]] || die "the pins went with the daemon"
    if out=$(losetup -f --show "$img" 2>&1); then
        losetup -d "$out" || true
        die "with loopmgrd dead, losetup made $out over a managed image"
    fi
    echo "loopmgrd dead, losetup: $out"
    [[ $out == *"File exists"* ]] || die "losetup: $out"
    guard_unit_set
    [[ $(guard_prop Guard) == aliases ]] || die "after the restart: $(guard_prop GuardProblem)"
    after=$(stat -c %i "$pins/link-ioctl")
    [[ $after != "$before" ]] || die "the new daemon did not replace the pinned link"
    expect_fail "File exists" losetup -f --show "$img"
    loopmgrctl detach "$node" >/dev/null
    journalctl -b -u loopmgrd.service -o cat | grep -F "Guard in force" | tail -n 1
}

# systemctl restart: no moment without the guard; systemctl stop: the guard goes.
test_guard_stop() {
    local img node out
    img=$(image guards.img 16)
    node=$(loopmgrctl attach "$img")
    systemctl restart loopmgrd.service
    [[ -e $pins/link-ioctl ]] || die "systemctl restart removed the guard"
    expect_fail "File exists" losetup -f --show "$img"
    systemctl stop loopmgrd.service
    [[ ! -e $pins ]] || die "systemctl stop left $(ls "$pins")"
    # Detaching an unpinned program is asynchronous.
    wait_for 10 bash -c "out=\$(losetup -f --show $img) && losetup -d \$out" ||
        die "losetup still refused after systemctl stop"
    echo "after systemctl stop, losetup of the managed image works"
    daemon_up
    [[ -e $pins/link-ioctl ]] || die "the next start did not pin the guard"
    loopmgrctl detach "$node" >/dev/null
}

# audit: nothing is refused, not even an alias; every configuration is reported and the
# foreign device has its Creator.
test_guard_audit() {
    local img node other
    guard_unit_set "Environment=LOOPMGR_GUARD=audit"
    [[ $(guard_prop Guard) == audit ]] || die "Guard: $(guard_prop Guard) $(guard_prop GuardProblem)"
    img=$(image guarda.img 16)
    node=$(loopmgrctl attach "$img")
    other=$(losetup -f --show "$img") || { guard_unit_set; die "audit refused losetup"; }
    wait_for 10 bash -c "[[ \$(loopmgrctl status --json $other | jq -r '.devices[0].creator') == losetup* ]]" ||
        { losetup -d "$other"; guard_unit_set; die "Creator of $other: '$(prop "$other" creator)'"; }
    echo "audit: $other made beside $node, Creator $(prop "$other" creator)"
    # An alias made anyway: both name each other, and the daemon says who made it.
    wait_for 10 bash -c "[[ \$(loopmgrctl status --json $node | jq -r '.devices[0].aliases | map(select(. != null)) | length') == 1 ]]" ||
        { losetup -d "$other"; guard_unit_set; die "Aliases of $node: $(prop "$node" aliases)"; }
    [[ $(loopmgrctl status --json "$other" | jq -r '.devices[0].aliases | join(" ")') == "$(prop "$node" object)" ]] ||
        { losetup -d "$other"; guard_unit_set; die "Aliases of $other: $(prop "$other" aliases)"; }
    loopmgrctl list | grep "^${other#/dev/}!" ||
        { losetup -d "$other"; guard_unit_set; die "loopmgrctl list does not mark $other"; }
    journalctl -b -u loopmgrd.service -o cat | grep -F "expose the same data" | tail -n 1 |
        tee "$work/alias-warning.log"
    grep -qF "by losetup (pid" "$work/alias-warning.log" ||
        { losetup -d "$other"; guard_unit_set; die "no warning naming losetup"; }
    losetup -d "$other"
    journalctl -b -u loopmgrd.service -o cat | grep -F "LOOP_CONFIGURE on ${other#/dev/}" |
        tail -n 1 | tee "$work/audit.log"
    grep -q ": passed$" "$work/audit.log" || { guard_unit_set; die "no report of the bind"; }
    loopmgrctl detach "$node" >/dev/null
    guard_unit_set
}

# A daemon that cannot load the guard (here: bpf(2) denied by a drop-in) runs unguarded, says
# why, and removes the guard an earlier daemon pinned, which it can neither keep nor pass.
test_guard_unavailable() {
    local img node problem
    [[ -e $pins/link-ioctl ]] || die "no guard pinned before the test"
    guard_unit_set "SystemCallFilter=~bpf"
    problem=$(guard_prop GuardProblem)
    echo "Guard: $(guard_prop Guard), GuardProblem: $problem"
    [[ $(guard_prop Guard) == off && $problem == "loading the BPF LSM program failed: Operation not permitted" ]] ||
        { guard_unit_set; die "unexpected Guard/GuardProblem"; }
    [[ ! -e $pins/link-ioctl ]] || { guard_unit_set; die "the earlier guard stayed pinned"; }
    journalctl -b -u loopmgrd.service -o cat | grep -F "is not in force, running unguarded" | tail -n 1
    img=$(image guardn.img 16)
    node=$(loopmgrctl attach "$img") || { guard_unit_set; die "an unguarded daemon does not attach"; }
    loopmgrctl detach "$node" >/dev/null
    guard_unit_set
    [[ $(guard_prop Guard) == aliases && -e $pins/link-ioctl ]] || die "the guard did not come back"
}

# What scripts do: losetup -d, then at once losetup -f of the same file, 30 times. Each bind
# passes: the map names the file until loopmgrd has seen the device go, but the program asks the
# kernel (the backing's page cache has its gfp mask back), and a teardown that udev's probe
# delays for a moment is EBUSY, on which losetup tries again. A second device while the first is
# bound is refused.
test_guard_cycles() {
    local img dev other i
    img=$(image guardc.img 16)
    for ((i = 0; i < 30; i++)); do
        dev=$(losetup -f --show "$img") || die "cycle $i: losetup -f failed"
        losetup -d "$dev"
    done
    dev=$(losetup -f --show "$img")
    wait_for 10 loopmgrctl status "$dev" >/dev/null || die "$dev never listed"
    if other=$(losetup -f --show "$img" 2>&1); then
        losetup -d "$other" "$dev"
        die "a second device over the file while $dev is bound: $other"
    fi
    [[ $other == *"File exists"* ]] || die "second device: $other"
    losetup -d "$dev"
    echo "30 cycles, then the second device refused: $other"
}

# ms_since START_NS
ms_since() {
    echo $((($(date +%s%N) - $1) / 1000000))
}

# losetup -d of a device that a process holds open leaves it bound until that close. A losetup
# -f of its file meanwhile is refused with EBUSY (the device is going), which losetup meets by
# trying again every 200 ms: it waits for the close, then binds. A mounted device is not going:
# the same losetup -f is refused with "File exists", at once.
test_guard_deferred() {
    local img dev other t0 took holder fd mnt=$work/guard-deferred
    img=$(image guardd.img 16)
    dev=$(losetup -f --show "$img")
    wait_for 10 loopmgrctl status "$dev" >/dev/null || die "$dev never listed"
    exec {fd}<"$dev"
    sleep 3 &
    holder=$!
    exec {fd}<&-
    losetup -d "$dev"
    [[ -e /sys/block/${dev#/dev/}/loop/backing_file ]] || die "$dev went at once, unheld"
    t0=$(date +%s%N)
    other=$(losetup -f --show "$img") || { wait $holder; die "losetup -f during the teardown failed"; }
    took=$(ms_since "$t0")
    wait $holder
    # The old device went at the close; the new one may be the same number (the lowest free).
    (($(devices_of "$img") == 1)) || { losetup -l; die "$(devices_of "$img") devices over $img"; }
    ((took >= 1000)) || { losetup -d "$other"; die "$other was bound beside $dev (after $took ms)"; }
    echo "losetup -f waited $took ms for $dev to go, then made $other"
    wait_for 10 loopmgrctl status "$other" >/dev/null || die "$other never listed"
    journalctl -u loopmgrd.service -o cat | grep -F "EBUSY, the device over it is going" | tail -n 1 ||
        die "no EBUSY refusal in the journal"
    mkdir -p "$mnt"
    mount "$other" "$mnt"
    losetup -d "$other"
    [[ -e /sys/block/${other#/dev/}/loop/backing_file ]] || { umount "$mnt"; die "mounted $other went"; }
    t0=$(date +%s%N)
    if dev=$(losetup -f --show "$img" 2>&1); then
        losetup -d "$dev"
        umount "$mnt"
        die "a device beside the mounted $other: $dev"
    fi
    took=$(ms_since "$t0")
    umount "$mnt"
    echo "beside the mounted $other, after $took ms: $dev"
    [[ $dev == *"File exists"* ]] || die "beside the mounted device: $dev"
    ((took < 5000)) || die "the refusal took $took ms"
    wait_for 10 test ! -e "/sys/block/${other#/dev/}/loop/backing_file" || die "$other stays bound"
}

# The map behind the kernel: loopmgrd stopped (SIGSTOP) while losetup -d takes a device away,
# so its map still names the file. The next bind passes all the same (the kernel says no device
# is over it), and the daemon reports it once it runs again.
test_guard_stale() {
    local img dev other pid
    img=$(image guards.img 16)
    dev=$(losetup -f --show "$img")
    wait_for 10 loopmgrctl status "$dev" >/dev/null || die "$dev never listed"
    pid=$(daemon_pid)
    kill -STOP "$pid"
    trap 'kill -CONT '"$pid" EXIT
    losetup -d "$dev"
    wait_for 10 test ! -e "/sys/block/${dev#/dev/}/loop/backing_file" || die "$dev stays bound"
    other=$(losetup -f --show "$img") || die "losetup -f with the map behind failed"
    kill -CONT "$pid"
    trap - EXIT
    wait_for 10 loopmgrctl status "$other" >/dev/null || die "$other never listed"
    wait_for 10 sh -c 'journalctl -u loopmgrd.service -o cat | grep -qF "passed (the device over it is gone)"' ||
        die "no stale pass in the journal"
    journalctl -u loopmgrd.service -o cat | grep -F "passed (the device over it is gone)" | tail -n 1
    expect_fail "File exists" losetup -f --show "$img"
    losetup -d "$other"
}

# An upgrade (dpkg -i: the maintainer scripts try-restart the unit) swaps the program: the
# links are replaced, the guard never goes.
test_guard_upgrade() {
    local img node before
    img=$(image guardup.img 16)
    node=$(loopmgrctl attach "$img")
    before=$(stat -c %i "$pins/link-ioctl")
    dpkg -i "$share"/loopmgr_*.deb >/dev/null
    [[ -e $pins/link-ioctl ]] || die "the upgrade removed the guard"
    [[ $(stat -c %i "$pins/link-ioctl") != "$before" ]] || die "the upgrade did not replace the link"
    [[ $(guard_prop Guard) == aliases ]] || die "after the upgrade: $(guard_prop GuardProblem)"
    expect_fail "File exists" losetup -f --show "$img"
    loopmgrctl detach "$node" >/dev/null
}

test_guard_exclusive() {
    local img out node
    guard_unit_set "Environment=LOOPMGR_GUARD=exclusive"
    [[ $(guard_prop Guard) == exclusive ]] || die "Guard: $(guard_prop Guard) $(guard_prop GuardProblem)"
    img=$(image guardx.img 16)
    if out=$(losetup -f --show "$img" 2>&1); then
        losetup -d "$out" || true
        guard_unit_set
        die "losetup made $out in exclusive mode"
    fi
    echo "exclusive, losetup: $out"
    [[ $out == *"Operation not permitted"* ]] || { guard_unit_set; die "losetup: $out"; }
    out=$("$share/bin/loop-ioctl32" set-fd "$(losetup -f)" "$img" 2>&1) && {
        guard_unit_set
        die "32-bit LOOP_SET_FD passed in exclusive mode"
    }
    echo "exclusive, 32-bit: $out"
    node=$(loopmgrctl attach "$img") || { guard_unit_set; die "loopmgrd could not attach"; }
    loopmgrctl detach "$node" >/dev/null
    if command -v loopmgr-losetup >/dev/null; then
        node=$(loopmgr-losetup -f --show "$img") || { guard_unit_set; die "loopmgr-losetup failed"; }
        loopmgr-losetup -d "$node" || true
    else
        echo "no loopmgr-losetup in this package: that part is left out"
    fi
    guard_unit_set
    [[ $(guard_prop Guard) == aliases ]] || die "back to the shipped unit: $(guard_prop Guard)"
}

# The unit's exposure, as shipped and without what the guard added (bpf(2) allowed).
test_guard_security_figures() {
    local d=$work/unit-before
    mkdir -p "$d"
    grep -v -e '^SystemCallFilter=bpf$' -e '^ExecStopPost=' -e '^Environment=LOOPMGR_GUARD' \
        /lib/systemd/system/loopmgrd.service >"$d/loopmgrd.service"
    {
        echo "running unit: $(systemd-analyze security --no-pager loopmgrd.service | tail -n 1)"
        echo "offline, as shipped: $(systemd-analyze security --no-pager --offline=true \
            /lib/systemd/system/loopmgrd.service 2>&1 | tail -n 1)"
        echo "offline, without the guard's lines: $(systemd-analyze security --no-pager \
            --offline=true "$d/loopmgrd.service" 2>&1 | tail -n 1)"
        diff <(systemd-analyze security --no-pager --offline=true "$d/loopmgrd.service" 2>&1) \
            <(systemd-analyze security --no-pager --offline=true \
                /lib/systemd/system/loopmgrd.service 2>&1) || true
    } | tee "$share/results/guard-security.txt"
    grep -q "Overall exposure" "$share/results/guard-security.txt" || die "no figures"
}

run_test "guard: in force with the shipped unit" test_guard_in_force
run_test "guard: loopmgrctl mount, losetup, mount -o loop: one device" test_guard_three_commands
run_test "guard: foreign device, its aliases refused, Creator" test_guard_foreign
run_test "guard: losetup -d and at once losetup -f of the same file" test_guard_cycles
run_test "guard: a deferred teardown: EBUSY, then the bind; mounted: File exists" test_guard_deferred
run_test "guard: the map behind the kernel: the bind passes" test_guard_stale
run_test "guard: udisks2 loop-setup of a managed image" test_guard_udisks
run_test "guard: the 32-bit ioctl path" test_guard_compat
run_test "guard: kill -9 keeps it, the next daemon takes it over" test_guard_kill
run_test "guard: restart keeps it, stop removes it" test_guard_stop
run_test "guard: an upgrade swaps the program without a gap" test_guard_upgrade
run_test "guard: exclusive" test_guard_exclusive
run_test "guard: audit" test_guard_audit
run_test "guard: unavailable, the daemon runs unguarded" test_guard_unavailable
run_test "guard: systemd-analyze security" test_guard_security_figures
