#!/usr/bin/env bash
# Kernel-in-the-loop tier: boots a Debian kernel under QEMU TCG with our vfio_mig_sim
# module loaded and N mdev devices created, chroots into this machine's root filesystem
# (shared read-only over virtio-9p) and runs COMMAND there.
#
#   hwtests/guest/run-in-guest.sh [options] [--] COMMAND [ARGS...]
#   hwtests/guest/run-in-guest.sh --check        # can this tier run here? (exit 0 yes, 77 no)
#   hwtests/guest/run-in-guest.sh --smoke        # run native/guest-smoke in the guest
#
# Options:
#   --results DIR       host directory shared writable into the guest at /results
#                       (default: <repo>/artifacts/guest); harness files go there too
#   --devices N         mdev devices to create (default 8, env VFIO_MIG_SIM_NDEV)
#   --module-args ARGS  insmod parameters for vfio_mig_sim, e.g. "load_us_per_mib=5000"
#   --env NAME=VALUE    extra environment for COMMAND (repeatable)
#   --mem MIB           guest RAM (default 3072)     --cpus N   guest vCPUs (default 2)
#   --timeout SECONDS   whole guest run (default 1500)
#   --kernel auto|bpo|stable   6.12 from bookworm-backports (default, falls back) or 6.1
#   --kernel-args ARGS  extra kernel command line, e.g. "loglevel=7 softlockup_panic=1"
#   --igb               also give the guest an emulated SR-IOV NIC (QEMU's igb, an 82576 PF with up to 7 VFs)
#                       behind an emulated Intel IOMMU, and two e1000 NICs sharing one IOMMU group behind a
#                       PCIe-to-PCI bridge, with the igb, e1000 and vfio-pci modules loaded; needs QEMU 8+
#                       (installed from bookworm-backports when the machine's QEMU lacks igb)
#   --qemu10            COMMAND runs QEMU itself (the peer comparison): the host's qemu-system-x86_64, which the guest
#                       sees, must be QEMU 10+ (VFIO multifd device-state transfer); installed from bookworm-backports
#                       when the machine's is older (bookworm's is 7.2)
#   --check             only report whether the tier can run, and why not
#   --smoke             COMMAND := the native/guest-smoke binary (built here)
#   -q                  do not echo the guest console
#
# Inside the guest COMMAND runs as root, chrooted into the host's root (read-only), with
# /proc /sys /dev, a tmpfs /tmp (with the repo, the working directory and the command's folder
# bound back in where they live under /tmp or /run), HOME=/tmp/home, the caller's working directory, and:
#   VFIO_MIG_SIM_DEVICES   "uuid1 uuid2 ..." of the created mdev devices
#   VFIO_MIG_SIM_SYSFS     "/sys/bus/mdev/devices/uuid1 ..." (same order)
#   VFIO_MIG_SIM_PARENT    sysfs path of the parent (simulated PF)
#   VFIO_MIG_SIM_TYPE      mdev type name (vfio_mig_sim-mig)
#   VFIO_MIG_SIM_RESULTS   /results (writable, copied to the host's --results DIR)
#   VFIO_MIG_SIM_GUEST=1, VFIO_MIG_SIM_KERNEL=<uname -r>
#   VFIO_MIG_SIM_KCONFIG   the guest kernel's build config (a file of the host's cache, seen through the shared root)
#   VFIO_MIG_IGB_PF        with --igb: the PCI address of the igb PF
#
# Exit status: COMMAND's exit status, or
#   77 the tier cannot run here (reason printed), 2 usage,
#   124 the guest timed out, 125 the guest did not boot / produced no result,
#   126 COMMAND succeeded but dmesg showed a WARNING/BUG/Oops (or unloading failed).
set -uo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SELF_DIR/../.." && pwd)
CACHE=${VFIO_MIG_SIM_CACHE:-/var/cache/vfio-mig-sim}
NDEV=${VFIO_MIG_SIM_NDEV:-8}
MEM=3072
CPUS=2
TIMEOUT=1500
KERNEL_PREF=auto
KERNEL_ARGS=${VFIO_MIG_SIM_KERNEL_ARGS:-}
MODULE_ARGS=""
RESULTS=""
CHECK=0
SMOKE=0
QUIET=0
EXTRA_ENV=()
TYPE_NAME=vfio_mig_sim-mig
IGB=0
QEMU10=0

