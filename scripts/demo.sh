#!/usr/bin/env bash
# Runs a small litefs cluster on this machine (a primary and two replicas,
# static lease, loopback ports), writes a database through the primary with
# the sqlite3 CLI, and shows the replicas' copies catching up. Then a second
# cluster elects its primary with a real etcd (fetched by
# scripts/install-etcd.sh), loses it to kill -9, and fails over.
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
	for n in primary replica1 replica2 a b c; do
		if grep -q " $demo/$n/mnt " /proc/mounts; then
			fusermount3 -u -z "$demo/$n/mnt" 2>/dev/null || true
		fi
	done
	rm -rf "$demo"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# http_get URL: the body, or a failure status.
http_get() { python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' "$1" 2>/dev/null; }
# epoch_of PORT: the epoch a node reports in /info.
epoch_of() { http_get "http://127.0.0.1:$1/info" | python3 -c 'import json, sys; print(json.load(sys.stdin)["epoch"])'; }

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
	eval "pid_$name=$!"
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

step "a second cluster, on an etcd lease (ttl 2s): candidates a and b, replica c"
etcd=$(scripts/install-etcd.sh 2>/dev/null | tail -n1)
etcd_port=$(free_port)
etcd_peer=$(free_port)
"$etcd" --name demo --data-dir "$demo/etcd" \
	--listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
	--listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
	--initial-cluster "demo=http://127.0.0.1:$etcd_peer" >"$demo/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
	http_get "http://127.0.0.1:$etcd_port/health" | grep -q true && break
	sleep 0.1
done
declare -A ports
etcd_lease() {
	echo "lease:
  type: etcd
  candidate: $2
  hostname: $1
  advertise-url: http://127.0.0.1:${ports[$1]}
  etcd:
    endpoints: [\"http://127.0.0.1:$etcd_port\"]
    key: litefs/demo
    ttl: 2s"
}
for n in a b c; do ports[$n]=$(free_port); done
start_node a "$(etcd_lease a true)" "${ports[a]}"
for _ in $(seq 1 100); do http_get "http://127.0.0.1:${ports[a]}/info" | grep -q '"isPrimary":true' && break; sleep 0.1; done
start_node b "$(etcd_lease b true)" "${ports[b]}"
start_node c "$(etcd_lease c false)" "${ports[c]}"
sqlite3 "$demo/a/mnt/app.db" "PRAGMA journal_mode=WAL; CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('written on a');" >/dev/null
for _ in $(seq 1 50); do [ "$(sqlite3 "$demo/c/mnt/app.db" "SELECT count(*) FROM t;" 2>/dev/null)" = 1 ] && break; sleep 0.1; done
echo "  c's .primary: $(cat "$demo/c/mnt/.primary"); a's epoch: $(epoch_of "${ports[a]}")"

step "kill -9 of the primary a; b takes over once etcd revokes a's lease"
start=$(date +%s%N)
disown "$pid_a" # no job report from the shell when it dies
kill -KILL "$pid_a"
until sqlite3 -cmd ".timeout 100" "file:$demo/b/mnt/app.db?mode=rw" "INSERT INTO t VALUES ('written on b');" 2>/dev/null; do sleep 0.02; done
echo "  b accepted a write $(( ($(date +%s%N) - start) / 1000000 )) ms after the kill"
for _ in $(seq 1 50); do [ "$(cat "$demo/c/mnt/.primary" 2>/dev/null)" = "b" ] && break; sleep 0.1; done
for _ in $(seq 1 50); do [ "$(sqlite3 "$demo/c/mnt/app.db" "SELECT count(*) FROM t;" 2>/dev/null)" = 2 ] && break; sleep 0.1; done
echo "  c's .primary: $(cat "$demo/c/mnt/.primary"); b's epoch: $(epoch_of "${ports[b]}")"
echo "  rows on c: $(sqlite3 "$demo/c/mnt/app.db" "SELECT group_concat(v, ', ') FROM t;")"

step "stopping the clusters"
