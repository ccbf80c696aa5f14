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

# The checkout is read-only here, so python3 could keep no bytecode of it and would compile it
# at every start (seconds under TCG). Every python3 keeps its bytecode under one writable
# prefix instead, as an installed package keeps its own; the system's modules are compiled there
# now, once, and the lab compiles the checkout's when it provisions a VM.
pycache=/var/cache/shadowlun/pycache
mkdir -p "$pycache"
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
echo "import sys; sys.pycache_prefix = sys.pycache_prefix or '$pycache'" > "$site/shadowlun-pycache.pth"
python3 -m compileall -q -j 0 -x '/(test|tests|idlelib|lib2to3|tkinter|turtledemo)/' \
    "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" /usr/lib/python3/dist-packages \
    >/dev/null || true  # a module that does not compile is only compiled again at its import

# A small initramfs: only what finds the root disk (QEMU TCG unpacks it at every boot).
sed -i 's/^MODULES=.*/MODULES=list/' /etc/initramfs-tools/initramfs.conf
printf '%s\n' virtio_pci virtio_blk ext4 > /etc/initramfs-tools/modules
update-initramfs -u -k all >/dev/null

# Every VM made from this image gets its own machine-id at first boot.
: > /etc/machine-id
echo lab > /etc/hostname
passwd -l root >/dev/null
