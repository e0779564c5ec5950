#!/bin/sh
# Training step: d2v's bench-step against the PyTorch peer (bench/train_peer.py)
# on the same configuration, in the same run.  Not part of make check.
set -u
BIN=${D2V_BIN:?}
BENCH=$BIN/../bench/bench-step
PY=/usr/bin/python3
STEPS=${BENCH_STEPS:-20}
for cfg in ${BENCH_CONFIGS:-B1 B2}; do
	echo "-- $cfg: median ms per step over $STEPS steps after warm-up"
	OMP_NUM_THREADS=2 "$BENCH" "$cfg" "$STEPS" 3
	if [ -r "$(dirname "$0")/train_peer.py" ] && $PY -c 'import torch' 2>/dev/null; then
		OPENBLAS_NUM_THREADS=1 $PY "$(dirname "$0")/train_peer.py" --config "$cfg" --threads 2 --steps "$STEPS" --json
		OPENBLAS_NUM_THREADS=2 $PY "$(dirname "$0")/train_peer.py" --config "$cfg" --threads 1 --steps "$STEPS" --json
	else
		echo "(no PyTorch peer: install python3-torch)"
	fi
done