say() { printf '[run-in-guest] %s\n' "$*" >&2; }
cannot() { echo "cannot run the kernel-in-the-loop tier: $*"; exit 77; }
usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --check) CHECK=1 ;;
        --smoke) SMOKE=1 ;;
        --results) RESULTS=$2; shift ;;
        --devices) NDEV=$2; shift ;;
        --module-args) MODULE_ARGS=$2; shift ;;
        --env) EXTRA_ENV+=("$2"); shift ;;
        --mem) MEM=$2; shift ;;
        --cpus) CPUS=$2; shift ;;
        --timeout) TIMEOUT=$2; shift ;;
        --kernel) KERNEL_PREF=$2; shift ;;
        --kernel-args) KERNEL_ARGS=$2; shift ;;
        --igb) IGB=1 ;;
        --qemu10) QEMU10=1 ;;
        -q) QUIET=1 ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) break ;;
    esac
    shift
done
CMD=("$@")
case "$NDEV" in ''|*[!0-9]*) echo "--devices wants a number" >&2; exit 2 ;; esac
[ "$NDEV" -le 32 ] || { echo "--devices: at most 32" >&2; exit 2; }
for e in "${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}"; do
    [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || { echo "--env wants NAME=VALUE, got $e" >&2; exit 2; }
done
if [ $CHECK -eq 0 ] && [ $SMOKE -eq 0 ] && [ ${#CMD[@]} -eq 0 ]; then usage; fi

# ------------------------------------------------------------------ preconditions
[ "$(uname -s)" = Linux ] || cannot "not Linux"
[ "$(uname -m)" = x86_64 ] || cannot "needs an x86_64 host (got $(uname -m))"
[ "$(id -u)" -eq 0 ] || cannot "needs root (apt-get, extracting the kernel, 9p export of /)"
command -v apt-get >/dev/null && [ -r /etc/os-release ] || cannot "needs a Debian machine with apt-get"
. /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] || say "warning: written for Debian bookworm, this is ${PRETTY_NAME:-unknown}"
avail_mib=$(awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo)
[ "$avail_mib" -ge $((MEM + 512)) ] || cannot "needs $((MEM + 512)) MiB of free memory for a ${MEM} MiB guest, have ${avail_mib} MiB"
mkdir -p "$CACHE" || cannot "cannot create cache $CACHE"
# One guest run at a time on this machine (they are CPU heavy); --check does not wait.
take_lock() {
    exec 9>"$CACHE/.lock"
    if ! flock -n 9; then
        say "waiting for another guest run to finish (lock $CACHE/.lock)"
        flock -w "${VFIO_MIG_SIM_LOCK_WAIT:-1800}" 9 || cannot "another guest run still holds $CACHE/.lock"
    fi
}

APT_UPDATED=0
apt_update() {
    [ $APT_UPDATED -eq 1 ] && return 0
    say "apt-get update"
    timeout 300 apt-get update -q >"$CACHE/apt-update.log" 2>&1 || { tail -5 "$CACHE/apt-update.log" >&2; return 1; }
    APT_UPDATED=1
}

# Host tools (installed into the host: these are ordinary tools, not the kernel).
need_pkgs() {
    local p=() ; command -v qemu-system-x86_64 >/dev/null || p+=(qemu-system-x86)
    [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -x insmod >/dev/null && ! ldd /bin/busybox >/dev/null 2>&1 || p+=(busybox-static)
    command -v xz >/dev/null || p+=(xz-utils)
    command -v cpio >/dev/null || p+=(cpio)
    command -v depmod >/dev/null || p+=(kmod)
    command -v make >/dev/null || p+=(make)
    command -v gcc-12 >/dev/null || p+=(gcc-12)
    command -v cc >/dev/null || p+=(gcc)
    [ -e /usr/include/linux/vfio.h ] || p+=(linux-libc-dev)
    [ -e /usr/include/stdio.h ] || p+=(libc6-dev)
    command -v flock >/dev/null || p+=(util-linux)
    # the kernel's kbuild helpers (fixdep, modpost) are dynamically linked against these
    dpkg -s libelf1 >/dev/null 2>&1 || p+=(libelf1)
    dpkg -s libssl3 >/dev/null 2>&1 || p+=(libssl3)
    echo "${p[@]+"${p[@]}"}"
}

qemu_has_igb() { command -v qemu-system-x86_64 >/dev/null && qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"'; }
qemu_major() { qemu-system-x86_64 --version 2>/dev/null | sed -n '1s/.*version \([0-9]*\)\..*/\1/p'; }
qemu_is_10() { local m; m=$(qemu_major); [ -n "$m" ] && [ "$m" -ge 10 ]; }

# The bookworm-backports suite on the machine's configured Debian mirror.
debian_uri() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        # deb822 stanzas: print the URIs of a stanza whose Suites include bookworm
        uri=$(awk 'BEGIN{RS=""; FS="\n"} /(^|\n)Suites:[^\n]*(^|[ \t])bookworm([ \t]|\n|$)/ {
                  for (i = 1; i <= NF; i++) if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); split($i, a, /[ \t]+/); print a[1]; exit } }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return 0; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        uri=$(awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                   if ($(i+1) == "bookworm") { print $i; exit } }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return 0; }
    done
    return 1
}

