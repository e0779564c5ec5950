#!/bin/sh
# d2v-mask throughput in records per second: inverse-block with 16 copies on
# 224-pixel RGB images (u8, 150 KB a record), span and block1d on 10-second
# audio (160000 f32 samples, 640 KB a record), read from a pipe and written
# to /dev/null; next to d2v-show --check on the same input (the stream
# alone).  Best of 3.
set -eu
BIN=${D2V_BIN:?}
TOOLS=${D2V_TOOLS:-$BIN/../tests/tools}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
"$TOOLS/gen-tokens" -n 2000 > "$T/img.d2v"
"$TOOLS/gen-tokens" -n 500 -m audio -T 160000 > "$T/audio.d2v"
cat "$T/img.d2v" "$T/audio.d2v" > /dev/null # warm the page cache
rate() { # label records command...
	label=$1 n=$2
	shift 2
	best=
	for i in 1 2 3; do
		s=$(date +%s.%N)
		"$@" > /dev/null
		e=$(date +%s.%N)
		best=$(awk -v s="$s" -v e="$e" -v b="$best" 'BEGIN { t = e - s; print (b == "" || t < b) ? t : b }')
	done
	awk -v l="$label" -v t="$best" -v n="$n" 'BEGIN { printf "%-44s %8.3f s %9.0f records/s\n", l, t, n / t }'
}
rate "images: d2v-show --check" 2000 sh -c "cat '$T/img.d2v' | '$BIN/d2v-show' --check"
rate "images: d2v-mask -s inverse-block -m 16" 2000 sh -c "cat '$T/img.d2v' | '$BIN/d2v-mask' -s inverse-block -m 16"
rate "audio 10 s: d2v-show --check" 500 sh -c "cat '$T/audio.d2v' | '$BIN/d2v-show' --check"
rate "audio 10 s: d2v-mask -s span" 500 sh -c "cat '$T/audio.d2v' | '$BIN/d2v-mask' -s span"
rate "audio 10 s: d2v-mask -s span -m 8" 500 sh -c "cat '$T/audio.d2v' | '$BIN/d2v-mask' -s span -m 8"
rate "audio 10 s: d2v-mask -s block1d -m 8" 500 sh -c "cat '$T/audio.d2v' | '$BIN/d2v-mask' -s block1d -m 8"
