#!/usr/bin/env bash
# The one entry point: ./build.sh [build|test|run|publish|qemu-peer|tls-baseline|fuzz] — see README.md.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
ART=$ROOT/artifacts
CONFIG=Release
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

log() { printf '[build.sh] %s\n' "$*" >&2; }

install_prereqs() {
    local missing=()
    command -v cc >/dev/null || missing+=(gcc libc6-dev)
    command -v make >/dev/null || missing+=(make)
    command -v iperf3 >/dev/null || missing+=(iperf3)   # the benchmark's transport baseline
    [ -e /usr/include/linux/vfio.h ] || missing+=(linux-libc-dev)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ]; then
            log "missing ${missing[*]}; run as root (or install them) first"; exit 1
        fi
        log "installing ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! command -v dotnet >/dev/null; then
        log "the .NET 10 SDK (dotnet) is not on PATH; install it first (https://learn.microsoft.com/dotnet/core/install/linux)"; exit 1
    fi
}

build() {
    install_prereqs
    log "building Vfio.sln ($CONFIG)"
    dotnet build Vfio.sln -c $CONFIG -nologo -v quiet -clp:ErrorsOnly
    publish_cli
    publish_hwtests
}

# The hardware tests as a self-contained executable for a lab host without the .NET SDK (README: "Running the
# hardware tests on a lab host"); xunit's own options choose what runs and the report (-jUnit FILE for CI servers).
publish_hwtests() {
    dotnet publish hwtests/Vfio.HwTests -c $CONFIG -r linux-x64 --self-contained -nologo -v quiet -clp:ErrorsOnly \
        -o "$ART/hwtests" >/dev/null
    log "hardware tests: $ART/hwtests/Vfio.HwTests (self-contained)"
}

# The CLI as one self-contained executable that can be copied to a test host without .NET. ReadyToRun: a migration
# is one run per process, so its data path must not start as unoptimised tier-0 code inside the downtime
# (docs/performance.md has the side-by-side figures).
publish_cli() {
    mkdir -p "$ART/bin"
    dotnet publish src/Vfio.Cli -c $CONFIG -r linux-x64 --self-contained -p:PublishSingleFile=true -p:PublishReadyToRun=true \
        -nologo -v quiet -clp:ErrorsOnly -o "$ART/bin" >/dev/null
    log "CLI: $ART/bin/vfio-mig (self-contained single file, ReadyToRun)"
}

# Adds one tier's counts from an xunit v3 XML report to the totals.
PASSED=0 FAILED=0 SKIPPED=0
add_counts() {
    local xml=$1 tier=$2 p f s e
    sum() { grep -o '<assembly [^>]*' "$xml" | grep -o " $1=\"[0-9]*\"" | grep -o '[0-9]*' | awk '{ t += $1 } END { print t + 0 }'; }
    p=$(sum passed); f=$(sum failed); s=$(sum skipped); e=$(sum errors)
    log "$tier: $p passed, $((f + e)) failed, $s skipped"
    PASSED=$((PASSED + p)); FAILED=$((FAILED + f + e)); SKIPPED=$((SKIPPED + s))
}

# Runs an xunit v3 test executable, writing its XML report; a crash before the report counts as one failure.
run_xunit() {
    local dll=$1 tier=$2 xml=$ART/test-results/$2.xml
    shift 2
    mkdir -p "$ART/test-results"; rm -f "$xml"
    log "running $tier"
    set +e; dotnet "$dll" -xml "$xml" -noColor "$@"; set -e
    if [ -s "$xml" ]; then add_counts "$xml" "$tier"; else log "$tier: no report (crashed)"; FAILED=$((FAILED + 1)); fi
}

test_all() {
    install_prereqs
    build
    run_xunit "tests/Vfio.Tests/bin/$CONFIG/net10.0/Vfio.Tests.dll" unit
    fuzz_targets 25
    hw_tiers
    echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
    [ "$FAILED" -eq 0 ]
}

