#!/bin/sh
# Lab-only image customization, run inside the image chroot after provision/common.sh.
# What Vagrant gets from its box (SSH access, a NAT NIC, a synced folder) the QEMU lab gets
# here. Usage: image-customize.sh AUTHORIZED_KEY_FILE
set -eu
key_file=$1

# SSH as root with the lab's own key only (the tests reach each VM on a loopback port).
install -d -m 700 /root/.ssh
install -m 600 "$key_file" /root/.ssh/authorized_keys
cat > /etc/ssh/sshd_config.d/shadowlun-lab.conf <<'SSHD'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
SSHD

# The SSH NIC is QEMU user networking with restrict=on: udev names it lab0 by MAC and one
# `ip` call gives it a static address, no default route, so nothing in a VM can even try to
# leave the machine (systemd-networkd did the same but cost ~20 s of boot under TCG).
cat > /etc/systemd/network/10-lab0.link <<'LINK'
[Match]
MACAddress=52:54:00:ee:00:01

[Link]
Name=lab0
LINK
cat > /etc/systemd/system/lab0.service <<'UNIT'
[Unit]
Description=shadowlun lab: SSH NIC address
BindsTo=sys-subsystem-net-devices-lab0.device
After=sys-subsystem-net-devices-lab0.device
Before=network.target ssh.service
Wants=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip addr replace 10.0.2.15/24 dev lab0
ExecStart=/sbin/ip link set lab0 up

[Install]
WantedBy=sys-subsystem-net-devices-lab0.device
UNIT
systemctl enable lab0.service >/dev/null
systemctl disable systemd-networkd.service systemd-networkd.socket >/dev/null 2>&1 || true

# Root on the first virtio disk; this checkout read-only at /shadowlun over virtio-9p.
mkdir -p /shadowlun
cat > /etc/fstab <<'FSTAB'
/dev/vda    /           ext4  defaults,noatime,errors=remount-ro  0 1
shadowlun   /shadowlun  9p    trans=virtio,version=9p2000.L,ro,msize=262144,nofail  0 0
FSTAB

# A small initramfs: only what finds the root disk (QEMU TCG unpacks it at every boot).
sed -i 's/^MODULES=.*/MODULES=list/' /etc/initramfs-tools/initramfs.conf
printf '%s\n' virtio_pci virtio_blk ext4 > /etc/initramfs-tools/modules
update-initramfs -u -k all >/dev/null

# Every VM made from this image gets its own machine-id at first boot.
: > /etc/machine-id
echo lab > /etc/hostname
passwd -l root >/dev/null
