#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# tools/build-deb.sh [--force] [OUTDIR]: build the Debian package (debian/) from this tree as it
# is, uncommitted changes included, and check it with lintian.
#
# The tree is left alone: the files git knows or would add (tracked, and untracked but not
# ignored; build directories are ignored) are copied to a temporary directory, which
# `dpkg-buildpackage -us -uc -b` builds and which is removed again on exit. lintian on the
# .changes (the .deb, the -dbgsym .deb, the .buildinfo and the .changes) must report no error
# and no warning. Those files go into OUTDIR (default: build-deb/ in the tree), with the build
# log (loopmgr_<version>_<arch>.build). The last line of stdout is the absolute path of the .deb:
#   deb=$(tools/build-deb.sh /some/dir | tail -n1)
# Everything else goes to stderr. A rerun on an unchanged tree reuses the package in OUTDIR
# (build-deb.stamp there records what it was built from); --force builds anyway.
# Installs what is missing with `tools/deps.sh --deb` (root needed only then).

set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
force=0
outdir=
for arg in "$@"; do
    case $arg in
    --force) force=1 ;;
    -*) echo "build-deb: unknown option '$arg' (usage: tools/build-deb.sh [--force] [OUTDIR])" >&2; exit 2 ;;
    *)
        [[ -z $outdir ]] || { echo "build-deb: more than one OUTDIR" >&2; exit 2; }
        outdir=$arg
        ;;
    esac
done
outdir=${outdir:-$repo/build-deb}

log() { echo "build-deb: $*" >&2; }

"$repo/tools/deps.sh" --deb >&2

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

# The files of the tree, NUL-separated, relative to $repo: what git tracks and what it would
# add, minus files deleted in the work tree and anything inside OUTDIR. Without git (an
# unpacked tarball): every file but .git and the build directories.
list_files() {
    local rel=
    case $outdir/ in "$repo"/*) rel=${outdir#"$repo"/}/ ;; esac
    if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$repo" ls-files -z --cached --others --exclude-standard
    else
        (cd "$repo" && find . \( -path ./.git -o -path './build*' -o -path './obj-*' \) -prune \
            -o \( -type f -o -type l \) -printf '%P\0')
    fi | while IFS= read -r -d '' f; do
        [[ -n $rel && $f == "$rel"* ]] && continue
        [[ -e $repo/$f || -L $repo/$f ]] || continue
        printf '%s\0' "$f"
    done | sort -z -u
}

mapfile -d '' files < <(list_files)
((${#files[@]} > 0)) || { log "no files found in $repo"; exit 1; }
[[ -f $repo/debian/control ]] || { log "$repo/debian/control is missing"; exit 1; }

version=$(dpkg-parsechangelog -l "$repo/debian/changelog" -S Version)
arch=$(dpkg-architecture -q DEB_HOST_ARCH)
base=loopmgr_${version}_${arch}
deb=$outdir/$base.deb

# What the package is built from: the name, mode and content of every file copied. Equal to
# the stamp of the last build, with its .deb still there: nothing to do.
stamp=$( (cd "$repo" && printf '%s\0' "${files[@]}" | xargs -0 stat -c '%n %a' --
    printf '%s\0' "${files[@]}" | xargs -0 sha256sum --) | sha256sum | cut -d' ' -f1)
if ((force == 0)) && [[ -f $deb && -f $outdir/build-deb.stamp ]] &&
    [[ $(cat "$outdir/build-deb.stamp") == "$stamp $base" ]]; then
    log "$base.deb is up to date (--force to rebuild)"
    echo "$deb"
    exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/loopmgr-deb.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

src=$tmp/loopmgr-$version
mkdir "$src"
(cd "$repo" && printf '%s\0' "${files[@]}" | tar --null --no-recursion -T - -cf -) |
    tar -xf - -C "$src"

buildlog=$outdir/$base.build
log "building $base.deb in $src (log: $buildlog)"
if ! (cd "$src" && dpkg-buildpackage -us -uc -b) >"$buildlog" 2>&1; then
    tail -n 40 "$buildlog" >&2
    log "dpkg-buildpackage failed; the whole log is $buildlog"
    exit 1
fi

changes=$tmp/${base}.changes
for f in "$tmp/$base.deb" "$tmp/$base.buildinfo" "$changes"; do
    [[ -f $f ]] || { log "dpkg-buildpackage did not produce $(basename "$f")"; exit 1; }
done

# --fail-on error,warning: any E: or W: tag fails the build; I: and P: tags (shown) do not.
log "lintian $(basename "$changes")"
if ! lintian --fail-on error,warning --display-info --pedantic "$changes" >&2; then
    log "lintian reports errors or warnings (above)"
    exit 1
fi

# Everything the .changes lists (the .deb, its -dbgsym .deb, the .buildinfo) and the .changes.
mapfile -t listed < <(sed -n '/^Files:/,/^[^ ]/s/^ [0-9a-f]\{32\} [0-9]* [^ ]* [^ ]* //p' "$changes")
((${#listed[@]} > 0)) || { log "$(basename "$changes") lists no files"; exit 1; }
rm -f "$outdir/build-deb.stamp"
for f in "${listed[@]}"; do mv -f "$tmp/$f" "$outdir/"; done
mv -f "$changes" "$outdir/"
echo "$stamp $base" >"$outdir/build-deb.stamp"
log "done"
echo "$deb"