# fuzz_targets SECONDS [TARGET...]: each wire decoder target (tests/Vfio.Fuzz) under afl-fuzz for SECONDS, from its corpus
# in the repository; SharpFuzz instruments a copy of Vfio.Migration.dll. Each target counts as one test: a crash (a broken
# decoder contract) or a hang fails it, its input copied to artifacts/fuzz/crashes/ and replayed into the log.
FUZZ_TARGETS=(handshake handshake-reply packet-header body framing)
FUZZ_PLAIN=$ROOT/tests/Vfio.Fuzz/bin/$CONFIG/net10.0
fuzz_setup() {
    if ! command -v afl-fuzz >/dev/null; then
        [ "$(id -u)" -eq 0 ] || { log "fuzz: afl-fuzz missing; run as root (or install afl++) first"; return 1; }
        log "installing afl++"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq afl++ >/dev/null || return 1
    fi
    dotnet tool restore >/dev/null || return 1   # SharpFuzz.CommandLine, pinned in .config/dotnet-tools.json
    dotnet build tests/Vfio.Fuzz -c $CONFIG -nologo -v quiet -clp:ErrorsOnly || return 1
    rm -rf "$ART/fuzz" && mkdir -p "$ART/fuzz/crashes" && cp -r "$FUZZ_PLAIN" "$ART/fuzz/bin" || return 1
    dotnet tool run sharpfuzz "$ART/fuzz/bin/Vfio.Migration.dll"
}

