#!/bin/sh
# Stream throughput: d2v-show --check and d2v-show (statistics on every
# tensor) on a ~1 GB stream, next to cat through a pipe.
set -eu
BIN=${D2V_BIN:?}
TOOLS=${D2V_TOOLS:-$BIN/../tests/tools}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
"$TOOLS/gen-stream" -n 1000 -b 1000000 > "$T/big.d2v"
size=$(wc -c < "$T/big.d2v")
cat "$T/big.d2v" > /dev/null # warm the page cache
rate() { # label command...
	label=$1
	shift
	best=
	for i in 1 2 3; do
		s=$(date +%s.%N)
		"$@" > /dev/null
		e=$(date +%s.%N)
		best=$(awk -v s="$s" -v e="$e" -v b="$best" 'BEGIN { t = e - s; print (b == "" || t < b) ? t : b }')
	done
	awk -v l="$label" -v t="$best" -v n="$size" 'BEGIN { printf "%-34s %8.3f s %8.0f MB/s\n", l, t, n / t / 1e6 }'
}
echo "stream of $size bytes, 1000 records of 1 MB; best of 3"
rate "cat file | cat" sh -c "cat '$T/big.d2v' | cat"
rate "cat file | d2v-show --check" sh -c "cat '$T/big.d2v' | '$BIN/d2v-show' --check"
rate "cat file | d2v-show (statistics)" sh -c "cat '$T/big.d2v' | '$BIN/d2v-show'"
