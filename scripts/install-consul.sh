#!/usr/bin/env bash
# install-consul.sh - build (once) and cache a real HashiCorp Consul agent.
#
# Usage: scripts/install-consul.sh [DEST_DIR]
#
# Prints the absolute path of the consul binary as the last line of stdout.
# Progress goes to stderr. Default DEST_DIR:
#   ${LITEFS_CACHE_DIR:-$HOME/.cache/litefs}/consul-1.20.0
#
# Consul release binaries cannot be downloaded here, so the agent is built
# from source fetched through the Go module proxy. The consul module's go.mod
# replaces five nested modules with local directories (./api, ./sdk, ...) that
# the proxy's module zip does not contain, so each is fetched as its own module
# and dropped into a writable copy of the source tree before building.
#
# Needs: go (>= 1.22) and a reachable GOPROXY (no cgo, no git). A cold build
# (download + compile) takes ~3.5 min on 2 cores; later calls return the
# cached binary in ~40 ms.
#
# The build uses its own Go module and build caches in DEST_DIR/.build
# (~4 GB at peak). They survive an interrupted or failed run, so a re-run
# resumes quickly, and are deleted once the binary is in place; a re-run also
# clears whatever a killed run left behind.
#
# Environment:
#   LITEFS_CACHE_DIR          cache root (default $HOME/.cache/litefs)
#   CONSUL_USE_PATH=0         ignore a matching consul already on PATH
#   CONSUL_SHARED_GO_CACHES=1 build with the user's GOMODCACHE/GOCACHE instead
#                             (kept afterwards; nothing to delete)
set -euo pipefail

CONSUL_VERSION=1.20.0
CONSUL_MODULE=github.com/hashicorp/consul

# Nested modules replaced by ./<dir> in consul's go.mod, with the versions that
# consul v1.20.0 requires, followed by fallbacks to try when a version is
# missing from the proxy (troubleshoot v0.7.2 was never published there).
NESTED_MODULES=(
	"api v1.29.5"
	"sdk v0.16.1"
	"envoyextensions v0.7.4"
	"proto-public v0.6.3"
	"troubleshoot v0.7.2 v0.7.1"
)

log() { printf 'install-consul: %s\n' "$*" >&2; }
die() { printf 'install-consul: ERROR: %s\n' "$*" >&2; exit 1; }

# is_good BIN: BIN runs and reports the wanted version.
is_good() {
	local out
	[[ -x $1 ]] || return 1
	out=$("$1" version 2>/dev/null) || return 1
	[[ $out == *"Consul v${CONSUL_VERSION}"* ]]
}

