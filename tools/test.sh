#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# tools/test.sh [MESON-TEST-ARGS...]: build and test everything, as CI does.
#
#   1. tools/deps.sh (installs missing Debian packages)
#   2. build-dev/: -Dbuildtype=debug -Db_sanitize=address,undefined -Dwerror=true, ninja
#   3. code style: clang-format (.clang-format) and .editorconfig whitespace rules, and the
#      include rule of the daemon's layers (tools/check-layers.sh)
#   4. bash tests/env.sh start for the instance /run/loopmgr-ci (own private bus and polkitd, so
#      a demo environment of tools/setup.sh and its loopmgrd are left alone)
#   5. meson test -C build-dev --print-errorlogs [MESON-TEST-ARGS...] (all suites by default:
#      packaging, unit, kernel, integration; e.g. `tools/test.sh --suite unit` for one)
#   6. fuzzing: build-fuzz/ (clang, -Dfuzz=true -Dtests=false), then each libFuzzer target of
#      fuzz/ for LOOPMGR_FUZZ_TIME seconds on a temporary copy of its seed corpus; a crash,
#      sanitizer report, leak or timeout fails the run (the input is kept in
#      build-fuzz/fuzz-artifacts/). Each target counts as one test case in the summary.
#   7. stops what step 4 started (also on failure or Ctrl-C)
#   8. for a whole run (no MESON-TEST-ARGS), the system suite in a VM: tools/test-vm.sh, a
#      stock Debian 12 with systemd as PID 1 under qemu; each of its tests counts as one case
#   9. prints a summary line and exits non-zero if any step failed.
#
# Knobs (environment):
#   LOOPMGR_FORMAT_CHECK=strict|warn|off   style check: fail the run (default), report only, or
#                                          skip
#   LOOPMGR_BUILD_DIR=build-dev            build directory
#   LOOPMGR_TEST_ENV=/run/loopmgr-ci       tests/env.sh instance (state directory)
#   LOOPMGR_TEST_FILTER=GLOB               cmocka filter, passed through to the tests
#   LOOPMGR_FUZZ_TIME=SECONDS              per fuzz target; default 30, or 0 (no fuzzing) when
#                                          MESON-TEST-ARGS select a subset of the tests
#   LOOPMGR_FUZZ_BUILD_DIR=build-fuzz      build directory of the fuzz targets
#   LOOPMGR_VM=0|1                         the system suite in a VM (tools/test-vm.sh): by
#                                          default on for a whole run, off for a subset

