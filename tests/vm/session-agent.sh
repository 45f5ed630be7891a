#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The session agent: lmuser's login shell on tty1 execs this (the guest's ~/.profile), so every
# command it runs is a process of that user's active local session on seat0, which is what
# polkit's allow_active is about. The system suite (tests/vm/system-suite.sh, as root) writes a
# script to $dir/<id>.sh and the id to the FIFO; the agent runs it and leaves <id>.out,
# <id>.err and, last, <id>.rc.

dir=/run/lmagent
fifo=$dir/requests
# The suite makes the FIFO when it starts; tty1 may log in before that.
for ((i = 0; i < 600; i++)); do
    [[ -p $fifo ]] && break
    sleep 0.5
done
[[ -p $fifo ]] || { echo "session-agent: no $fifo" >&2; exit 1; }

cd ~ || exit 1
{
    echo "session ${XDG_SESSION_ID:-none}, tty $(tty), uid $(id -u)"
    env | sort
} >"$dir/ready.tmp" && mv "$dir/ready.tmp" "$dir/ready"
while :; do
    if ! read -r id <"$fifo"; then
        sleep 0.2
        continue
    fi
    [[ $id =~ ^[a-z0-9-]+$ ]] || continue
    bash "$dir/$id.sh" >"$dir/$id.out" 2>"$dir/$id.err" </dev/null
    echo $? >"$dir/$id.rc.tmp"
    mv "$dir/$id.rc.tmp" "$dir/$id.rc"
done
