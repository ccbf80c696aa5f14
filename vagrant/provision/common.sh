#!/bin/sh
# Provisioning every lab machine needs, whatever its role. Runs as root, twice-safe:
#  - inside the image chroot while the QEMU lab image is built (packages already there), and
#  - on a fresh Debian 12 Vagrant box (installs the packages first).
# Usage: common.sh [PACKAGES_FILE]   (default: packages.txt beside this script)
set -eu
here=$(dirname "$0")
packages_file=${1:-$here/packages.txt}
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

wanted=$(grep -v '^[[:space:]]*#' "$packages_file" | tr -s '[:space:]' ' ')
missing=""
for p in $wanted; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "provision: installing$missing"
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi

# The checkout is mounted (lab: virtio-9p) or synced (Vagrant) at /shadowlun; make its
# packages importable by the system python3, which has rtslib-fb, pyudev and pyroute2.
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
mkdir -p "$site"
echo /shadowlun > "$site/shadowlun.pth"

# Nothing in the lab may reach out or wake up on its own: no apt timers, no scrubbing.
for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
            e2scrub_reap.service fstrim.timer man-db.timer systemd-timesyncd.service; do
    systemctl mask "$unit" >/dev/null 2>&1 || true
done

mkdir -p /etc/shadowlun
echo "provision: common done"
