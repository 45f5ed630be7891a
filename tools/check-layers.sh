#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The include rule of the daemon's layers (docs/DESIGN.md, "Layers"): a file in daemon/<layer>/
# includes headers of its own layer and of the layers below it, never of one above. The layers,
# lowest first:
#
#   util   kernel   host   state   core   bus
#
# daemon/loopmgrd.c (main) may include anything. Headers from include/ (shared with the
# client), the BPF skeleton the build generates and system headers are not checked.
#
# Usage: tools/check-layers.sh [SOURCE-ROOT]    exit status 1 when a file breaks the rule.

set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root/daemon"

layers=(util kernel host state core bus)
declare -A rank=() where=()
for i in "${!layers[@]}"; do
    rank[${layers[$i]}]=$i
done

# Which layer each header lives in, by file name (names are unique across the folders).
while IFS= read -r h; do
    name=${h##*/}
    layer=${h%%/*}
    if [[ -n ${where[$name]:-} && ${where[$name]} != "$layer" ]]; then
        echo "check-layers: $name is in both daemon/${where[$name]}/ and daemon/$layer/" >&2
        exit 1
    fi
    where[$name]=$layer
done < <(find "${layers[@]}" -name '*.h' | sort)

bad=0 checked=0
while IFS= read -r f; do
    layer=${f%%/*}
    [[ -n ${rank[$layer]:-} ]] || continue
    checked=$((checked + 1))
    while IFS= read -r line; do
        inc=${line#*\"}
        inc=${inc%%\"*}
        name=${inc##*/}
        to=${where[$name]:-}
        [[ -n $to ]] || continue # include/, generated or system
        if ((rank[$to] > rank[$layer])); then
            echo "check-layers: daemon/$f ($layer) includes $inc ($to, a higher layer)"
            bad=$((bad + 1))
        fi
    done < <(grep -E '^[[:space:]]*#[[:space:]]*include[[:space:]]+"' "$f" || true)
done < <(find "${layers[@]}" \( -name '*.c' -o -name '*.h' \) | sort)

# Nothing of the daemon may sit outside the layers but main.
stray=$(find . -maxdepth 1 -type f \( -name '*.c' -o -name '*.h' \) ! -name loopmgrd.c | sort)
if [[ -n $stray ]]; then
    echo "check-layers: files outside the layer folders: $stray"
    bad=$((bad + 1))
fi

if ((bad)); then
    echo "check-layers: $bad violation(s) in $checked files"
    exit 1
fi
echo "check-layers: $checked files in ${#layers[@]} layers keep the include rule"
