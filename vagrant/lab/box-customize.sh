#!/bin/sh
# The Vagrant box made from the lab image: run inside a copy of the image (chroot) by box.py.
# What Vagrant expects of a box, and nothing of the lab's QEMU-only access:
#  - the `vagrant` user, with Vagrant's insecure public key (Vagrant swaps in a key of its
#    own at the first `vagrant up`) and passwordless sudo;
#  - sudo and rsync (Vagrant's privileged provisioners, its rsync synced folder), the only
#    packages beyond provision/packages.txt, installed while the box is built so the box
#    needs no network later;
#  - DHCP on the provider's NIC (systemd-networkd) instead of the lab's static SSH NIC;
#  - no 9p mount of the checkout: Vagrant rsyncs it to /shadowlun.
# Usage: box-customize.sh VAGRANT_PUBLIC_KEY_FILE
set -eu
key_file=$1
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends sudo rsync >/dev/null
apt-get clean
rm -rf /var/lib/apt/lists/*

useradd --create-home --shell /bin/bash vagrant
install -d -m 700 -o vagrant -g vagrant /home/vagrant/.ssh
install -m 600 -o vagrant -g vagrant "$key_file" /home/vagrant/.ssh/authorized_keys
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/vagrant
chmod 440 /etc/sudoers.d/vagrant
rm -f /root/.ssh/authorized_keys   # the lab's key logs in to the QEMU lab only

# The lab's NIC for SSH (a fixed MAC on QEMU user networking) does not exist under Vagrant.
systemctl disable lab0.service >/dev/null
rm -f /etc/systemd/system/lab0.service /etc/systemd/network/10-lab0.link
# DHCP on the provider's NIC. The lab's own NICs are en* too until machine.py renames them
# san0/mgmt0 and addresses them; no DHCP server answers on those networks. Nothing waits for
# "network online", as in the lab image.
cat > /etc/systemd/network/50-vagrant.network <<'NET'
[Match]
Name=en*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
NET
systemctl enable systemd-networkd.service >/dev/null 2>&1
systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1

sed -i 's|^shadowlun[[:space:]].*9p.*|# & (the QEMU lab only: Vagrant rsyncs the checkout)|' /etc/fstab
echo vagrant-box > /etc/hostname
