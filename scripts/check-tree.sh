#!/usr/bin/env bash
# Fails when the repository tracks build output: a binary file (one git
# itself would diff as binary) or any file larger than 1 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."

limit=$((1 << 20))
bad=0
while IFS= read -r -d '' path; do
	[ -f "$path" ] || continue
	size=$(stat -c %s "$path")
	if [ "$size" -gt "$limit" ]; then
		echo "check-tree: $path is $size bytes (limit $limit): build output or data does not belong in git" >&2
		bad=1
	fi
done < <(git ls-files -z)

# Against the empty tree, git diff --numstat prints "-	-" for a binary
# file. The index is what a commit of the tree would hold.
empty=$(git hash-object -t tree /dev/null)
while IFS=$'\t' read -r added deleted path; do
	if [ "$added" = "-" ] && [ "$deleted" = "-" ]; then
		echo "check-tree: $path is a binary file: build output does not belong in git" >&2
		bad=1
	fi
done < <(git diff --cached --numstat "$empty")

exit "$bad"