if [[ $# -gt 1 ]]; then
	die "usage: $0 [DEST_DIR]"
fi

if [[ $# -eq 1 ]]; then
	dest_dir=$1
else
	dest_dir=${LITEFS_CACHE_DIR:-${HOME:?HOME is not set}/.cache/litefs}/consul-${CONSUL_VERSION}
fi
mkdir -p "$dest_dir" || die "cannot create destination directory $dest_dir"
dest_dir=$(cd "$dest_dir" && pwd -P)
dest=$dest_dir/consul

# Fast path: cached binary.
if is_good "$dest"; then
	echo "$dest"
	exit 0
fi

# A matching consul on PATH (only when no explicit DEST_DIR was given).
if [[ $# -eq 0 && ${CONSUL_USE_PATH:-1} != 0 ]]; then
	if path_consul=$(command -v consul 2>/dev/null) && is_good "$path_consul"; then
		path_consul=$(cd "$(dirname "$path_consul")" && pwd -P)/$(basename "$path_consul")
		echo "$path_consul"
		exit 0
	fi
fi

# Serialize concurrent installs into the same DEST_DIR.
if command -v flock >/dev/null 2>&1; then
	exec 9>"$dest_dir/.install.lock" || die "cannot open lock file $dest_dir/.install.lock"
	if ! flock -n 9; then
		log "another install is running into $dest_dir; waiting for it"
		flock 9 || die "cannot lock $dest_dir/.install.lock"
	fi
	if is_good "$dest"; then
		echo "$dest"
		exit 0
	fi
fi

command -v go >/dev/null 2>&1 || die "go is not on PATH (Go >= 1.22 is needed to build consul)"

export GOTOOLCHAIN=local   # never switch/download toolchains
export GOWORK=off          # ignore any go.work around the temp dir
export GOFLAGS="-mod=mod -modcacherw -buildvcs=false"
export CGO_ENABLED=0
# Everything the build writes lives in DEST_DIR/.build (under the lock above):
#   work/     source tree, logs, go build's temp files - removed on every exit
#   mod/, gocache/  private Go caches - kept after a failure, removed on success
build_root=$dest_dir/.build
work=$build_root/work
chmod -R u+w "$work" 2>/dev/null || true
rm -rf "$work" "$dest_dir"/.consul.tmp.* || die "cannot remove leftovers of an earlier run in $dest_dir"
mkdir -p "$work/gotmp" || die "cannot create $work"
export GOTMPDIR=$work/gotmp
if [[ ${CONSUL_SHARED_GO_CACHES:-0} == 0 ]]; then
	export GOMODCACHE=$build_root/mod GOCACHE=$build_root/gocache
	mkdir -p "$GOMODCACHE" "$GOCACHE" || die "cannot create Go caches in $build_root"
fi

tmp_bin=""
success=0
cleanup() {
	chmod -R u+w "$work" 2>/dev/null || true
	rm -rf "$work"
	if [[ -n $tmp_bin ]]; then rm -f "$tmp_bin"; fi
	if [[ $success == 1 ]]; then
		chmod -R u+w "$build_root" 2>/dev/null || true
		rm -rf "$build_root" || log "warning: could not remove $build_root"
	elif [[ -d $build_root/mod ]]; then
		log "kept Go caches in $build_root so a re-run resumes faster (safe to delete)"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# module_dir MODULE@VERSION: download into the module cache, print its Dir.
module_dir() {
	local json dir
	if ! json=$(cd "$work" && go mod download -json "$1" 2>"$work/download.err"); then
		printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Error": "\(.*\)",\{0,1\}$/\1/p' >>"$work/download.err"
		return 1
	fi
	dir=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
	[[ -n $dir && -d $dir ]] || return 1
	printf '%s\n' "$dir"
}

log "building consul v${CONSUL_VERSION} from the Go module proxy (takes several minutes; once)"
log "go: $(go version)"

src=$work/src
log "downloading ${CONSUL_MODULE}@v${CONSUL_VERSION}"
dir=$(module_dir "${CONSUL_MODULE}@v${CONSUL_VERSION}") ||
	die "go mod download ${CONSUL_MODULE}@v${CONSUL_VERSION} failed: $(cat "$work/download.err")"
cp -R "$dir" "$src" || die "copying $dir to $src failed"
chmod -R u+w "$src"

for entry in "${NESTED_MODULES[@]}"; do
	read -r sub versions <<<"$entry"
	[[ -e $src/$sub ]] && die "unexpected: $src/$sub already exists in the consul module zip"
	grep -q "^[[:space:]]*${CONSUL_MODULE}/${sub} => \./${sub}\$" "$src/go.mod" ||
		die "consul's go.mod no longer replaces ${CONSUL_MODULE}/${sub} with ./${sub}; update this script"
	got=""
	for v in $versions; do
		if dir=$(module_dir "${CONSUL_MODULE}/${sub}@${v}"); then
			got=$v
			break
		fi
		log "${CONSUL_MODULE}/${sub}@${v} is not available, trying the next version"
	done
	[[ -n $got ]] || die "could not download ${CONSUL_MODULE}/${sub} (tried: $versions): $(cat "$work/download.err")"
	log "using ${CONSUL_MODULE}/${sub}@${got} for ./${sub}"
	cp -R "$dir" "$src/$sub" || die "copying $dir to $src/$sub failed"
	chmod -R u+w "$src/$sub"
done

# Build next to the destination so the final rename is atomic.
tmp_bin=$(mktemp "$dest_dir/.consul.tmp.XXXXXX") || die "cannot create a temp file in $dest_dir"
log "compiling (CGO_ENABLED=0, -trimpath); log: captured, shown on failure"
if ! (cd "$src" && go build -trimpath -ldflags "-s -w" -o "$tmp_bin" . ) >"$work/build.log" 2>&1; then
	tail -n 40 "$work/build.log" >&2
	die "go build of consul v${CONSUL_VERSION} failed (output above)"
fi
chmod 0755 "$tmp_bin"
is_good "$tmp_bin" || die "the freshly built consul does not report v${CONSUL_VERSION}: $("$tmp_bin" version 2>&1 | head -n 3)"
mv -f "$tmp_bin" "$dest" || die "cannot move the built binary to $dest"
tmp_bin=""
success=1
log "installed $("$dest" version | head -n 1) at $dest"
echo "$dest"
