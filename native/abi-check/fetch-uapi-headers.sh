#!/bin/sh
# Unpacks the 6.12 uAPI headers (linux-libc-dev from Debian bookworm-backports) into a cache folder,
# without installing them over the system's headers, and prints the include directory to use.
#
#   native/abi-check/fetch-uapi-headers.sh [CACHE_DIR]     (default /var/cache/vfio-mig-uapi)
#
# The backports suite is reached through the URIs line of the machine's configured Debian source
# (no host name is written here). Exits non-zero, printing why, when the package cannot be had;
# callers then fall back to /usr/include.
set -eu
cache=${1:-/var/cache/vfio-mig-uapi}
inc="$cache/root/usr/include"
if [ -f "$inc/linux/vfio.h" ]; then echo "$inc"; exit 0; fi
command -v apt-get >/dev/null 2>&1 || { echo "no apt-get on this machine" >&2; exit 1; }
command -v dpkg >/dev/null 2>&1 || { echo "no dpkg on this machine" >&2; exit 1; }
mkdir -p "$cache/deb"
cd "$cache/deb"

# 1. The backports suite may already be configured.
if ! apt-get download -q linux-libc-dev/bookworm-backports >/dev/null 2>&1; then
    # 2. Otherwise build a private source list from the configured Debian source's URIs line.
    uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ { if ($0 ~ /(^|[ \t])bookworm([ \t]|$)/ && u != "") { print u; exit } }' \
            /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $0 ~ /[ \t]bookworm[ \t]/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
            /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || { echo "no configured Debian bookworm source to take the URIs line from" >&2; exit 1; }
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/lists/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri bookworm-backports main" >"$tmp/sources.list"
    set -- -o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o "Dir::State::Lists=$tmp/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
    apt-get "$@" -q update >/dev/null
    apt-get "$@" -q download linux-libc-dev/bookworm-backports >/dev/null
fi
deb=$(ls -t linux-libc-dev_*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || { echo "linux-libc-dev from bookworm-backports could not be downloaded" >&2; exit 1; }
rm -rf "$cache/root"
dpkg -x "$deb" "$cache/root"
[ -f "$inc/linux/vfio.h" ] || { echo "$deb has no linux/vfio.h" >&2; exit 1; }
echo "$inc"
