#!/bin/sh
# /init of the guest initramfs built by run-in-guest.sh (busybox sh).
# Loads the modules, mounts the host root (read-only) and the results share, creates the
# mdev devices, runs the command chrooted into the host root, checks dmesg, unloads the
# module and powers off.
PATH=/bin
export PATH

log() { echo "[guest] $*"; }
die() {
    log "FATAL: $*"
    [ -d /results ] && echo "setup-failed: $*" >/results/guest-status
    dmesg >/results/guest-dmesg.txt 2>/dev/null
    sync
    poweroff -f
    echo o >/proc/sysrq-trigger
    sleep 5
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 >/proc/sys/kernel/sysrq 2>/dev/null
# loopback networking (no NIC): the migration engine talks TCP over 127.0.0.1
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
hostname vfio-guest

for m in $(cat /modules/order); do
    insmod /modules/$m || die "insmod $m failed"
done

mkdir -p /results
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /results || die "mounting the results share failed"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host || die "mounting the host root failed"

NDEV=8
IGB=0
MODULE_ARGS=
TYPE_NAME=vfio_mig_sim-mig
[ -f /results/.guest-conf ] && . /results/.guest-conf

log "kernel $(uname -r); loading vfio_mig_sim $MODULE_ARGS"
insmod /modules/vfio_mig_sim.ko $MODULE_ARGS || die "insmod vfio_mig_sim failed"

PARENT=/sys/class/vfio_mig_sim/vfio_mig_sim
CREATE=$PARENT/mdev_supported_types/$TYPE_NAME/create
[ -w "$CREATE" ] || die "$CREATE missing"
UUIDS=
SYSFS=
i=0
while [ $i -lt "$NDEV" ]; do
    u=$(cat /proc/sys/kernel/random/uuid)
    echo "$u" >"$CREATE" || die "creating mdev $u failed"
    UUIDS="$UUIDS${UUIDS:+ }$u"
    SYSFS="$SYSFS${SYSFS:+ }/sys/bus/mdev/devices/$u"
    i=$((i + 1))
done
log "created $NDEV mdev devices: $UUIDS"
for u in $UUIDS; do
    echo "$u /sys/bus/mdev/devices/$u $(readlink /sys/bus/mdev/devices/$u/iommu_group)" >>/results/guest-devices.txt
done

# The new root: every top-level entry of the host root, bound read-only from the 9p share,
# plus fresh /proc /sys /dev /tmp /run and the writable /results.
R=/newroot
mount -t tmpfs -o mode=0755 newroot $R
for e in /host/* /host/.[!.]*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    n=${e#/host/}
    case "$n" in proc|sys|dev|tmp|run|results|lost+found) continue ;; esac
    if [ -L "$e" ]; then
        ln -s "$(readlink "$e")" "$R/$n"
    elif [ -d "$e" ]; then
        mkdir "$R/$n" && mount --bind "$e" "$R/$n"
    fi
done
mkdir -p $R/proc $R/sys $R/dev $R/tmp $R/run $R/results
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/shm $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mount -t devpts devpts $R/dev/pts 2>/dev/null
mount -t tmpfs -o mode=1777 tmp $R/tmp
mount -t tmpfs -o mode=0755 run $R/run
mount --bind /results $R/results
for p in ${KEEP_PATHS:-}; do
    [ -d "/host$p" ] && mkdir -p "$R$p" && mount --bind "/host$p" "$R$p"
done

IGB_PF=
if [ "${IGB:-0}" = 1 ]; then
    for d in /sys/bus/pci/devices/*; do
        [ -e "$d/sriov_totalvfs" ] || continue
        case "$(readlink "$d/driver")" in */igb) IGB_PF=${d##*/} ;; esac
    done
    [ -n "$IGB_PF" ] || die "--igb: no igb PF in the guest (lspci: $(ls /sys/bus/pci/devices))"
    log "igb PF $IGB_PF: sriov_totalvfs $(cat /sys/bus/pci/devices/$IGB_PF/sriov_totalvfs), IOMMU group $(readlink /sys/bus/pci/devices/$IGB_PF/iommu_group)"
fi

cat >$R/run/vfio-mig-sim.env <<EOF
export VFIO_MIG_SIM_DEVICES="$UUIDS"
export VFIO_MIG_SIM_SYSFS="$SYSFS"
export VFIO_MIG_SIM_PARENT="$PARENT"
export VFIO_MIG_SIM_TYPE="$TYPE_NAME"
export VFIO_MIG_SIM_KERNEL="$(uname -r)"
export VFIO_MIG_IGB_PF="$IGB_PF"
EOF

log "running the command"
dmesg -c >/results/guest-dmesg-boot.txt
# stdout goes to a file (a pipe would stay open as long as any background child of the
# command lives); the console follows it. The command runs in the foreground: a background job
# of a non-interactive shell starts with SIGINT ignored, and the tests send SIGINT on purpose.
: >/results/guest-stdout.txt
tail -f /results/guest-stdout.txt &
TPID=$!
chroot $R /bin/sh -c '. /run/vfio-mig-sim.env; exec /bin/bash /results/.guest-run.sh' \
    </dev/null >/results/guest-stdout.txt 2>/results/guest-stderr.txt
RC=$?
echo $RC >/results/guest-exit-code
sleep 1
kill $TPID 2>/dev/null
log "command exit code $RC"

STATUS=ok
dmesg >/results/guest-dmesg.txt
PAT='WARNING:|BUG:|Oops|Call Trace|general protection|UBSAN|KASAN|circular locking|blocked for more than|refcount_t:|list_add corruption|list_del corruption'
grep -qE "$PAT" /results/guest-dmesg-boot.txt /results/guest-dmesg.txt && STATUS="dmesg-warning"

# tear down: leftover processes (they could hold a device open), the chroot's mounts,
# the devices, the module
kill -TERM -1 2>/dev/null; sleep 1; kill -KILL -1 2>/dev/null; sleep 1
# should removing a device block (something still holds it), give up after 120 s
( sleep 120; log "teardown stuck"; echo "unload-failed: teardown stuck (device still in use?)" >/results/guest-status
  sync; poweroff -f ) &
for p in ${KEEP_PATHS:-}; do umount "$R$p" 2>/dev/null; done
umount $R/results $R/run $R/tmp $R/dev/pts $R/dev/shm $R/dev $R/sys $R/proc 2>/dev/null
for u in $UUIDS; do
    echo 1 >/sys/bus/mdev/devices/$u/remove || { [ $STATUS = ok ] && STATUS="unload-failed: removing $u"; }
done
rmmod vfio_mig_sim || { [ $STATUS = ok ] && STATUS="unload-failed: rmmod vfio_mig_sim"; }
dmesg >/results/guest-dmesg-unload.txt
if [ $STATUS = ok ] && grep -qE "$PAT" /results/guest-dmesg-unload.txt; then
    STATUS="dmesg-warning (after unload)"
fi
log "status: $STATUS"
echo "$STATUS" >/results/guest-status
sync
umount /results 2>/dev/null
poweroff -f
echo o >/proc/sysrq-trigger
sleep 10