ensure_backports_source() {
    if grep -rqsE '(^|[[:space:]])bookworm-backports([[:space:]]|$)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return 0
    fi
    local uri; uri=$(debian_uri) || return 1
    say "adding bookworm-backports from the configured mirror $uri"
    cat >/etc/apt/sources.list.d/vfio-mig-sim-backports.sources <<EOF
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    APT_UPDATED=0
}

# Picks the kernel: prints KREL (e.g. 6.12.95+deb12-amd64).
pick_kernel() {
    local v dep
    if [ "$KERNEL_PREF" != stable ]; then
        v=$(apt-cache madison linux-image-amd64 2>/dev/null | awk -F'|' '$3 ~ /bookworm-backports/ {gsub(/ /, "", $2); print $2; exit}')
        if [ -n "$v" ]; then
            dep=$(apt-cache show "linux-image-amd64=$v" 2>/dev/null | sed -n 's/^Depends: //p' | head -1 | tr ',|' '\n\n' | grep -o 'linux-image-[^ ]*' | head -1)
            [ -n "$dep" ] && { echo "${dep#linux-image-}" | sed 's/-unsigned$//'; return 0; }
        fi
        [ "$KERNEL_PREF" = bpo ] && return 1
        say "bookworm-backports kernel not available: falling back to bookworm's"
    fi
    v=$(apt-cache policy linux-image-amd64 2>/dev/null | awk '/Candidate:/ {print $2}')
    [ -n "$v" ] && [ "$v" != "(none)" ] || return 1
    dep=$(apt-cache show "linux-image-amd64=$v" 2>/dev/null | sed -n 's/^Depends: //p' | head -1 | tr ',|' '\n\n' | grep -o 'linux-image-[^ ]*' | head -1)
    [ -n "$dep" ] && echo "${dep#linux-image-}" | sed 's/-unsigned$//'
}

