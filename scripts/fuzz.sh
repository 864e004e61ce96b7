#!/usr/bin/env bash
# Runs every fuzz target of the module (func FuzzXxx in a _test.go file)
# for a short fixed time each, one at a time: go test -fuzz takes a single
# target per run. Prints one line per target, with its executions a
# second and its corpus, and fails if any target does. A failing input is
# written to PKG/testdata/fuzz/TARGET/: fix the code, and keep the input in
# git, where plain `go test` runs it as a test from then on.
#
#   FUZZTIME=10s          how long each target runs (go test -fuzztime)
#   FUZZ=regexp           run only the targets whose name matches
#   FUZZMINIMIZETIME=100x how long a new input may be minimized; go test's
#                         default of a minute would eat a short run
#   GO=go                 the go command
#
# New interesting inputs go to the build cache ($(go env GOCACHE)/fuzz),
# so that every run starts from what the runs before it found.
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
FUZZTIME=${FUZZTIME:-10s}
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-100x}
FUZZ=${FUZZ:-.}

# The packages that have fuzz targets; go test -list names the targets.
mapfile -t pkgs < <(grep -rlE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' . |
	xargs -r -n1 dirname | sort -u)
if [ "${#pkgs[@]}" -eq 0 ]; then
	echo "fuzz: no fuzz targets found" >&2
	exit 1
fi

# seconds converts a Go duration as go test prints it (1h2m3.5s) to seconds.
seconds() {
	awk -v d="$1" 'BEGIN {
		s = 0
		while (match(d, /^[0-9.]+(h|ms|m|s)/)) {
			part = substr(d, 1, RLENGTH); d = substr(d, RLENGTH + 1)
			n = part + 0; u = part; sub(/^[0-9.]+/, "", u)
			s += (u == "h") ? n * 3600 : (u == "m") ? n * 60 : (u == "ms") ? n / 1000 : n
		}
		print s
	}'
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
failed=()
n=0
printf '%-40s %12s %10s %8s %8s\n' "target ($FUZZTIME each)" execs execs/s new corpus
for pkg in "${pkgs[@]}"; do
	# A package with no target FUZZ selects is not even built.
	grep -hoE '^func Fuzz[A-Za-z0-9_]*' "$pkg"/*_test.go | cut -d' ' -f2 | grep -qE -- "$FUZZ" || continue
	if ! targets=$("$GO" test -list '^Fuzz' "$pkg" 2>"$log"); then
		cat "$log" >&2
		failed+=("$pkg (build)")
		continue
	fi
	for target in $(grep '^Fuzz' <<<"$targets"); do
		[[ $target =~ $FUZZ ]] || continue
		n=$((n + 1))
		name="${pkg#./}.$target"
		if "$GO" test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" \
			-fuzzminimizetime "$FUZZMINIMIZETIME" "$pkg" >"$log" 2>&1; then
			# The last progress line: "fuzz: elapsed: 5s, execs: 123 (25/sec),
			# new interesting: 2 (total: 40)".
			last=$(grep '^fuzz: elapsed: .*execs: ' "$log" | tail -n1 || true)
			if [[ $last =~ elapsed:\ ([^,]+),\ execs:\ ([0-9]+).*new\ interesting:\ ([0-9]+)\ \(total:\ ([0-9]+)\) ]]; then
				secs=$(seconds "${BASH_REMATCH[1]}")
				rate=$(awk -v e="${BASH_REMATCH[2]}" -v s="$secs" 'BEGIN { printf "%d", (s > 0) ? e / s : 0 }')
				printf '%-40s %12s %10s %8s %8s\n' "$name" "${BASH_REMATCH[2]}" "$rate" "${BASH_REMATCH[3]}" "${BASH_REMATCH[4]}"
			else
				printf '%-40s %s\n' "$name" "passed (no progress line)"
			fi
		else
			printf '%-40s %s\n' "$name" "FAILED"
			# go test's report: the failure, and where the input was written.
			grep -v '^fuzz: elapsed: ' "$log" | tail -n 40 >&2
			failed+=("$name")
		fi
	done
done

if [ "$n" -eq 0 ]; then
	echo "fuzz: no target matches FUZZ=$FUZZ" >&2
	exit 1
fi
if [ "${#failed[@]}" -gt 0 ]; then
	echo "fuzz: ${#failed[@]} failed: ${failed[*]}" >&2
	echo "fuzz: fix the code and keep each failing input (PKG/testdata/fuzz/TARGET/) in git" >&2
	exit 1
fi
