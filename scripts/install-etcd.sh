#!/usr/bin/env bash
# install-etcd.sh - fetch (once) and cache a real etcd server.
#
# Usage: scripts/install-etcd.sh [DEST_DIR]
#
# Prints the absolute path of the etcd binary as the last line of stdout.
# Progress goes to stderr. Default DEST_DIR:
#   ${LITEFS_CACHE_DIR:-$HOME/.cache/litefs}/etcd-<version>
#
# The server is Debian's etcd-server package. It is downloaded and unpacked
# into the cache rather than installed, so that no system service is set up
# or started: the tests start their own etcd on loopback ports of their own.
# The etcd client litefs uses (go.etcd.io/etcd/client/v3 v3.6) speaks the v3
# API this server (3.4) serves.
#
# Needs: apt-get and dpkg-deb (Debian or Ubuntu), and the package mirror.
set -euo pipefail

PACKAGE=etcd-server

log() { printf 'install-etcd: %s\n' "$*" >&2; }
die() { printf 'install-etcd: ERROR: %s\n' "$*" >&2; exit 1; }

if [[ $# -gt 1 ]]; then
	die "usage: $0 [DEST_DIR]"
fi
command -v apt-get >/dev/null || die "apt-get not found: install etcd (3.4 or later) and put it in \$LITEFS_ETCD"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"

sudo=""
if [[ $(id -u) -ne 0 ]]; then
	command -v sudo >/dev/null || die "need root (or sudo) to update the package lists"
	sudo="sudo"
fi

# The candidate version names the cache directory; a fresh machine may
# need its package lists first.
version() { apt-cache policy "$PACKAGE" 2>/dev/null | awk '/Candidate:/ {print $2}'; }
ver=$(version)
if [[ -z $ver || $ver == "(none)" ]]; then
	log "updating package lists"
	$sudo apt-get update -q >/dev/null 2>&1 || true
	ver=$(version)
fi
[[ -n $ver && $ver != "(none)" ]] || die "no $PACKAGE package is available from the configured mirrors"

dest=${1:-${LITEFS_CACHE_DIR:-$HOME/.cache/litefs}/etcd-${ver//[^A-Za-z0-9.+-]/_}}
bin=$dest/usr/bin/etcd
if [[ -x $bin ]] && "$bin" --version >/dev/null 2>&1; then
	echo "$bin"
	exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log "downloading $PACKAGE $ver"
# apt-get download writes into the current directory; as root it warns
# that the _apt user cannot write there, which is harmless.
(cd "$tmp" && apt-get download -q "$PACKAGE=$ver" >/dev/null 2>&1) || {
	$sudo apt-get update -q >/dev/null 2>&1 || true
	(cd "$tmp" && apt-get download -q "$PACKAGE=$ver" >/dev/null 2>&1) || die "apt-get download $PACKAGE=$ver failed"
}
mkdir -p "$tmp/root"
dpkg-deb -x "$tmp"/"$PACKAGE"_*.deb "$tmp/root"
[[ -x $tmp/root/usr/bin/etcd ]] || die "the package has no usr/bin/etcd"
"$tmp/root/usr/bin/etcd" --version >/dev/null || die "the unpacked etcd does not run"
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp/root" "$dest"
log "installed $("$bin" --version | head -1) at $bin"
echo "$bin"