# Downloads (apt-get download, never installed) and dpkg -x's the kernel image, headers,
# common headers and kbuild into $CACHE/kernels/KREL/root.
fetch_kernel() {
    local krel=$1 dir=$CACHE/kernels/$1 pkgs p deps
    [ -f "$dir/.done" ] && return 0
    rm -rf "$dir"; mkdir -p "$dir/deb" "$dir/root"
    deps=$(apt-cache show "linux-headers-$krel" 2>/dev/null | sed -n 's/^Depends: //p' | head -1 | tr ',' '\n' | sed 's/^ *//; s/ .*//')
    pkgs="linux-image-$krel linux-headers-$krel $(echo "$deps" | grep -E '^linux-(headers-.*-common|kbuild-)' | tr '\n' ' ')"
    say "downloading $pkgs"
    (cd "$dir/deb" && timeout 900 apt-get download -q $pkgs >"$dir/download.log" 2>&1) || { tail -5 "$dir/download.log" >&2; return 1; }
    for p in "$dir"/deb/*.deb; do dpkg -x "$p" "$dir/root" || return 1; done
    # the headers' Makefile includes the common tree by absolute path: point it into the cache
    sed -i "s#^include /usr/src/#include $dir/root/usr/src/#" "$dir/root/usr/src/linux-headers-$krel/Makefile"
    depmod -b "$dir/root" "$krel" || return 1
    touch "$dir/.done"
}

# ------------------------------------------------------------------ set up
missing=$(need_pkgs)
KFILE=$CACHE/kernel.$KERNEL_PREF
if [ $CHECK -eq 1 ] && [ -z "$missing" ] && [ -s "$KFILE" ] && [ -f "$CACHE/kernels/$(cat "$KFILE")/.done" ]; then
    echo "ok: kernel-in-the-loop tier can run (kernel $(cat "$KFILE"), cached; QEMU TCG, $CPUS vCPUs, $MEM MiB)"
    exit 0
fi
take_lock
missing=$(need_pkgs)
if [ -n "$missing" ]; then
    apt_update || cannot "apt-get update failed (no package mirror reachable?)"
    say "installing $missing"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends $missing >"$CACHE/apt-install.log" 2>&1 ||
        { tail -5 "$CACHE/apt-install.log" >&2; cannot "apt-get install $missing failed"; }
fi
if [ -s "$KFILE" ] && [ -f "$CACHE/kernels/$(cat "$KFILE")/.done" ]; then
    KREL=$(cat "$KFILE")
else
    FELL_BACK=0
    [ "$KERNEL_PREF" = stable ] || ensure_backports_source || say "no Debian bookworm source found to derive bookworm-backports from"
    apt_update || cannot "apt-get update failed (no package mirror reachable?)"
    KREL=$(pick_kernel) || cannot "no Debian kernel package (linux-image-amd64) available from the configured sources"
    if [ "$KERNEL_PREF" = auto ] && ! apt-cache madison linux-image-amd64 2>/dev/null | grep bookworm-backports >/dev/null; then
        FELL_BACK=1
    fi
    fetch_kernel "$KREL" || {
        [ "$KERNEL_PREF" = auto ] || cannot "downloading kernel $KREL failed"
        say "kernel $KREL could not be fetched; trying bookworm's"
        FELL_BACK=1; KERNEL_PREF=stable; KREL=$(pick_kernel) && fetch_kernel "$KREL" || cannot "downloading a kernel failed"
    }
    # remember the choice (not a fallback: next time backports may be reachable again)
    [ $FELL_BACK -eq 1 ] || echo "$KREL" >"$KFILE"
fi
KDIR=$CACHE/kernels/$KREL/root
[ -f "$KDIR/boot/vmlinuz-$KREL" ] || cannot "kernel image missing in $KDIR"
if { [ $IGB -eq 1 ] && ! qemu_has_igb; } || { [ $QEMU10 -eq 1 ] && ! qemu_is_10; }; then
    # bookworm's QEMU 7.2 has neither igb nor the VFIO multifd device-state transfer; bookworm-backports has QEMU 10
    ensure_backports_source || cannot "QEMU $(qemu-system-x86_64 --version | head -1) is too old (igb, QEMU 10) and no bookworm source to find a newer one"
    apt_update || cannot "apt-get update failed (no package mirror reachable?)"
    say "installing qemu-system-x86 from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86 \
        >"$CACHE/apt-install-qemu.log" 2>&1 || { tail -5 "$CACHE/apt-install-qemu.log" >&2; cannot "installing QEMU from bookworm-backports failed"; }
    [ $IGB -eq 0 ] || qemu_has_igb || cannot "--igb: $(qemu-system-x86_64 --version | head -1) still has no igb device"
    [ $QEMU10 -eq 0 ] || qemu_is_10 || cannot "--qemu10: $(qemu-system-x86_64 --version | head -1) is still older than 10"
fi

if [ $CHECK -eq 1 ]; then
    echo "ok: kernel-in-the-loop tier can run (kernel $KREL, QEMU TCG, $CPUS vCPUs, $MEM MiB)"
    exit 0
fi

# ------------------------------------------------------------------ build
BUILD=$CACHE/build/$KREL
rm -rf "$BUILD"; mkdir -p "$BUILD/mod" "$BUILD/initramfs"
cp "$REPO"/native/vfio-mig-sim/*.c "$REPO"/native/vfio-mig-sim/Makefile "$BUILD/mod/"
say "building vfio_mig_sim.ko for $KREL"
if ! make -C "$BUILD/mod" KDIR="$KDIR/usr/src/linux-headers-$KREL" CONFIG_DEBUG_INFO_BTF_MODULES= >"$BUILD/mod/build.log" 2>&1; then
    cat "$BUILD/mod/build.log" >&2; say "module build failed"; exit 125
fi
grep -E 'warning:' "$BUILD/mod/build.log" >&2 || true

if [ $SMOKE -eq 1 ]; then
    say "building guest-smoke"
    mkdir -p "$BUILD/smoke"
    make -C "$REPO/native/guest-smoke" OUT="$BUILD/smoke" >"$BUILD/smoke/build.log" 2>&1 || { cat "$BUILD/smoke/build.log" >&2; exit 125; }
    CMD=("$BUILD/smoke/vfio-smoke" "${CMD[@]+"${CMD[@]}"}")
fi

# initramfs: busybox + the modules (decompressed, in dependency order) + our module
IR=$BUILD/initramfs
mkdir -p "$IR"/{bin,dev,proc,sys,mnt,host,newroot,modules}
cp /bin/busybox "$IR/bin/busybox"
for t in sh mount umount mkdir insmod rmmod cat echo sleep poweroff reboot chroot ln ls grep dmesg sync mknod uname tee rm seq tr head tail kill readlink ip ifconfig hostname; do
    ln -sf busybox "$IR/bin/$t"
done
MODDIR=$KDIR/lib/modules/$KREL
declare -A SEEN=()
ORDER=()
add_mod() { # name as in modules.dep (path relative to MODDIR)
    local rel=$1 d
    [ -n "${SEEN[$rel]:-}" ] && return 0
    SEEN[$rel]=1
    for d in $(awk -F': *' -v m="$rel" '$1 == m {print $2}' "$MODDIR/modules.dep"); do add_mod "$d"; done
    ORDER+=("$rel")
}
find_mod() { awk -F: -v n="$1" '{ b = $1; sub(/.*\//, "", b); sub(/\.ko(\.xz|\.zst|\.gz)?$/, "", b); gsub(/-/, "_", b); if (b == n) { print $1; exit } }' "$MODDIR/modules.dep"; }
GUEST_MODULES="virtio_pci 9pnet_virtio 9p vfio vfio_iommu_type1 mdev"
[ $IGB -eq 1 ] && GUEST_MODULES="$GUEST_MODULES igb e1000 vfio_pci"
for m in $GUEST_MODULES; do
    rel=$(find_mod "$m")
    if [ -z "$rel" ]; then
        grep -qE "/$m\.ko" "$MODDIR/modules.builtin" 2>/dev/null && continue
        say "module $m not found for $KREL"; exit 125
    fi
    add_mod "$rel"
done
: >"$IR/modules/order"
for rel in "${ORDER[@]}"; do
    base=$(basename "$rel"); base=${base%.xz}; base=${base%.zst}; base=${base%.gz}
    case "$rel" in
        *.xz) xz -dc "$MODDIR/$rel" >"$IR/modules/$base" ;;
        *.zst) zstd -dcq "$MODDIR/$rel" >"$IR/modules/$base" ;;
        *.gz) gzip -dc "$MODDIR/$rel" >"$IR/modules/$base" ;;
        *) cp "$MODDIR/$rel" "$IR/modules/$base" ;;
    esac
    echo "$base" >>"$IR/modules/order"
done
cp "$BUILD/mod/vfio_mig_sim.ko" "$IR/modules/"
cp "$SELF_DIR/guest-init.sh" "$IR/init"; chmod +x "$IR/init"
(cd "$IR" && find . | cpio -o -H newc --quiet | gzip -1) >"$BUILD/initramfs.cpio.gz"

# The guest gets fresh /tmp and /run; host folders under them that the command needs (the repo,
# the working directory, the command itself) are bound back in from the read-only host root.
KEEP_PATHS=""
for p in "$REPO" "$PWD" "$(dirname -- "${CMD[0]:-/}")"; do
    case "$p" in /tmp/?*|/run/?*) case " $KEEP_PATHS " in *" $p "*) ;; *) KEEP_PATHS="$KEEP_PATHS $p" ;; esac ;; esac
done

# ------------------------------------------------------------------ results dir + command
RESULTS=${RESULTS:-$REPO/artifacts/guest}
mkdir -p "$RESULTS"; RESULTS=$(cd "$RESULTS" && pwd)
rm -f "$RESULTS"/guest-{status,exit-code,stdout.txt,stderr.txt,dmesg.txt,dmesg-unload.txt,console.log,devices.txt} "$RESULTS"/.guest-*
{
    echo "NDEV=$NDEV"
    printf 'MODULE_ARGS=%q\n' "$MODULE_ARGS"
    printf 'TYPE_NAME=%q\n' "$TYPE_NAME"
    printf 'KEEP_PATHS=%q\n' "$KEEP_PATHS"
    echo "IGB=$IGB"
} >"$RESULTS/.guest-conf"
{
    echo '#!/bin/bash'
    echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    echo 'export HOME=/tmp/home TMPDIR=/tmp LANG=C.UTF-8'
    echo 'export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1 DOTNET_gcServer=0'
    echo 'export VFIO_MIG_SIM_GUEST=1 VFIO_MIG_SIM_RESULTS=/results'
    printf 'export VFIO_MIG_SIM_KCONFIG=%q\n' "$KDIR/boot/config-$KREL"
    for e in "${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}"; do printf 'export %q\n' "$e"; done
    echo 'mkdir -p "$HOME"'
    printf 'cd %q 2>/dev/null || cd /\n' "$PWD"
    printf 'exec'; printf ' %q' "${CMD[@]}"; echo
} >"$RESULTS/.guest-run.sh"

# ------------------------------------------------------------------ boot
say "booting $KREL under QEMU TCG ($CPUS vCPUs, $MEM MiB, $NDEV devices, timeout ${TIMEOUT}s); results in $RESULTS"
T0=$(date +%s)
MACHINE=(-machine q35,accel=tcg)
if [ $IGB -eq 1 ]; then
    # interrupt remapping needs the split irqchip; caching-mode lets the emulated IOMMU serve vfio in the guest
    # and two conventional-PCI NICs behind a PCIe-to-PCI bridge: the IOMMU cannot tell them apart, so they share a group
    MACHINE=(-machine q35,accel=tcg,kernel-irqchip=split -device intel-iommu,intremap=on,caching-mode=on -device igb
             -device pcie-pci-bridge,id=vfio_mig_br -device e1000,bus=vfio_mig_br,addr=1 -device e1000,bus=vfio_mig_br,addr=2)
    KERNEL_ARGS="intel_iommu=on $KERNEL_ARGS"
fi
QEMU=(qemu-system-x86_64 "${MACHINE[@]}" -cpu max -smp "$CPUS" -m "$MEM"
      -display none -monitor none -serial stdio -no-reboot -nic none
      -kernel "$KDIR/boot/vmlinuz-$KREL" -initrd "$BUILD/initramfs.cpio.gz"
      -append "console=ttyS0 loglevel=4 panic=-1 rdinit=/init hung_task_timeout_secs=600 softlockup_panic=1 $KERNEL_ARGS"
      -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
      -virtfs "local,path=${RESULTS//,/,,},mount_tag=results,security_model=none,multidevs=remap")
if [ $QUIET -eq 1 ]; then
    timeout --foreground -k 10 "$TIMEOUT" "${QEMU[@]}" </dev/null >"$RESULTS/guest-console.log" 2>&1
else
    timeout --foreground -k 10 "$TIMEOUT" "${QEMU[@]}" </dev/null 2>&1 | tee "$RESULTS/guest-console.log"
fi
QRC=${PIPESTATUS[0]}
T1=$(date +%s)
say "guest finished in $((T1 - T0)) s (qemu exit $QRC)"
[ -s "$RESULTS/guest-stderr.txt" ] && { say "COMMAND stderr (last 40 lines; all in $RESULTS/guest-stderr.txt):"; tail -40 "$RESULTS/guest-stderr.txt" >&2; }

if [ "$QRC" -eq 124 ] || [ "$QRC" -eq 137 ]; then
    say "guest timed out after ${TIMEOUT}s"; exit 124
fi
if grep -qE 'Kernel panic|soft lockup' "$RESULTS/guest-console.log"; then
    say "the guest kernel panicked or locked up:"
    grep -m1 -B2 -A40 -E 'soft lockup|Kernel panic|BUG:' "$RESULTS/guest-console.log" | grep -E 'BUG|panic|RIP|\] [a-z_0-9.]+\+0x' | head -25 >&2
    exit 125
fi
if [ ! -s "$RESULTS/guest-status" ]; then
    say "guest produced no result (failed to boot or set up): see $RESULTS/guest-console.log"; tail -30 "$RESULTS/guest-console.log" >&2; exit 125
fi
STATUS=$(cat "$RESULTS/guest-status")
RC=$(cat "$RESULTS/guest-exit-code" 2>/dev/null || echo 125)
case "$STATUS" in
    ok) say "COMMAND exit code $RC; dmesg clean" ; exit "$RC" ;;
    dmesg-warning*|unload-failed*)
        say "guest: $STATUS (see $RESULTS/guest-dmesg*.txt)"
        grep -nE 'WARNING:|BUG:|Oops|Call Trace|general protection|UBSAN|KASAN|circular locking|blocked for more than' "$RESULTS"/guest-dmesg*.txt >&2 | head -20
        [ "$RC" -eq 0 ] && exit 126 || exit "$RC" ;;
    *) say "guest setup failed: $STATUS"; exit 125 ;;
esac