fuzz_targets() {
    local seconds=$1 bin=$ART/fuzz/bin plain=$FUZZ_PLAIN t out rc found f p=0 n=0
    shift
    local targets=("${FUZZ_TARGETS[@]}")
    [ $# -eq 0 ] || targets=("$@")
    [[ $seconds =~ ^[1-9][0-9]*$ ]] || { log "fuzz: SECONDS must be a positive number, not '$seconds'"; exit 2; }
    if ! fuzz_setup; then
        log "fuzz: FAILED: could not set up afl-fuzz and the instrumented targets"; FAILED=$((FAILED + 1)); return 0
    fi
    # No CPU frequency governor, core pattern or free core to bind to is needed: none changes what a run finds.
    export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 AFL_SKIP_BIN_CHECK=1 AFL_NO_UI=1
    for t in "${targets[@]}"; do
        out=$ART/fuzz/$t
        log "fuzzing $t for $seconds s"
        set +e
        timeout $((seconds + 120)) afl-fuzz -i "tests/Vfio.Fuzz/corpus/$t" -o "$out" -t 10000 -m none -V "$seconds" \
            -- dotnet "$bin/Vfio.Fuzz.dll" fuzz "$t" >"$out.log" 2>&1
        rc=$?
        set -e
        found=$(find "$out/default/crashes" "$out/default/hangs" -name 'id:*' 2>/dev/null | sort)
        if [ $rc -ne 0 ] || [ ! -s "$out/default/fuzzer_stats" ]; then
            log "fuzz $t: FAILED: afl-fuzz exited $rc (a corpus input that crashes stops it too):"
            grep -E 'ABORT|Location|crash' "$out.log" | tail -n 5 >&2 || tail -n 5 "$out.log" >&2
            n=$((n + 1))
        elif [ -n "$found" ]; then
            log "fuzz $t: FAILED: $(echo "$found" | wc -l) inputs break the decoder contract:"
            for f in $found; do
                cp "$f" "$ART/fuzz/crashes/$t-$(basename "$(dirname "$f")")-$(sha1sum "$f" | cut -c1-12)"
            done
            ls "$ART/fuzz/crashes/$t-"* >&2
            dotnet "$plain/Vfio.Fuzz.dll" replay "$t" "$ART/fuzz/crashes/$t-"* | grep VIOLATION >&2 || true
            n=$((n + 1))
        else
            log "fuzz $t: passed ($(awk -F': ' '/^execs_done/ { e = $2 } /^corpus_count/ { c = $2 } END { print e " inputs, corpus " c }' \
                "$out/default/fuzzer_stats"); new inputs in $out/default/queue)"
            p=$((p + 1))
        fi
    done
    log "fuzz: $p passed, $n failed, 0 skipped"
    PASSED=$((PASSED + p)); FAILED=$((FAILED + n))
}

hwtests_dll() { echo "$ROOT/hwtests/Vfio.HwTests/bin/$CONFIG/net10.0/Vfio.HwTests.dll"; }

# Hardware tiers: real VFs named in VFIO_HW_DEVICES on this host; our simulated kernel device in a QEMU guest.
hw_tiers() {
    # Without VFIO_HW_DEVICES every hardware test skips, saying why, and is counted as skipped.
    [ -n "${VFIO_HW_DEVICES:-}" ] || log "hardware tier: VFIO_HW_DEVICES names no real VFs on this host; its tests will skip"
    run_xunit "$(hwtests_dll)" hardware
    local why rc
    if ! why=$("$GUEST" --check 2>&1); then
        log "kernel-in-the-loop tier skipped: ${why##*$'\n'}"
        return 0
    fi
    mkdir -p "$ART/test-results/guest"
    # The C smoke test of our kernel module: one test, its own checks counted inside it.
    log "running the kernel-in-the-loop smoke test in a QEMU guest"
    set +e; "$GUEST" -q --results "$ART/test-results/guest/smoke" --smoke; rc=$?; set -e
    tail -n 1 "$ART/test-results/guest/smoke/guest-stdout.txt" >&2 2>/dev/null || true
    if [ $rc -eq 0 ]; then PASSED=$((PASSED + 1)); log "guest smoke: passed"; else FAILED=$((FAILED + 1)); log "guest smoke: FAILED (exit $rc)"; fi
    # The hardware tests against the module's devices, then the engine's again with a PF that allows only 2 concurrent loads.
    guest_xunit guest hw
    guest_xunit guest-limit2 hw-limit2 --module-args max_concurrent_loads=2 -- -method "Vfio.HwTests.EngineTests.*" \
        -method "Vfio.HwTests.LiveEngineTests.Live_migration_*"
    # Real SR-IOV and vfio-pci: QEMU's igb PF and its VFs behind an emulated Intel IOMMU, run by the self-contained
    # hardware-test executable a lab host gets, which also writes the JUnit report a CI server reads.
    HWTESTS_EXE="$ART/hwtests/Vfio.HwTests" guest_xunit guest-igb hw-igb --igb --devices 1 -- -class Vfio.HwTests.SriovTests \
        -jUnit /results/guest.junit.xml
    if [ -s "$ART/test-results/guest/hw-igb/guest.xml" ] && ! grep -q '<testsuites' "$ART/test-results/guest/hw-igb/guest.junit.xml"; then
        log "guest-igb: no JUnit report from the self-contained hardware tests"; FAILED=$((FAILED + 1))
    fi
}

GUEST=hwtests/guest/run-in-guest.sh

# guest_xunit TIER DIR [harness options] [-- test options]: the hardware tests in a QEMU guest, counted from their XML report.
guest_xunit() {
    local tier=$1 results=$ART/test-results/guest/$2 harness=() tests=() rc
    shift 2
    while [ $# -gt 0 ] && [ "$1" != -- ]; do harness+=("$1"); shift; done
    [ $# -gt 0 ] && { shift; tests=("$@"); }
    rm -f "$results/guest.xml"
    log "running $tier in a QEMU guest ${harness[*]}"
    local runner=(dotnet "$(hwtests_dll)")
    [ -n "${HWTESTS_EXE:-}" ] && runner=("$HWTESTS_EXE")
    set +e; "$GUEST" -q --results "$results" "${harness[@]}" -- "${runner[@]}" "${tests[@]}" -xml /results/guest.xml -noColor; rc=$?; set -e
    if [ $rc -eq 77 ]; then
        log "$tier skipped: the harness cannot run it here (its reason is printed above)"; return 0
    fi
    if [ ! -s "$results/guest.xml" ]; then
        log "$tier: no report (harness exit $rc; see $results)"; FAILED=$((FAILED + 1)); return 0
    fi
    add_counts "$results/guest.xml" "$tier"
    # A clean report from a guest that still failed (a kernel warning in dmesg, a module that would not unload) is a failure too.
    if [ $rc -ne 0 ] && ! grep -qE ' (failed|errors)="[1-9]' "$results/guest.xml"; then
        log "$tier: harness exited $rc although every test passed: see $results"; FAILED=$((FAILED + 1))
    fi
}

# The peer comparison (a measurement, not a test): QEMU 10 and vfio-mig migrate the same mdev devices of our kernel module
# in one guest run, stop-copy and live, 1/2/4 device pairs (docs/performance.md, "Against QEMU 10"). Extra arguments go
# to Vfio.PeerBench (e.g. --repeat 3, --counts 1,2); QEMU_PEER_MODULE_ARGS overrides the module's parameters.
QEMU_PEER_MODULE_ARGS=${QEMU_PEER_MODULE_ARGS:-"state_size=8388608 load_us_per_mib=25000 save_us_per_mib=2000"}
qemu_peer() {
    install_prereqs
    dotnet build Vfio.sln -c $CONFIG -nologo -v quiet -clp:ErrorsOnly
    publish_cli
    local results=$ART/qemu-peer rc
    rm -rf "$results"; mkdir -p "$results"
    log "QEMU 10 against vfio-mig in a QEMU guest (module: $QEMU_PEER_MODULE_ARGS)"
    set +e
    "$GUEST" -q --qemu10 --devices 8 --timeout 3600 --module-args "$QEMU_PEER_MODULE_ARGS" --results "$results" -- \
        dotnet "$ROOT/hwtests/Vfio.PeerBench/bin/$CONFIG/net10.0/Vfio.PeerBench.dll" --vfio-mig "$ART/bin/vfio-mig" --out /results "$@"
    rc=$?
    set -e
    cat "$results/peer.md" 2>/dev/null || log "no table: see $results/guest-stdout.txt and guest-stderr.txt"
    log "qemu-peer: exit $rc; traces, reports and the table in $results"
    return $rc
}

# What OpenSSL's own TLS costs here against plaintext, in C with no .NET (a measurement, not a test): the baseline for
# `vfio-mig bench --null --tls` (docs/performance.md, TLS). Arguments: [CHANNELS [MIB_TOTAL [REPEAT]]].
tls_baseline() {
    install_prereqs
    if [ ! -e /usr/include/openssl/ssl.h ]; then
        [ "$(id -u)" -eq 0 ] || { log "missing libssl-dev; run as root (or install it) first"; exit 1; }
        log "installing libssl-dev"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev >/dev/null
    fi
    mkdir -p "$ART/tls-baseline"
    cc -O2 -Wall -Wextra -o "$ART/tls-baseline/tls_loopback" native/tls-baseline/tls_loopback.c -lssl -lcrypto -lpthread
    "$ART/tls-baseline/tls_loopback" "$@"
}

run_main() {
    build
    mkdir -p "$ART/run"
    "$ART/bin/vfio-mig" loopback --json "$ART/run/report.json" "$@"
}

case "${1:-build}" in
    build) build ;;
    test) test_all ;;
    run) shift; run_main "$@" ;;
    publish) install_prereqs; publish_cli ;;
    qemu-peer) shift; qemu_peer "$@" ;;
    tls-baseline) shift; tls_baseline "$@" ;;
    fuzz) shift; install_prereqs; fuzz_targets "${1:-600}" "${@:2}"; echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"; [ "$FAILED" -eq 0 ] ;;
    *) echo "usage: ./build.sh [build|test|run|publish|qemu-peer [ARGS...]|tls-baseline [CHANNELS [MIB [REPEAT]]]|fuzz [SECONDS [TARGET...]]]" >&2; exit 2 ;;
esac
