#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# What the scripts that run in the guest share (tests/vm/system-suite.sh, bench/guard-guest.sh):
# the places, the test runner and its helpers. Sourced; runs nothing itself.

share=${LOOPMGR_VM_SHARE:-/mnt/share}
user=lmuser
home=/home/$user
agent=/run/lmagent
work=/var/tmp/lmsuite
bus=org.loopmgr.LoopManager1
obj=/org/loopmgr/LoopManager1
iface=org.loopmgr.LoopManager1.Manager
passed=0 failed=0 skipped=0 job=0
export SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C.UTF-8

# ---- helpers -------------------------------------------------------------------------------

die() {
    echo "$*"
    exit 1
}

# run_test NAME FUNCTION: runs FUNCTION in a subshell with errexit; its output is shown only on
# failure. A function that prints "SKIP: why" and exits 77 is counted as skipped.
run_test() {
    local name=$1 fn=$2 out rc t0=$SECONDS
    if [[ -n ${LOOPMGR_VM_TESTS:-} && " $LOOPMGR_VM_TESTS " != *" ${fn#test_} "* ]]; then
        return 0
    fi
    out=$(
        {
            set -eo pipefail
            [[ -z ${LOOPMGR_VM_TRACE:-} ]] || set -x
            "$fn"
        } 2>&1
    )
    rc=$?
    if ((rc == 0)); then
        passed=$((passed + 1))
        echo "ok - $name ($((SECONDS - t0)) s)"
    elif ((rc == 77)); then
        skipped=$((skipped + 1))
        echo "ok - $name # SKIP ${out##*SKIP: }"
    else
        failed=$((failed + 1))
        echo "not ok - $name ($((SECONDS - t0)) s)"
    fi
    if ((rc != 0 && rc != 77)) || [[ -n ${LOOPMGR_VM_VERBOSE:-} ]]; then
        printf '%s\n' "$out" | sed 's/^/#   /'
    fi
}

# wait_for SECONDS COMMAND...: polls COMMAND every 0.2 s until it succeeds.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# in_session SCRIPT: runs SCRIPT (bash) as the user inside the active tty1 session; prints its
# stdout, then its stderr, and returns its exit status.
in_session() {
    # Tests run in subshells: the pid keeps ids unique across them.
    local id=job-$BASHPID-$((++job))
    printf '%s\n' "$1" >"$agent/$id.sh"
    chmod 0644 "$agent/$id.sh"
    timeout 30 bash -c 'echo "$1" >"$2"' _ "$id" "$agent/requests" ||
        die "the session agent does not read its requests"
    wait_for 180 test -e "$agent/$id.rc" || die "the session agent did not answer $id"
    cat "$agent/$id.out"
    cat "$agent/$id.err" >&2
    return "$(cat "$agent/$id.rc")"
}

# outside_session COMMAND...: the same user, from this system service: no session at all.
outside_session() {
    setpriv --reuid="$user" --regid="$user" --init-groups \
        env -i HOME="$home" PATH=/usr/bin:/bin USER="$user" "$@"
}

# expect_fail WANT COMMAND...: COMMAND must fail and its output must contain WANT.
expect_fail() {
    local want=$1 out
    shift
    if out=$("$@" 2>&1); then
        die "expected a failure with '$want', but it succeeded: $out"
    fi
    [[ $out == *"$want"* ]] || die "expected '$want' in: $out"
    echo "  failed as expected: $out"
}

# busctl prints an error's message, not its name: this is the message loopmgrd gives with
# org.freedesktop.DBus.Error.InteractiveAuthorizationRequired (daemon/bus/polkit.c), and with nothing
# else.
no_interaction="but the request does not allow interactive authorisation"

prop() { # prop DEV COLUMN (the lower-case column names of loopmgrctl(1))
    loopmgrctl status --json "$1" | jq -r ".devices[0].\"$2\""
}

daemon_pid() {
    systemctl show -P MainPID loopmgrd.service
}

binding_gone() { # binding_gone NAME DISKSEQ
    [[ ! -e /sys/block/$1/loop/backing_file || $(cat "/sys/block/$1/diskseq") != "$2" ]]
}

image() { # image NAME SIZE-MIB [mkfs.ext4 options]: an ext4 image in $work
    local f=$work/$1
    shift
    local size=$1
    shift
    rm -f "$f"
    truncate -s "${size}M" "$f"
    mkfs.ext4 -q -F "$@" "$f"
    echo "$f"
}


# suite_begin TITLE: a clean work directory, the session agent's request FIFO (and the wait for
# the tty1 login to pick it up), and the package installed: its result is the first test.
suite_begin() {
    echo "# $1 on $(uname -r), $(systemctl is-system-running 2>&1)"
    rm -rf "$work"
    mkdir -p "$work" "$share/results"
    chmod 0755 "$work"

    mkdir -p "$agent"
    chown "$user:$user" "$agent"
    mkfifo -m 0600 "$agent/requests"
    chown "$user:$user" "$agent/requests"
    if wait_for 120 test -e "$agent/ready"; then
        echo "# session agent: $(head -n 1 "$agent/ready")"
        cp "$agent/ready" "$share/results/agent-env.txt"
    else
        echo "# no session agent on tty1: $(loginctl list-sessions --no-legend)"
    fi

    if dpkg -i "$share"/loopmgr_*.deb >"$work/dpkg.log" 2>&1; then
        echo "ok - dpkg -i $(basename "$share"/loopmgr_*.deb)"
        passed=$((passed + 1))
    else
        echo "not ok - dpkg -i"
        sed 's/^/#   /' "$work/dpkg.log"
        failed=$((failed + 1))
    fi
}

# suite_end: what the tests left behind, and the closing line.
suite_end() {
    local left
    left=$(losetup -l -n -O NAME,BACK-FILE | grep -c "$work\|$home" || true)
    echo "# devices left over: $left"
    echo "$passed passed, $failed failed, $skipped skipped"
}
