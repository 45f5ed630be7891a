#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# tests/env.sh: the environment loopmgrd needs, on a machine where nothing runs at boot.
#
#   tests/env.sh start                      private system bus + udevd + polkitd
#   tests/env.sh stop                       stop what `start` (and start-daemon) started
#   tests/env.sh status                     what runs; exit 0 when the environment is up, 3 if not
#   tests/env.sh env                        print the variables to export (exit 3 when not up)
#   tests/env.sh start-daemon BUILD [ARG..] (re)start BUILD/loopmgrd on the private bus
#   tests/env.sh stop-daemon                stop that daemon
#
# Run it, don't source it. `start` and `env` print shell assignments on stdout and everything
# else on stderr, so a shell picks the private bus up with
#
#   eval "$(tests/env.sh start)"      # or: export DBUS_SYSTEM_BUS_ADDRESS=$(cat /run/loopmgr-test/bus-address)
#
# Instances: LOOPMGR_TEST_ENV names the state directory (default /run/loopmgr-test). Each
# instance has its own dbus-daemon and polkitd, so tools/test.sh (/run/loopmgr-ci) and the
# demo of tools/setup.sh (/run/loopmgr-test) each have their own bus and their own loopmgrd.
# udevd is per host: it is started only when none runs, and env.sh stops it again only when the
# last instance stops. The polkit actions file is installed into /usr/share/polkit-1/actions
# (polkitd reads no other directory) and removed (or the previous file restored) likewise.
# udev/90-loopmgr.rules goes into /run/udev/rules.d (unless an installed copy exists) and is
# removed likewise.
#
# The private bus enforces the default policy of Debian's system bus, the installed service
# policies (/usr/share/dbus-1/system.d, /etc/dbus-1/system.d) and loopmgr's policy straight
# from policy/ in this tree, so tests see what a real system bus would do. A test that needs
# extra bus policy drops a *.conf file into $LOOPMGR_TEST_ENV/bus.d/ (dbus-daemon reloads
# included directories by itself). There is no bus activation: whoever wants loopmgrd starts it.
#
# State directory: bus.conf, system_bus_socket, bus-address, dbus.pid, polkitd.pid,
# loopmgrd.pid, loopmgrd-state/ (LOOPMGR_STATE_DIR of the daemon started by start-daemon) and
# *.log. Host-wide records live in /run/loopmgr-env/. Every pid file is checked against the
# process name before a signal is sent, and only processes env.sh started are ever stopped.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${LOOPMGR_TEST_ENV:-/run/loopmgr-test}
GLOBAL=/run/loopmgr-env
SOCKET=$STATE/system_bus_socket
ADDRESS=unix:path=$SOCKET
POLKIT_ACTIONS_SRC=$REPO/policy/org.loopmgr.policy
UDEV_RULE_SRC=$REPO/udev/90-loopmgr.rules
UDEV_RULE_DST=/run/udev/rules.d/90-loopmgr.rules
POLKIT_ACTIONS_DST=/usr/share/polkit-1/actions/org.loopmgr.policy
POLKIT_ACTION_IDS=(org.loopmgr.attach org.loopmgr.attach-path org.loopmgr.detach-others
    org.loopmgr.mount org.loopmgr.mount-others org.loopmgr.open-device)
BUS_NAME=org.loopmgr.LoopManager1

