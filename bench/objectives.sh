#!/bin/sh
# bench/objectives.sh - data2vec (v1) against data2vec 2.0 (v2) on
# Fashion-MNIST, the same encoder (width 96, 3 heads, 6 blocks, 4-pixel
# patches) and the same budget of updates of 64 images: linear-probe and
# k-NN accuracy of the frozen student against pretraining wall time.
#
# v2: the demo's recipe (inverse-block masks, 65%, 4 copies, the 3-layer
# decoder of width 64).  v1: BEiT block masks (30 of 49, one copy),
# LayerScale 0.1, drop path 0.1, Smooth-L1 beta 2.  Both: lr 1.5e-3, 10%
# warmup, EMA 0.99 to 0.999 over 3/4 of the run, the demo's values.  Each
# run stops (d2v-train --until) at a third, two thirds and the end of its
# schedule to be probed on 10000 training and 2000 test images.
# STEPS (600) and DIR (build/bench-objectives) from the environment.
set -eu
: "${D2V_BIN:?run through make bench, or set D2V_BIN}"
PATH=$D2V_BIN:$PATH
FM=/usr/share/datasets/fashion-mnist
STEPS=${STEPS:-600}
OUT=${DIR:-build/bench-objectives}
mkdir -p "$OUT"
[ -r $FM/train-images-idx3-ubyte.gz ] || { echo "skip: no $FM"; exit 0; }
TOK="--size 28 --crop center --mean 0.2860 --std 0.3530"
d2v-tokenize -q --idx $FM/train-images-idx3-ubyte.gz --idx-labels $FM/train-labels-idx1-ubyte.gz $TOK -o "$OUT/train.d2v"
d2v-tokenize -q --idx $FM/t10k-images-idx3-ubyte.gz --idx-labels $FM/t10k-labels-idx1-ubyte.gz $TOK -o "$OUT/test.d2v"
d2v-mask -q --strategy inverse-block --patch 4 --prob 0.65 --copies 4 -o "$OUT/v2.d2v" "$OUT/train.d2v"
d2v-mask -q --strategy block --patch 4 --copies 1 -o "$OUT/v1.d2v" "$OUT/train.d2v"
ENC="--dim 96 --heads 3 --depth 6 --top-k 6 -b 64 --lr 1.5e-3 --warmup $((STEPS / 10)) --ema-decay 0.99 --ema-end-decay 0.999 --ema-anneal-end $((STEPS * 3 / 4)) --seed 1"
V2="-i $OUT/v2.d2v --prenet 0 --decoder-dim 64 --decoder-layers 3 --decoder-groups 8"
V1="--objective v1 -i $OUT/v1.d2v --layer-scale 0.1 --drop-path 0.1"
printf '%-4s %6s %9s %8s %8s\n' objective steps train_s linear knn
for obj in v2 v1; do
	[ $obj = v2 ] && ARGS=$V2 || ARGS=$V1
	secs=0
	for k in 1 2 3; do
		until=$((STEPS * k / 3))
		t0=$(date +%s.%N)
		if [ $k -eq 1 ]; then
			d2v-train -q $ARGS $ENC --steps $STEPS --epochs 3 --until $until \
			    -c "$OUT/$obj.safetensors" --log "$OUT/$obj.log"
		else
			d2v-train -q --resume -i "$OUT/$obj.d2v" --epochs 3 --until $until \
			    -c "$OUT/$obj.safetensors" --log "$OUT/$obj.log"
		fi
		t1=$(date +%s.%N)
		secs=$(/usr/bin/python3 -c "print($secs + $t1 - $t0)")
		d2v-eval -q -c "$OUT/$obj.safetensors" --train "$OUT/train.d2v" --test "$OUT/test.d2v" \
		    --limit-train 10000 --limit-test 2000 --json "$OUT/$obj-$until.json" -o /dev/null
		/usr/bin/python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
r = j["rows"][0]
print("%-4s %6s %9.1f %8.4f %8.4f" % (sys.argv[2], sys.argv[3], float(sys.argv[4]), r["linear"]["accuracy"], r["knn"]["accuracy"]))
' "$OUT/$obj-$until.json" $obj $until "$secs"
	done
done
