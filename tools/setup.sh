#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# tools/setup.sh: build loopmgr and leave a running demo to play with.
#
#   1. tools/deps.sh (installs missing Debian packages)
#   2. build/: meson setup -Dbuildtype=debugoptimized, ninja
#   3. bash tests/env.sh start (private system bus + udevd + polkitd; instance /run/loopmgr-test)
#   4. (re)starts build/loopmgrd on that bus (log: /run/loopmgr-test/loopmgrd.log)
#   5. attaches a 64 MiB ext4 demo image with loopmgrctl, lists the devices and shows the
#      daemon's objects on the bus
#
# The daemon keeps running afterwards; the script prints how to reach it and how to stop it.
# Running it again rebuilds and restarts the daemon on the same environment.
#
# Environment: LOOPMGR_TEST_ENV (instance, default /run/loopmgr-test), LOOPMGR_DEMO_IMAGE
# (default /var/tmp/loopmgr-demo.img).

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
BUILD=build
export LOOPMGR_TEST_ENV=${LOOPMGR_TEST_ENV:-/run/loopmgr-test}
IMAGE=${LOOPMGR_DEMO_IMAGE:-/var/tmp/loopmgr-demo.img}

step() {
    printf '\n==> %s\n' "$*"
}

if ((EUID != 0)); then
    echo "setup.sh: run as root: it installs packages and starts system daemons" >&2
    exit 1
fi

step "dependencies"
bash tools/deps.sh

step "build ($BUILD, debugoptimized)"
if [[ -f $BUILD/meson-private/coredata.dat ]]; then
    meson configure "$BUILD" -Dbuildtype=debugoptimized ||
        meson setup --wipe "$BUILD" -Dbuildtype=debugoptimized
else
    meson setup "$BUILD" -Dbuildtype=debugoptimized
fi
ninja -C "$BUILD"

step "environment ($LOOPMGR_TEST_ENV)"
eval "$(bash tests/env.sh start)"

step "loopmgrd"
bash tests/env.sh start-daemon "$BUILD"

step "demo image $IMAGE"
if [[ ! -f $IMAGE ]]; then
    truncate -s 64M "$IMAGE.tmp"
    mkfs.ext4 -q -L loopmgr-demo "$IMAGE.tmp"
    mv "$IMAGE.tmp" "$IMAGE"
    echo "created $IMAGE (64 MiB, ext4)"
else
    echo "reusing $IMAGE"
fi

# A second run attaches the same image again: loopmgrd hands back the existing device
# (reused) instead of creating an alias, which is the point of it.
step "$BUILD/loopmgrctl attach $IMAGE"
"$BUILD/loopmgrctl" attach "$IMAGE"

step "$BUILD/loopmgrctl list"
"$BUILD/loopmgrctl" list

step "busctl --address=$DBUS_SYSTEM_BUS_ADDRESS tree org.loopmgr.LoopManager1"
busctl --address="$DBUS_SYSTEM_BUS_ADDRESS" --no-pager tree org.loopmgr.LoopManager1

cat <<EOF

loopmgrd is running on a private system bus (pid $(cat "$LOOPMGR_TEST_ENV/loopmgrd.pid"),
log $LOOPMGR_TEST_ENV/loopmgrd.log). To use it from a shell:

    export DBUS_SYSTEM_BUS_ADDRESS=\$(cat $LOOPMGR_TEST_ENV/bus-address)
    $REPO/$BUILD/loopmgrctl list
    $REPO/$BUILD/loopmgrctl status $IMAGE
    $REPO/$BUILD/loopmgrctl monitor              # in a second terminal
    busctl introspect org.loopmgr.LoopManager1 /org/loopmgr/LoopManager1

Detach the demo device, then stop everything:

    $REPO/$BUILD/loopmgrctl detach $IMAGE
    $REPO/tests/env.sh stop

Run tools/setup.sh again after a change to rebuild and restart the daemon.
EOF
