#!/usr/bin/env bash
# Runs a litefs node on this machine, writes a database through its mount
# with the sqlite3 CLI, and shows the position and changesets it produced.
set -euo pipefail

litefs=$(realpath "${1:-bin/litefs}")
demo=$(mktemp -d /tmp/litefs-demo.XXXXXX)
pid=""

cleanup() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		wait "$pid" 2>/dev/null || true
	fi
	if grep -q " $demo/" /proc/mounts; then
		fusermount3 -u -z "$demo/mnt" 2>/dev/null || true
	fi
	rm -rf "$demo"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cat >"$demo/litefs.yml" <<YAML
fuse:
  dir: "$demo/mnt"
data:
  dir: "$demo/data"
lease:
  type: static
  candidate: true
YAML

step "starting a litefs node (static lease, primary) on $demo/mnt"
"$litefs" mount -config "$demo/litefs.yml" >"$demo/litefs.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
	[ -e "$demo/mnt/.lag" ] && break
	kill -0 "$pid" 2>/dev/null || { cat "$demo/litefs.log"; exit 1; }
	sleep 0.1
done
sed 's/^/  litefs: /' "$demo/litefs.log"

step "writing demo.db through the mount with the sqlite3 CLI (WAL mode)"
sqlite3 "$demo/mnt/demo.db" <<SQL
PRAGMA journal_mode=WAL;
CREATE TABLE visits (id INTEGER PRIMARY KEY, page TEXT, at TEXT DEFAULT CURRENT_TIMESTAMP);
INSERT INTO visits (page) VALUES ('/');
INSERT INTO visits (page) VALUES ('/about');
BEGIN; INSERT INTO visits (page) VALUES ('/rolled-back'); ROLLBACK;
INSERT INTO visits (page) VALUES ('/pricing');
SQL
echo "  rows: $(sqlite3 "$demo/mnt/demo.db" 'SELECT count(*) FROM visits;')   integrity: $(sqlite3 "$demo/mnt/demo.db" 'PRAGMA integrity_check;')"

step "the mount"
ls -la "$demo/mnt"

step "position (TXID/checksum) from demo.db-pos"
cat "$demo/mnt/demo.db-pos"

step "changesets: one per committed transaction, the rolled-back one left none"
"$litefs" log -data-dir "$demo/data" -name demo.db -verify

step "stopping the node"
kill -TERM "$pid"
wait "$pid" || true
pid=""
tail -n 2 "$demo/litefs.log" | sed 's/^/  litefs: /'