set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
BUILD=${LOOPMGR_BUILD_DIR:-build-dev}
FORMAT_CHECK=${LOOPMGR_FORMAT_CHECK:-strict}
export LOOPMGR_TEST_ENV=${LOOPMGR_TEST_ENV:-/run/loopmgr-ci}
MESON_OPTS=(-Dbuildtype=debug "-Db_sanitize=address,undefined" -Dwerror=true -Dtests=true)
FUZZ_BUILD=${LOOPMGR_FUZZ_BUILD_DIR:-build-fuzz}
if (($#)); then
    FUZZ_TIME=${LOOPMGR_FUZZ_TIME:-0}
else
    FUZZ_TIME=${LOOPMGR_FUZZ_TIME:-30}
fi
FUZZ_TARGETS=(options state uevent)

failed_steps=()
env_started=0
t0=$SECONDS

step() {
    printf '\n==> %s\n' "$*"
}

cleanup() {
    if ((env_started)); then
        step "stopping the test environment ($LOOPMGR_TEST_ENV)"
        bash tests/env.sh stop || echo "test.sh: warning: tests/env.sh stop failed" >&2
        env_started=0
    fi
}
# Bash runs a trap only once its foreground child returns, so meson test runs in the
# background and a signal is passed on to it at once.
child=0
on_signal() {
    if ((child)); then
        kill -TERM "$child" 2>/dev/null
        wait "$child" 2>/dev/null
    fi
    exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# summary PASSED FAILED SKIPPED: the last line, in the one format every CI reader understands.
summary() {
    echo
    if ((${#failed_steps[@]})); then
        echo "test.sh: FAILED: ${failed_steps[*]} ($((SECONDS - t0)) s)"
    else
        echo "test.sh: all steps passed ($((SECONDS - t0)) s)"
    fi
    echo "summary: $1 passed, $2 failed, $3 skipped"
}

# ---- 1. dependencies -----------------------------------------------------------------------

step "dependencies"
if ! bash tools/deps.sh; then
    failed_steps+=(deps)
    summary 0 1 0
    exit 1
fi

# ---- 2. build --------------------------------------------------------------------------------

step "configure $BUILD (${MESON_OPTS[*]})"
configured=0
if [[ -f $BUILD/meson-private/coredata.dat ]]; then
    # `meson configure` only regenerates when an option changed, so this costs nothing when
    # the directory is already set up; a directory from another meson version needs --wipe.
    if meson configure "$BUILD" "${MESON_OPTS[@]}"; then
        configured=1
    elif meson setup --wipe "$BUILD" "${MESON_OPTS[@]}"; then
        configured=1
    fi
else
    meson setup "$BUILD" "${MESON_OPTS[@]}" && configured=1
fi

built=0
if ((configured)); then
    step "build"
    ninja -C "$BUILD" && built=1
fi
((built)) || failed_steps+=(build)

# ---- 3. style --------------------------------------------------------------------------------

# Reports files that clang-format would change and .editorconfig violations (tabs in C,
# trailing whitespace, missing final newline). `strict` (the default, what CI runs) fails the
# run; `warn` prints them and carries on.
style_check() {
    local files=() f bad_format=() bad_ws=()
    while IFS= read -r -d '' f; do
        files+=("$f")
    done < <(find daemon client include tests fuzz -type f \( -name '*.c' -o -name '*.h' \) -print0 | sort -z)
    ((${#files[@]})) || return 0
    if command -v clang-format >/dev/null; then
        for f in "${files[@]}"; do
            clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad_format+=("$f")
        done
    else
        echo "style: clang-format is not installed, skipping the format check"
    fi
    for f in "${files[@]}"; do
        if grep -qP '\t|[ \t]+$' "$f" || [[ -s $f && $(tail -c 1 "$f" | od -An -tx1) != *0a* ]]; then
            bad_ws+=("$f")
        fi
    done
    echo "style: ${#files[@]} files checked; ${#bad_format[@]} differ from .clang-format, ${#bad_ws[@]} break .editorconfig"
    if ((${#bad_format[@]})); then
        echo "style: not clang-formatted (see: clang-format --dry-run FILE; fix: clang-format -i FILE):"
        printf '    %s\n' "${bad_format[@]}"
    fi
    if ((${#bad_ws[@]})); then
        printf '%s\n' "style: tabs, trailing whitespace or no final newline (see: grep -nP '\t| \$' FILE):"
        printf '    %s\n' "${bad_ws[@]}"
    fi
    ((${#bad_format[@]} + ${#bad_ws[@]} == 0))
}

case $FORMAT_CHECK in
off) ;;
warn)
    step "style (report only; LOOPMGR_FORMAT_CHECK=strict makes it fail the run)"
    style_check || true
    ;;
strict)
    step "style (strict)"
    style_check || failed_steps+=(style)
    ;;
*)
    echo "test.sh: LOOPMGR_FORMAT_CHECK must be warn, strict or off, not '$FORMAT_CHECK'" >&2
    failed_steps+=(style)
    ;;
esac

step "the include rule of the daemon's layers (tools/check-layers.sh)"
tools/check-layers.sh || failed_steps+=(layers)

if ((!built)); then
    summary 0 1 0
    exit 1
fi

# ---- 4. environment --------------------------------------------------------------------------

step "test environment ($LOOPMGR_TEST_ENV)"
env_ok=0
if bash tests/env.sh status >/dev/null 2>&1; then
    # Someone brought this instance up by hand (to iterate on meson test): use it, leave it.
    echo "test.sh: reusing the running environment $LOOPMGR_TEST_ENV (it stays up afterwards)"
    env_vars=$(bash tests/env.sh env) && env_ok=1
else
    env_started=1
    env_vars=$(bash tests/env.sh start) && env_ok=1
fi
if ((env_ok)); then
    eval "$env_vars"
else
    # Without the bus the integration tests would merely skip: that must not look green.
    failed_steps+=(environment)
fi

# ---- 5. tests --------------------------------------------------------------------------------

step "meson test -C $BUILD --print-errorlogs $*"
meson test -C "$BUILD" --print-errorlogs "$@" </dev/null &
child=$!
wait "$child" || failed_steps+=(tests)
child=0

# Count test cases, not test binaries: cmocka prints "[  PASSED  ] N test(s)." (and FAILED,
# SKIPPED) per group, and " N FAILED TEST(S)" for failures plus errors (failed setup or
# teardown), which "[  FAILED  ]" leaves out. A binary without such lines (a script, a crash before cmocka ran)
# counts as one case with meson's verdict, and a binary that failed although cmocka counted
# no failure (sanitizer report at exit, failed group setup) adds one failure.
passed=0 failed=0 skipped=0
testlog=$BUILD/meson-logs/testlog.json
if [[ -s $testlog ]] && command -v jq >/dev/null; then
    read -r passed failed skipped < <(jq -rs '
        def count(re): [((.stdout // "") + "\n" + (.stderr // "")) | scan(re) | .[0] | tonumber] | add // 0;
        map(
            (count("\\[  PASSED  \\] ([0-9]+) test")) as $p |
            ([count("\\[  FAILED  \\] ([0-9]+) test"), count("([0-9]+) FAILED TEST\\(S\\)")] | max) as $f |
            (count("\\[  SKIPPED \\] ([0-9]+) test")) as $s |
            if ($p + $f + $s) == 0 then
                if .result == "OK" or .result == "EXPECTEDFAIL" then [1, 0, 0]
                elif .result == "SKIP" then [0, 0, 1]
                else [0, 1, 0] end
            elif (.result != "OK" and .result != "SKIP" and .result != "EXPECTEDFAIL" and $f == 0) then
                [$p, 1, $s]
            else [$p, $f, $s] end)
        | transpose | map(add // 0) | "\(.[0] // 0) \(.[1] // 0) \(.[2] // 0)"' "$testlog") ||
        { passed=0 failed=1 skipped=0; }
else
    failed=1
    echo "test.sh: no $testlog: meson test did not run"
fi

# ---- 6. fuzzing -----------------------------------------------------------------------------

# run_fuzzer NAME: fuzz/fuzz-NAME for FUZZ_TIME seconds on a copy of fuzz/corpus/NAME (libFuzzer
# adds what it finds to the corpus directory it is given, and the checked-in seeds must not
# change). Returns non-zero on a crash, a sanitizer report, a leak or a timeout.
run_fuzzer() {
    local name=$1 bin=$FUZZ_BUILD/fuzz/fuzz-$1 tmp rc execs
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/loopmgr-fuzz-$name.XXXXXX") || return 1
    mkdir -p "$tmp/corpus" "$tmp/artifacts"
    cp -R "fuzz/corpus/$name/." "$tmp/corpus/"
    "$bin" -max_total_time="$FUZZ_TIME" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$tmp/artifacts/" "$tmp/corpus" </dev/null >"$tmp/log" 2>&1 &
    child=$!
    wait "$child"
    rc=$?
    child=0
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$tmp/log" | tail -n 1)
    if ((rc == 0)); then
        echo "fuzz-$name: ${execs:-?} executions in ${FUZZ_TIME} s, no crash"
    else
        echo "fuzz-$name: FAILED (exit $rc) after ${execs:-?} executions:"
        grep -E '^(==[0-9]+==|SUMMARY|fuzz-|.*runtime error)' "$tmp/log" | head -n 20
        tail -n 40 "$tmp/log"
        mkdir -p "$FUZZ_BUILD/fuzz-artifacts"
        cp -p "$tmp/artifacts/"* "$FUZZ_BUILD/fuzz-artifacts/" 2>/dev/null &&
            echo "fuzz-$name: reproduce with $bin $FUZZ_BUILD/fuzz-artifacts/<file>:" &&
            ls "$FUZZ_BUILD/fuzz-artifacts/"
    fi
    rm -rf "$tmp"
    return "$rc"
}

if ((FUZZ_TIME > 0)); then
    step "fuzzing ($FUZZ_BUILD, ${FUZZ_TIME} s per target)"
    fuzz_ready=0
    # The project's meson.build warns that -fsanitize= belongs in b_sanitize: b_sanitize has no
    # "fuzzer" in this meson, so the fuzz build sets all three itself.
    if ! command -v clang >/dev/null; then
        echo "test.sh: clang is not installed (tools/deps.sh installs it)"
    elif [[ -f $FUZZ_BUILD/meson-private/coredata.dat ]]; then
        if meson configure "$FUZZ_BUILD" -Dfuzz=true -Dtests=false >/dev/null ||
            CC=clang meson setup --wipe "$FUZZ_BUILD" -Dfuzz=true -Dtests=false; then
            fuzz_ready=1
        fi
    elif CC=clang meson setup "$FUZZ_BUILD" -Dfuzz=true -Dtests=false; then
        fuzz_ready=1
    fi
    if ((fuzz_ready)) && ninja -C "$FUZZ_BUILD" "${FUZZ_TARGETS[@]/#/fuzz/fuzz-}"; then
        for t in "${FUZZ_TARGETS[@]}"; do
            if run_fuzzer "$t"; then
                passed=$((passed + 1))
            else
                failed=$((failed + 1))
                failed_steps+=("fuzz-$t")
            fi
        done
    else
        failed=$((failed + 1))
        failed_steps+=(fuzz-build)
    fi
fi

cleanup

# ---- 8. the system suite in a VM -------------------------------------------------------------

# A stock Debian 12 with systemd as PID 1 under qemu (tools/test-vm.sh): only for a whole run,
# since meson-test arguments select host tests. LOOPMGR_VM=0 skips it, LOOPMGR_VM=1 forces it.
VM=${LOOPMGR_VM:-}
if [[ -z $VM ]]; then
    (($#)) && VM=0 || VM=1
fi
if [[ $VM != 0 ]]; then
    step "the system suite in a VM (tools/test-vm.sh; LOOPMGR_VM=0 skips it)"
    vm_log=$(mktemp "${TMPDIR:-/tmp}/loopmgr-vm-log.XXXXXX")
    bash tools/test-vm.sh </dev/null 2>&1 | tee "$vm_log" &
    child=$!
    vm_rc=0
    wait "$child" || vm_rc=$?
    child=0
    vm_counts=$(sed -n 's/^vm: \([0-9]*\) passed, \([0-9]*\) failed, \([0-9]*\) skipped$/\1 \2 \3/p' \
        "$vm_log" | tail -n 1)
    rm -f "$vm_log"
    if [[ -n $vm_counts ]]; then
        read -r vp vf vs <<<"$vm_counts"
        passed=$((passed + vp)) failed=$((failed + vf)) skipped=$((skipped + vs))
        # An exit status without a failure counted (it cannot happen today) is one.
        ((vf == 0 && vm_rc != 0)) && failed=$((failed + 1))
        ((vf == 0 && vm_rc == 0)) || failed_steps+=(vm)
    else
        failed=$((failed + 1))
        failed_steps+=(vm)
    fi
fi

summary "$passed" "$failed" "$skipped"
((${#failed_steps[@]} == 0 && failed == 0))
