#!/usr/bin/env bash
# Runs a small litefs cluster on this machine (a primary and two replicas,
# static lease, loopback ports), writes a database through the primary with
# the sqlite3 CLI, and shows the replicas' copies catching up.
set -euo pipefail

litefs=$(realpath "${1:-bin/litefs}")
demo=$(mktemp -d /tmp/litefs-demo.XXXXXX)
pids=()

cleanup() {
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	for n in primary replica1 replica2; do
		if grep -q " $demo/$n/mnt " /proc/mounts; then
			fusermount3 -u -z "$demo/$n/mnt" 2>/dev/null || true
		fi
	done
	rm -rf "$demo"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

primary_port=$(free_port)
# start_node NAME LEASE-YAML
start_node() {
	local name=$1 lease=$2 port
	port=$(free_port)
	mkdir -p "$demo/$name"
	cat >"$demo/$name/litefs.yml" <<YAML
fuse:
  dir: "$demo/$name/mnt"
data:
  dir: "$demo/$name/data"
http:
  addr: "127.0.0.1:${3:-$port}"
$lease
YAML
	"$litefs" mount -config "$demo/$name/litefs.yml" >"$demo/$name/litefs.log" 2>&1 &
	pids+=($!)
	for _ in $(seq 1 100); do
		[ -e "$demo/$name/mnt/.lag" ] && return 0
		kill -0 "${pids[-1]}" 2>/dev/null || { cat "$demo/$name/litefs.log"; exit 1; }
		sleep 0.1
	done
	echo "$name did not mount" >&2
	exit 1
}

step "starting the primary on 127.0.0.1:$primary_port"
start_node primary "lease:
  type: static
  candidate: true
  hostname: primary" "$primary_port"

step "writing app.db through the primary's mount (WAL mode)"
sqlite3 "$demo/primary/mnt/app.db" <<SQL
PRAGMA journal_mode=WAL;
CREATE TABLE visits (id INTEGER PRIMARY KEY, page TEXT, at TEXT DEFAULT CURRENT_TIMESTAMP);
INSERT INTO visits (page) VALUES ('/'), ('/about');
INSERT INTO visits (page) VALUES ('/pricing');
SQL

replica_lease="lease:
  type: static
  candidate: false
  hostname: primary
  advertise-url: http://127.0.0.1:$primary_port"
step "starting two replicas of it"
start_node replica1 "$replica_lease"
start_node replica2 "$replica_lease"

show() {
	for n in primary replica1 replica2; do
		local pos rows
		pos=$(cat "$demo/$n/mnt/app.db-pos" 2>/dev/null || echo "(not yet)")
		rows=$(sqlite3 "$demo/$n/mnt/app.db" 'SELECT count(*) FROM visits;' 2>/dev/null || echo "-")
		printf '  %-9s position %s  rows %s  lag %s\n' "$n" "$pos" "$rows" "$(cat "$demo/$n/mnt/.lag")"
	done
}
wait_synced() {
	local want
	want=$(cat "$demo/primary/mnt/app.db-pos")
	for _ in $(seq 1 100); do
		[ "$(cat "$demo/replica1/mnt/app.db-pos" 2>/dev/null)" = "$want" ] &&
			[ "$(cat "$demo/replica2/mnt/app.db-pos" 2>/dev/null)" = "$want" ] && return 0
		sleep 0.05
	done
}
wait_synced
show

step "100 more transactions on the primary; the replicas follow"
for i in $(seq 1 100); do echo "INSERT INTO visits (page) VALUES ('/post/$i');"; done | sqlite3 "$demo/primary/mnt/app.db"
wait_synced
show

step "a write on a replica is refused"
sqlite3 "$demo/replica1/mnt/app.db" "INSERT INTO visits (page) VALUES ('/nope');" 2>&1 | sed 's/^/  /' || true

step "the same write on a replica holding the HALT lock (litefs run -with-lock)"
"$litefs" run -with-lock "$demo/replica1/mnt/app.db" -- \
	sqlite3 "$demo/replica1/mnt/app.db" "INSERT INTO visits (page) VALUES ('/from-replica1');" 2>&1 | sed 's/^/  /'
wait_synced
show

step "some of the primary's metrics (GET /metrics)"
python3 - "$primary_port" <<'PY' | sed 's/^/  /'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
for line in body.splitlines():
    if line.startswith(("litefs_db_txid", "litefs_db_commits_total", "litefs_replicas_connected", "litefs_is_primary")):
        print(line)
PY

step "what a replica's mount shows"
echo "  .primary: $(cat "$demo/replica1/mnt/.primary")"
ls -la "$demo/replica1/mnt" | sed 's/^/  /'

step "the changesets each node holds for app.db (newest 5)"
for n in primary replica1; do
	echo "  $n:"
	"$litefs" log -data-dir "$demo/$n/data" -name app.db -n 5 -verify | sed 's/^/    /'
done

step "stopping the cluster"