log() {
    printf 'env.sh: %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

usage() {
    sed -n '4,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

check_instance() {
    [[ $STATE == /* ]] || die "LOOPMGR_TEST_ENV must be an absolute path, not '$STATE'"
    [[ $STATE != *[[:space:]\;\'\"\<\>\&]* ]] || die "LOOPMGR_TEST_ENV must not contain blanks or quotes: '$STATE'"
    # sockaddr_un.sun_path holds 108 bytes, including the terminating NUL.
    ((${#SOCKET} < 108)) || die "LOOPMGR_TEST_ENV is too long for a unix socket path: '$STATE'"
}

need_root() {
    ((EUID == 0)) || die "must run as root (it starts system daemons)"
}

# Serialises start/stop of all instances: udevd and the polkit actions file are shared. fd 9
# is closed for every daemon we start so that none of them keeps the lock.
lock() {
    mkdir -p "$GLOBAL/instances"
    exec 9>"$GLOBAL/lock"
    flock -w 120 9 || die "another tests/env.sh has held $GLOBAL/lock for 2 minutes"
}

# alive PIDFILE COMM: the pid file names a live (not zombie) process called COMM.
alive() {
    local pid comm state
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$2" ]] || return 1
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null) || return 1
    [[ $state != Z && $state != X ]]
}

# wait_for SECONDS CMD...: run CMD until it succeeds, at most SECONDS (never unbounded).
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

pid_gone() {
    [[ ! -d /proc/$1 ]] || [[ $(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) == [ZX] ]]
}

# udevd_pid: the pid of a running (not zombie) systemd-udevd, whoever started it.
udevd_pid() {
    local pid
    for pid in $(pgrep -x systemd-udevd); do
        pid_gone "$pid" || { echo "$pid"; return 0; }
    done
    return 1
}

# stop_pidfile PIDFILE COMM WHAT: SIGTERM, bounded wait, SIGKILL; removes PIDFILE.
stop_pidfile() {
    local pid
    if alive "$1" "$2"; then
        pid=$(<"$1")
        log "stopping $3 (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_for 10 pid_gone "$pid"; then
            log "$3 (pid $pid) ignored SIGTERM for 10 s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_for 5 pid_gone "$pid" || log "warning: $3 (pid $pid) is still there"
        fi
    fi
    rm -f "$1"
}

bus() {
    busctl --address="$ADDRESS" --timeout=5 "$@"
}

bus_up() {
    [[ -S $SOCKET ]] && bus call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus GetId >/dev/null 2>&1
}

has_owner() {
    [[ $(bus call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus NameHasOwner s "$1" 2>/dev/null) == "b true" ]]
}

owner_pid() {
    local out
    out=$(bus call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus GetConnectionUnixProcessID s "$1" 2>/dev/null) || return 1
    [[ $out =~ ^u\ ([0-9]+)$ ]] || return 1
    echo "${BASH_REMATCH[1]}"
}

xml_escape() {
    local s=$1
    s=${s//&/&amp;}
    s=${s//</&lt;}
    s=${s//>/&gt;}
    printf '%s' "$s"
}

find_udevd() {
    local p
    for p in "$(command -v systemd-udevd || true)" /lib/systemd/systemd-udevd /usr/lib/systemd/systemd-udevd; do
        [[ -n $p && -x $p ]] && { echo "$p"; return 0; }
    done
    return 1
}

find_polkitd() {
    local p
    for p in /usr/lib/polkit-1/polkitd /usr/libexec/polkitd /usr/libexec/polkit-1/polkitd; do
        [[ -x $p ]] && { echo "$p"; return 0; }
    done
    return 1
}

# ---- udev ------------------------------------------------------------------------------

start_udev() {
    local udevd pid
    if pid=$(udevd_pid); then
        if alive "$GLOBAL/udevd.pid" systemd-udevd; then
            log "udevd: reusing the one env.sh started (pid $pid)"
        else
            log "udevd: already running (pid $pid), not ours, leaving it alone"
        fi
    else
        udevd=$(find_udevd) || die "systemd-udevd not found (apt-get install udev)"
        log "udevd: starting $udevd --daemon"
        "$udevd" --daemon </dev/null >/dev/null 2>&1 9>&- || die "systemd-udevd --daemon failed"
        wait_for 10 udevadm control --ping >/dev/null 2>&1 || die "udevd does not answer on its control socket"
        pid=$(udevd_pid) || die "udevd exited right after starting"
        echo "$pid" >"$GLOBAL/udevd.pid"
        # A fresh udevd knows nothing about the devices that exist already: replay their add
        # events so /dev/disk/by-diskseq/ and the udev database are complete.
        udevadm trigger --type=devices --subsystem-match=block --action=add
    fi
    udevadm settle --timeout=60 || log "warning: udev did not settle within 60 s"
}

stop_udev_if_ours() {
    if [[ -e $GLOBAL/udevd.pid ]]; then
        stop_pidfile "$GLOBAL/udevd.pid" systemd-udevd "udevd (started by env.sh)"
    fi
}

# ---- polkit actions file -----------------------------------------------------------------

install_polkit_actions() {
    [[ -f $POLKIT_ACTIONS_SRC ]] || die "$POLKIT_ACTIONS_SRC is missing"
    [[ -d ${POLKIT_ACTIONS_DST%/*} ]] || die "${POLKIT_ACTIONS_DST%/*} does not exist (apt-get install polkitd)"
    cmp -s "$POLKIT_ACTIONS_SRC" "$POLKIT_ACTIONS_DST" && return 0
    if [[ -e $POLKIT_ACTIONS_DST && ! -e $GLOBAL/polkit-actions.installed ]]; then
        # Someone else's copy (meson install, a package): keep it to put it back on stop.
        cp -p "$POLKIT_ACTIONS_DST" "$GLOBAL/polkit-actions.orig"
    fi
    log "polkit: installing $POLKIT_ACTIONS_DST"
    install -m 0644 "$POLKIT_ACTIONS_SRC" "$POLKIT_ACTIONS_DST.tmp"
    mv -f "$POLKIT_ACTIONS_DST.tmp" "$POLKIT_ACTIONS_DST"
    touch "$GLOBAL/polkit-actions.installed"
}

uninstall_polkit_actions() {
    [[ -e $GLOBAL/polkit-actions.installed ]] || return 0
    if [[ -e $GLOBAL/polkit-actions.orig ]]; then
        log "polkit: restoring the previous $POLKIT_ACTIONS_DST"
        mv -f "$GLOBAL/polkit-actions.orig" "$POLKIT_ACTIONS_DST"
    else
        log "polkit: removing $POLKIT_ACTIONS_DST"
        rm -f "$POLKIT_ACTIONS_DST"
    fi
    rm -f "$GLOBAL/polkit-actions.installed"
}

# ---- udev rule -------------------------------------------------------------------------------

# udev/90-loopmgr.rules imports the properties loopmgrd writes for its devices
# (LOOPMGR_MANAGED, LOOPMGR_OWNER...). Meson installs it into udev's rules directory; for a
# build tree it goes into /run/udev/rules.d (tmpfs, gone at reboot) unless an installed copy
# is there already.
install_udev_rule() {
    [[ -f $UDEV_RULE_SRC ]] || die "$UDEV_RULE_SRC is missing"
    local d
    for d in /etc/udev/rules.d /usr/lib/udev/rules.d /lib/udev/rules.d; do
        [[ -e $d/${UDEV_RULE_SRC##*/} ]] && return 0
    done
    cmp -s "$UDEV_RULE_SRC" "$UDEV_RULE_DST" && return 0
    log "udev: installing $UDEV_RULE_DST"
    mkdir -p "${UDEV_RULE_DST%/*}"
    install -m 0644 "$UDEV_RULE_SRC" "$UDEV_RULE_DST.tmp"
    mv -f "$UDEV_RULE_DST.tmp" "$UDEV_RULE_DST"
    touch "$GLOBAL/udev-rule.installed"
    udevadm control --reload 2>/dev/null || log "warning: udevadm control --reload failed"
}

uninstall_udev_rule() {
    [[ -e $GLOBAL/udev-rule.installed ]] || return 0
    log "udev: removing $UDEV_RULE_DST"
    rm -f "$UDEV_RULE_DST" "$GLOBAL/udev-rule.installed"
    udevadm control --reload 2>/dev/null || true
}

# ---- private system bus --------------------------------------------------------------------

write_bus_config() {
    local tmp=$STATE/bus.conf.tmp d
    mkdir -p "$STATE/bus.d"
    {
        cat <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<!-- Generated by tests/env.sh: a private system bus for loopmgr tests. The default policy
     is that of /usr/share/dbus-1/system.conf; services punch their holes in system.d. -->
<busconfig>
  <type>system</type>
  <listen>unix:path=$(xml_escape "$SOCKET")</listen>
  <auth>EXTERNAL</auth>

  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Peer"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
  </policy>

EOF
        for d in /usr/share/dbus-1/system.d /etc/dbus-1/system.d; do
            [[ -d $d ]] && printf '  <includedir>%s</includedir>\n' "$d"
        done
        printf '  <includedir>%s</includedir>\n' "$(xml_escape "$REPO/policy")"
        printf '  <includedir>%s</includedir>\n' "$(xml_escape "$STATE/bus.d")"
        echo '</busconfig>'
    } >"$tmp"
    mv -f "$tmp" "$STATE/bus.conf"
}

start_bus() {
    write_bus_config
    if alive "$STATE/dbus.pid" dbus-daemon && bus_up; then
        log "bus: reusing dbus-daemon (pid $(<"$STATE/dbus.pid")) at $ADDRESS"
        # Pick up a bus.conf written by a different checkout of the tree.
        bus call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig >/dev/null ||
            log "warning: dbus-daemon refused ReloadConfig"
    else
        stop_pidfile "$STATE/dbus.pid" dbus-daemon "unresponsive dbus-daemon"
        # polkitd and loopmgrd of a dead bus are useless: they must reconnect to the new one.
        stop_pidfile "$STATE/polkitd.pid" polkitd polkitd
        stop_pidfile "$STATE/loopmgrd.pid" loopmgrd loopmgrd
        rm -f "$SOCKET" "$STATE/dbus.pid.new"
        log "bus: starting dbus-daemon at $ADDRESS"
        printf '=== %s dbus-daemon --config-file=%s\n' "$(date -Is)" "$STATE/bus.conf" >>"$STATE/dbus.log"
        (exec setsid dbus-daemon --config-file="$STATE/bus.conf" --nofork --nopidfile --nosyslog \
            --print-pid=4 4>"$STATE/dbus.pid.new") </dev/null >>"$STATE/dbus.log" 2>&1 9>&- &
        if ! wait_for 10 bus_up; then
            tail -n 20 "$STATE/dbus.log" >&2 || true
            die "dbus-daemon did not come up within 10 s (log: $STATE/dbus.log)"
        fi
        wait_for 5 test -s "$STATE/dbus.pid.new" || die "dbus-daemon did not print its pid"
        mv -f "$STATE/dbus.pid.new" "$STATE/dbus.pid"
    fi
    echo "$ADDRESS" >"$STATE/bus-address"
}

# ---- polkitd ---------------------------------------------------------------------------

polkit_knows_actions() {
    local id
    for id in "${POLKIT_ACTION_IDS[@]}"; do
        DBUS_SYSTEM_BUS_ADDRESS=$ADDRESS pkaction --action-id "$id" >/dev/null 2>&1 || return 1
    done
}

start_polkit() {
    local polkitd pid
    getent passwd polkitd >/dev/null || die "user 'polkitd' does not exist (apt-get install polkitd)"
    if alive "$STATE/polkitd.pid" polkitd && has_owner org.freedesktop.PolicyKit1; then
        log "polkit: reusing polkitd (pid $(<"$STATE/polkitd.pid"))"
    else
        stop_pidfile "$STATE/polkitd.pid" polkitd "stale polkitd"
        has_owner org.freedesktop.PolicyKit1 &&
            die "org.freedesktop.PolicyKit1 is owned on $ADDRESS by pid $(owner_pid org.freedesktop.PolicyKit1), not by env.sh"
        polkitd=$(find_polkitd) || die "polkitd not found (apt-get install polkitd)"
        log "polkit: starting $polkitd on the private bus"
        printf '=== %s %s --no-debug\n' "$(date -Is)" "$polkitd" >>"$STATE/polkitd.log"
        (DBUS_SYSTEM_BUS_ADDRESS=$ADDRESS exec setsid "$polkitd" --no-debug) \
            </dev/null >>"$STATE/polkitd.log" 2>&1 9>&- &
        if ! wait_for 15 has_owner org.freedesktop.PolicyKit1; then
            tail -n 20 "$STATE/polkitd.log" >&2 || true
            kill -TERM $! 2>/dev/null || true
            die "polkitd did not register org.freedesktop.PolicyKit1 within 15 s (log: $STATE/polkitd.log)"
        fi
        pid=$(owner_pid org.freedesktop.PolicyKit1) || die "cannot ask the bus for polkitd's pid"
        echo "$pid" >"$STATE/polkitd.pid"
    fi
    # polkitd watches its actions directory, so a file installed a moment ago may need a
    # moment to show up.
    wait_for 10 polkit_knows_actions ||
        die "polkitd does not know ${POLKIT_ACTION_IDS[*]} (is $POLKIT_ACTIONS_DST valid? see $STATE/polkitd.log)"
}

# ---- instances ---------------------------------------------------------------------------

instance_file() {
    local name=${STATE//\//_}
    echo "$GLOBAL/instances/$name"
}

# other_instances_alive: another registered instance still has its bus running.
other_instances_alive() {
    local f other me found=1
    me=$(instance_file)
    for f in "$GLOBAL"/instances/*; do
        [[ -e $f && $f != "$me" ]] || continue
        other=$(<"$f")
        if alive "$other/dbus.pid" dbus-daemon; then
            found=0
        else
            rm -f "$f"
        fi
    done
    return $found
}

print_env() {
    printf "DBUS_SYSTEM_BUS_ADDRESS='%s'; export DBUS_SYSTEM_BUS_ADDRESS;\n" "$ADDRESS"
    printf "LOOPMGR_TEST_ENV='%s'; export LOOPMGR_TEST_ENV;\n" "$STATE"
}

env_up() {
    alive "$STATE/dbus.pid" dbus-daemon && bus_up &&
        alive "$STATE/polkitd.pid" polkitd && has_owner org.freedesktop.PolicyKit1 &&
        udevd_pid >/dev/null
}

# ---- commands ------------------------------------------------------------------------------

cmd_start() {
    need_root
    mkdir -p "$STATE"
    chmod 0755 "$STATE"
    lock
    echo "$STATE" >"$(instance_file)"
    start_udev
    install_udev_rule
    install_polkit_actions
    start_bus
    start_polkit
    log "environment '$STATE' is up; bus address in $STATE/bus-address"
    print_env
}

cmd_stop() {
    need_root
    lock
    stop_pidfile "$STATE/loopmgrd.pid" loopmgrd loopmgrd
    stop_pidfile "$STATE/polkitd.pid" polkitd polkitd
    stop_pidfile "$STATE/dbus.pid" dbus-daemon dbus-daemon
    rm -f "$SOCKET" "$STATE/bus-address" "$STATE/dbus.pid.new" "$(instance_file)"
    if other_instances_alive; then
        log "other instances are still up: leaving udevd, the udev rule and the polkit actions file to them"
    else
        uninstall_udev_rule
        stop_udev_if_ours
        uninstall_polkit_actions
    fi
    log "environment '$STATE' is stopped (logs stay in $STATE)"
}

cmd_status() {
    local up=0 pid
    echo "instance:  $STATE"
    if alive "$STATE/dbus.pid" dbus-daemon && bus_up; then
        echo "bus:       running (pid $(<"$STATE/dbus.pid")), DBUS_SYSTEM_BUS_ADDRESS=$ADDRESS"
    else
        echo "bus:       not running"
        up=3
    fi
    if alive "$STATE/polkitd.pid" polkitd; then
        echo "polkitd:   running (pid $(<"$STATE/polkitd.pid"))"
    else
        echo "polkitd:   not running"
        up=3
    fi
    if pid=$(udevd_pid); then
        if alive "$GLOBAL/udevd.pid" systemd-udevd; then
            echo "udevd:     running (pid $pid, started by env.sh)"
        else
            echo "udevd:     running (pid $pid, not started by env.sh)"
        fi
    else
        echo "udevd:     not running"
        up=3
    fi
    if alive "$STATE/loopmgrd.pid" loopmgrd; then
        echo "loopmgrd:  running (pid $(<"$STATE/loopmgrd.pid")), log $STATE/loopmgrd.log"
    else
        echo "loopmgrd:  not started by env.sh"
    fi
    if [[ -e $GLOBAL/polkit-actions.installed ]]; then
        echo "actions:   $POLKIT_ACTIONS_DST (installed by env.sh)"
    elif [[ -e $POLKIT_ACTIONS_DST ]]; then
        echo "actions:   $POLKIT_ACTIONS_DST (not installed by env.sh)"
    else
        echo "actions:   $POLKIT_ACTIONS_DST missing"
    fi
    return $up
}

cmd_env() {
    if ! env_up; then
        log "environment '$STATE' is not up (run: tests/env.sh start)"
        return 3
    fi
    print_env
}


cmd_start_daemon() {
    local build=${1:-} bin pid deadline
    [[ -n $build ]] || usage
    shift
    need_root
    bin=$(cd "$build" 2>/dev/null && pwd)/loopmgrd || die "no build directory '$build'"
    [[ -x $bin ]] || die "$bin does not exist (build it: ninja -C $build)"
    env_up || die "environment '$STATE' is not up (run: tests/env.sh start)"
    lock
    stop_pidfile "$STATE/loopmgrd.pid" loopmgrd "previous loopmgrd"
    has_owner "$BUS_NAME" &&
        die "$BUS_NAME is already owned on $ADDRESS by pid $(owner_pid "$BUS_NAME"), not started by env.sh"
    mkdir -p "$STATE/loopmgrd-state"
    log "loopmgrd: starting $bin${*:+ $*} (log: $STATE/loopmgrd.log)"
    printf '=== %s %s %s\n' "$(date -Is)" "$bin" "$*" >>"$STATE/loopmgrd.log"
    # Inside a non-interactive script the subshell is not a process group leader, so setsid
    # does not fork and $! is the daemon itself.
    (DBUS_SYSTEM_BUS_ADDRESS=$ADDRESS LOOPMGR_STATE_DIR=$STATE/loopmgrd-state \
        exec setsid "$bin" "$@") </dev/null >>"$STATE/loopmgrd.log" 2>&1 9>&- &
    echo $! >"$STATE/loopmgrd.pid.new"
    deadline=$((SECONDS + ${LOOPMGRD_START_TIMEOUT:-30}))
    until has_owner "$BUS_NAME"; do
        if ! alive "$STATE/loopmgrd.pid.new" loopmgrd; then
            tail -n 30 "$STATE/loopmgrd.log" >&2 || true
            rm -f "$STATE/loopmgrd.pid.new"
            die "loopmgrd exited before it took $BUS_NAME (log: $STATE/loopmgrd.log)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$STATE/loopmgrd.log" >&2 || true
            stop_pidfile "$STATE/loopmgrd.pid.new" loopmgrd loopmgrd
            die "loopmgrd did not take $BUS_NAME within ${LOOPMGRD_START_TIMEOUT:-30} s (log: $STATE/loopmgrd.log)"
        fi
        sleep 0.1
    done
    pid=$(owner_pid "$BUS_NAME") || die "cannot ask the bus for loopmgrd's pid"
    [[ $pid == "$(<"$STATE/loopmgrd.pid.new")" ]] || log "warning: $BUS_NAME is owned by pid $pid, we started $(<"$STATE/loopmgrd.pid.new")"
    mv -f "$STATE/loopmgrd.pid.new" "$STATE/loopmgrd.pid"
    log "loopmgrd: running (pid $pid) as $BUS_NAME on $ADDRESS"
}

cmd_stop_daemon() {
    need_root
    lock
    if [[ -e $STATE/loopmgrd.pid ]]; then
        stop_pidfile "$STATE/loopmgrd.pid" loopmgrd loopmgrd
    else
        log "loopmgrd: not started by env.sh for '$STATE', nothing to stop"
    fi
}

main() {
    local cmd=${1:-}
    [[ -n $cmd ]] || usage
    shift
    check_instance
    case $cmd in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    start-daemon) cmd_start_daemon "$@" ;;
    stop-daemon) cmd_stop_daemon ;;
    -h | --help | help) usage ;;
    *) log "unknown command '$cmd'"; usage ;;
    esac
}

main "$@"
