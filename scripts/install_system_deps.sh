#!/usr/bin/env bash
# System parts of the simulators on a CPU-only Debian bookworm machine: EGL / OSMesa for MuJoCo (LIBERO) and a
# Vulkan driver that SAPIEN / ManiSkill3 can render with (Mesa lavapipe >= 25 from bookworm-backports).
# Idempotent; run as root (CI) or through sudo.
set -euo pipefail

MIN_MESA_MAJOR=25
SOURCE_FILE=/etc/apt/sources.list.d/backports.sources

if [ "$(id -u)" -ne 0 ]; then
    echo "install_system_deps.sh: run as root (e.g. sudo $0)" >&2
    exit 1
fi

missing=""
for package in libegl1 libosmesa6; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing="$missing $package"
done
if [ -n "$missing" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi

installed="$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)"
if [ -n "$installed" ] && dpkg --compare-versions "$installed" ge "$MIN_MESA_MAJOR" \
        && dpkg-query -W libvulkan1 >/dev/null 2>&1; then
    exit 0  # already done
fi

if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # Reuse the URIs and keyring of the existing Debian source (deb822 debian.sources or sources.list).
    uri="$(awk '/^URIs:/ && /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    key="$(awk '/^Signed-By:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    uri="${uri:-http://deb.debian.org/debian}"
    key="${key:-/usr/share/keyrings/debian-archive-keyring.gpg}"
    cat > "$SOURCE_FILE" <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: $key
SRC
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1
echo "install_system_deps.sh: mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)"
