#!/bin/sh
# Everything the machine that runs the lab needs, on a fresh Debian 12 (run as root):
# QEMU, mmdebstrap for the image, vde2 for the VMs' private switches, an SSH client,
# Python's venv, sfdisk (unit tests write GPT attributes on image files), ruby (the unit
# tests evaluate the Vagrantfile against machines.json), and for the Vagrant lab Vagrant
# with its libvirt provider, libvirtd (started by the tests in a namespace of their own, never
# as a system service), dnsmasq for its networks, iptables, rsync (Vagrant's synced folder)
# and ip (the namespace).
# apt runs only when something is missing, so a second `make` is quick.
set -eu
export DEBIAN_FRONTEND=noninteractive
need="qemu-system-x86 qemu-utils mmdebstrap vde2 openssh-client e2fsprogs fdisk python3 python3-venv python3-pip ca-certificates make ruby
vagrant vagrant-libvirt libvirt-daemon-system dnsmasq-base iptables rsync iproute2"
missing=""
for p in $need; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "host-setup: missing Debian packages:$missing; run as root (or install them)" >&2
        exit 1
    fi
    echo "host-setup: installing$missing"
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi
echo "host-setup: host packages present"
