#!/usr/bin/env bash
# Installs what litefs needs to run and to be tested and that a fresh
# machine may lack: fuse3 (fusermount3) and the sqlite3 CLI. Go, gcc and
# libsqlite3-dev are expected to be present already.
set -euo pipefail

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)

if [ "${#need[@]}" -gt 0 ]; then
	sudo=""
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null 2>&1 || { echo "deps: need root (or sudo) to install: ${need[*]}" >&2; exit 1; }
		sudo="sudo"
	fi
	echo "deps: installing ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	if ! $sudo apt-get install -y -q "${need[@]}" >/tmp/litefs-apt.log 2>&1; then
		# Package lists may be missing or stale on a fresh machine.
		$sudo apt-get update -q >>/tmp/litefs-apt.log 2>&1 || true
		$sudo apt-get install -y -q "${need[@]}" >>/tmp/litefs-apt.log 2>&1 || {
			echo "deps: apt-get install ${need[*]} failed; see /tmp/litefs-apt.log" >&2
			tail -20 /tmp/litefs-apt.log >&2
			exit 1
		}
	fi
fi

if [ ! -e /dev/fuse ]; then
	echo "deps: /dev/fuse is missing; litefs needs FUSE (load the fuse module, or run the container with --device /dev/fuse --cap-add SYS_ADMIN)" >&2
	exit 1
fi

# The kernel's FUSE control filesystem lets a wedged mount be aborted.
if [ -d /sys/fs/fuse/connections ] && ! grep -q fusectl /proc/mounts 2>/dev/null; then
	mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null || true
fi
