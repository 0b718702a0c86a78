#!/bin/sh
# Builds the node lane's VM image: Debian 12 (bookworm) with systemd as PID 1 on a pure cgroup v2
# hierarchy, AppArmor, and what the e2e suites call (CNI plugins, busybox, Debian's registry,
# iptables, openssl). Debian packages only. The image is cached in $NODE_CACHE (outside the repo)
# under the hash of this file, so it is rebuilt only when this recipe changes.
#
#   image.sh            prints the directory holding base.img, vmlinuz and initrd.img, building it first
#                       when it is missing
set -eu

NODE_CACHE="${NODE_CACHE:-/var/cache/berth-node}"
MIRROR="${NODE_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="systemd,systemd-sysv,dbus,linux-image-amd64,initramfs-tools,kmod,udev,apparmor,\
iproute2,iptables,containernetworking-plugins,busybox-static,docker-registry,openssl,util-linux,\
libseccomp2,procps"
SIZE=6G

recipe_hash=$(sha256sum "$0" | cut -c1-16)
out="$NODE_CACHE/$recipe_hash"
if [ -f "$out/done" ]; then
  echo "$out"
  exit 0
fi

mkdir -p "$NODE_CACHE"
work=$(mktemp -d "$NODE_CACHE/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"

echo "node image: debootstrap bookworm into $root (a few minutes)" >&2
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -30 "$work/debootstrap.log" >&2
  exit 1
}

# The guest: root on the first disk, the run's payload (berthd, test binaries, the run script) on
# the second, mounted at /opt/berth-node by the unit that runs it.
echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" >"$root/etc/fstab"
echo berth-node >"$root/etc/hostname"
printf '127.0.0.1 localhost berth-node\n::1 localhost\n' >"$root/etc/hosts"
# No login prompt on the console the host reads: nothing there but the kernel and the results.
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$root/etc/systemd/system/getty@tty1.service"
# The registry the tests start themselves; Debian's own unit would hold port 5000.
ln -sf /dev/null "$root/etc/systemd/system/docker-registry.service"
# Loop devices for the tests that build file systems.
echo loop >"$root/etc/modules-load.d/berth-node.conf"

cat >"$root/etc/systemd/system/berth-node.service" <<'UNIT'
[Unit]
Description=berth node lane: the run on the payload disk
After=multi-user.target
Wants=multi-user.target

[Service]
Type=oneshot
ExecStartPre=/bin/mkdir -p /opt/berth-node
ExecStartPre=/bin/mount -o ro /dev/vdb /opt/berth-node
ExecStart=/bin/sh -c '/opt/berth-node/run >/dev/ttyS1 2>&1; echo "berth-node: exit $?" >/dev/ttyS1'
ExecStopPost=/bin/systemctl --no-block poweroff
StandardOutput=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/berth-node.service "$root/etc/systemd/system/multi-user.target.wants/berth-node.service"

cp "$root"/boot/vmlinuz-* "$work/vmlinuz"
cp "$root"/boot/initrd.img-* "$work/initrd.img"
chmod 0644 "$work/vmlinuz" "$work/initrd.img"
rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*

echo "node image: mkfs.ext4 -d ($SIZE, sparse)" >&2
mkfs.ext4 -q -F -L berth-node -d "$root" "$work/base.img" "$SIZE" >&2
rm -rf "$root"
mkdir -p "$out"
mv "$work/base.img" "$work/vmlinuz" "$work/initrd.img" "$out/"
touch "$out/done"
echo "$out"
