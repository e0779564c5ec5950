#!/bin/sh
# d2v-eval through the real commands on Fashion-MNIST: a tiny checkpoint
# trained here, evaluated with both baselines on a few thousand images; the
# report's rows and numbers, its options, and the refusals.
# (The probes and statistics on data with a known answer: test_eval.)
. "$D2V_ROOT/tests/testlib"
need_fashion_mnist
# st WANT GOT DESCRIPTION: the status of a command run with redirections
st() {
	if [ "$2" -eq "$1" ]; then ok "$3"; else notok "$3 (status $2, want $1)"; fi
}
# js FILE EXPR DESCRIPTION: ok when the python expression on the JSON
# report j is true; prints the values it looked at
js() {
	$PY -c '
import json, math, sys
j = json.load(open(sys.argv[1])); R = {r["features"]: r for r in j["rows"]}
ok = eval(sys.argv[2])
sys.exit(0 if ok else 1)' "$1" "$2"
	if [ $? -eq 0 ]; then ok "$3"; else notok "$3 ($2 on $(head -c 600 "$1" | tr '\n' ' '))"; fi
}

d2v-tokenize --idx $FM/train-images-idx3-ubyte.gz --idx-labels $FM/train-labels-idx1-ubyte.gz \
	--size 28 --crop none > "$T/train.d2v" 2>/dev/null
d2v-tokenize --idx $FM/t10k-images-idx3-ubyte.gz --idx-labels $FM/t10k-labels-idx1-ubyte.gz \
	--size 28 --crop none > "$T/test.d2v" 2>/dev/null
d2v-mask --patch 7 --copies 2 < "$T/train.d2v" > "$T/masked.d2v" 2>/dev/null
d2v-mask --patch 7 --copies 2 < "$T/test.d2v" > "$T/test-masked.d2v" 2>/dev/null

# A tiny model, a few seconds of training (a fast EMA: the recipe's tau
# would leave the teacher at its initialisation in so few steps).
d2v-train --dim 48 --heads 3 --depth 3 --prenet 0 --decoder-dim 24 --decoder-layers 1 \
	--decoder-groups 4 -b 16 --lr 2e-3 --warmup 20 --ema-decay 0.98 --ema-end-decay 0.99 \
	-i "$T/masked.d2v" --steps 300 -c "$T/ck.safetensors" --log "$T/log" 2> "$T/err"
st 0 $? "d2v-train makes a tiny checkpoint"

# ---- the report --------------------------------------------------------------
d2v-eval -c "$T/ck.safetensors" --train "$T/train.d2v" --test "$T/test.d2v" --limit 3000 \
	--baseline random --baseline input --masked "$T/test-masked.d2v" \
	--json "$T/r.json" > "$T/table" 2> "$T/err"
st 0 $? "d2v-eval with both baselines exits 0"
sed 's/^/# /' "$T/table"
for r in pretrained random input; do
	contains "$T/table" "^$r  *[0-9]" "the table has a $r row"
done
contains "$T/table" "^features  *dim  *linear  *l2  *knn  *std  *erank" "... under a header"
contains "$T/table" "train 3000 images.*test 3000 images.*10 classes" "... for 3000 + 3000 images of 10 classes"
contains "$T/table" "held-out pretraining loss [0-9.]*" "... and the held-out pretraining loss"
js "$T/r.json" 'len(j["rows"]) == 3 and [r["features"] for r in j["rows"]] == ["pretrained", "random", "input"]' \
	"the JSON report has the three rows in order"
js "$T/r.json" 'all(0 <= r[p]["accuracy"] <= 1 for r in j["rows"] for p in ("linear", "knn"))' \
	"every accuracy is in [0,1]"
js "$T/r.json" 'R["input"]["linear"]["accuracy"] > 0.7 and R["input"]["knn"]["accuracy"] > 0.7' \
	"raw pixels are far above chance (0.1): linear and 20-NN > 0.7"
js "$T/r.json" 'all(r[p]["accuracy"] > 0.3 for r in j["rows"] for p in ("linear", "knn"))' \
	"the encoders are well above chance too (> 0.3)"
js "$T/r.json" 'R["pretrained"]["dim"] == 48 and R["random"]["dim"] == 48 and R["input"]["dim"] == 784' \
	"the widths: 48 for the encoders, 784 pixels"
js "$T/r.json" 'all(r["linear"]["l2"] in [g["l2"] for g in r["linear"]["grid"]] and r["linear"]["holdout_rows"] == 300 and r["linear"]["converged"] for r in j["rows"])' \
	"each probe chose its l2 on 300 held-out images and converged"
js "$T/r.json" 'all(1 <= r["effective_rank"] <= r["dim"] and r["std"] > 0 for r in j["rows"])' \
	"effective ranks lie in [1, dim] and stds are positive"
js "$T/r.json" 'R["pretrained"]["linear"]["accuracy"] > R["random"]["linear"]["accuracy"] + 0.05 and R["pretrained"]["knn"]["accuracy"] > R["random"]["knn"]["accuracy"] + 0.02' \
	"300 steps of pretraining beat the random encoder: linear by 5 points, 20-NN by 2"
js "$T/r.json" 'j["masked"]["records"] == 3000 and math.isfinite(j["masked"]["loss"]) and j["masked"]["loss"] > 0 and abs(j["masked"]["loss"] - j["masked"]["loss_reg"] - j["masked"]["loss_cls"]) < 1e-6' \
	"the masked loss covers 3000 images and is regression + CLS"
check "the held-out loss is lower than the first training losses" $PY -c '
import json, sys
L = [l for l in map(json.loads, open(sys.argv[1])) if "step" in l]
j = json.load(open(sys.argv[2]))
first = sum(l["loss"] for l in L[:5]) / 5
print("# held-out %.4f, training: first %.4f, last %.4f" % (j["masked"]["loss"], first, L[-1]["loss"]))
assert j["masked"]["loss"] < first
' "$T/log" "$T/r.json"

# ---- options -----------------------------------------------------------------
d2v-eval --baseline input --train "$T/train.d2v" --test "$T/test.d2v" --limit 1000 --json - \
	> "$T/in.json" 2> "$T/err"
st 0 $? "--baseline input needs no checkpoint"
js "$T/in.json" '[r["features"] for r in j["rows"]] == ["input"] and j["train"]["records"] == 1000 and "checkpoint" not in j' \
	"... and --json - writes only the JSON report"
d2v-eval -q -c "$T/ck.safetensors" --train "$T/train.d2v" --test "$T/test.d2v" --limit 1000 \
	--layer 0 --pool cls --teacher --l2 1e-3 --json "$T/opt.json" -o "$T/opt.table" 2> "$T/err"
st 0 $? "--layer 0 --pool cls --teacher --l2 1e-3 runs"
js "$T/opt.json" 'j["layer"] == 0 and j["pool"] == "cls" and j["weights"] == "teacher" and R["pretrained"]["linear"]["l2"] == 1e-3 and R["pretrained"]["linear"]["grid"] == []' \
	"... and the report says so"
contains "$T/opt.table" "teacher weights, block 1 of 3, CLS pooling" "-o writes the table to a file"
js "$T/r.json" 'j["weights"] == "student" and j["layer"] == 2 and j["pool"] == "mean"' \
	"by default the student's last block, mean-pooled (as the reference fine-tunes)"
d2v-eval -q -c "$T/ck.safetensors" --train "$T/train.d2v" --test "$T/test.d2v" --limit 1000 \
	--layer 0 --pool cls --student --l2 1e-3 -o "$T/opt3.table" 2> "$T/err"
contains "$T/opt3.table" "student weights, block 1 of 3" "--student says so in the table"
check "... and its features differ from the teacher's" sh -c "! cmp -s '$T/opt.table' '$T/opt3.table'"
check "the same run gives the same report" sh -c "d2v-eval -q -c '$T/ck.safetensors' --train '$T/train.d2v' \
	--test '$T/test.d2v' --limit 1000 --layer 0 --pool cls --teacher --l2 1e-3 -o '$T/opt2.table' && cmp -s '$T/opt.table' '$T/opt2.table'"
head -c 200000 "$T/test.d2v" > "$T/cut.d2v"
d2v-eval --baseline input --train "$T/train.d2v" --test - --limit 2000 < "$T/cut.d2v" > /dev/null 2> "$T/err"
st 1 $? "a truncated test stream on standard input is an error"
contains "$T/err" "truncated" "... saying so"

# ---- refusals ------------------------------------------------------------------
d2v-tokenize --idx $FM/t10k-images-idx3-ubyte.gz --size 28 --crop none 2>/dev/null > "$T/nolabel.d2v"
d2v-eval -c "$T/ck.safetensors" --train "$T/nolabel.d2v" --test "$T/test.d2v" --limit 50 > /dev/null 2> "$T/err"
st 1 $? "an unlabelled stream is refused"
contains "$T/err" "record 0 .*no label; d2v-eval needs labelled streams" "... with a message naming the record"
gen-stream -n 3 -m audio > "$T/audio.d2v"
d2v-eval -c "$T/ck.safetensors" --train "$T/train.d2v" --test "$T/audio.d2v" --limit 50 > /dev/null 2> "$T/err"
st 1 $? "an audio stream is refused"
contains "$T/err" "an audio stream; the other stream is image" "... naming both modalities"
d2v-tokenize --idx $FM/t10k-images-idx3-ubyte.gz --idx-labels $FM/t10k-labels-idx1-ubyte.gz \
	--size 21 --crop center 2>/dev/null > "$T/s21.d2v"
d2v-eval -c "$T/ck.safetensors" --train "$T/s21.d2v" --test "$T/test.d2v" --limit 50 > /dev/null 2> "$T/err"
st 1 $? "a stream of another image size than the checkpoint's is refused"
contains "$T/err" "images of size 21; the model takes 28" "... naming both sizes"
d2v-mask --patch 7 --copies 3 < "$T/test.d2v" 2>/dev/null > "$T/m3.d2v"
d2v-eval -c "$T/ck.safetensors" --train "$T/train.d2v" --test "$T/test.d2v" --limit 50 --masked "$T/m3.d2v" > /dev/null 2> "$T/err"
st 1 $? "a masked stream with other copies than the checkpoint's is refused"
contains "$T/err" "masks of 3 copies; the checkpoint's model trains with 2" "... naming both"
d2v-eval -c "$T/ck.safetensors" --train "$T/train.d2v" --test "$T/test.d2v" --limit 50 --masked "$T/test.d2v" > /dev/null 2> "$T/err"
st 1 $? "--masked with an unmasked stream is refused"
contains "$T/err" "run d2v-mask first" "... with a hint"
d2v-eval --baseline input --train "$T/s21.d2v" --test "$T/test.d2v" --limit 50 > /dev/null 2> "$T/err"
st 1 $? "train and test streams of different sizes are refused"
d2v-eval -c "$T/ck.safetensors" --test "$T/test.d2v" > /dev/null 2> "$T/err"
st 2 $? "no --train is a usage error"
d2v-eval -c "$T/ck.safetensors" --train "$T/train.d2v" --test "$T/test.d2v" --baseline pixels > /dev/null 2> "$T/err"
st 2 $? "an unknown baseline is a usage error"
contains "$T/err" "'pixels' is not random or input" "... naming it"
d2v-eval -c "$T/ck.safetensors" --train "$T/train.d2v" --test "$T/test.d2v" --layer 3 > /dev/null 2> "$T/err"
st 2 $? "--layer beyond the model's blocks is a usage error"
d2v-eval --train "$T/train.d2v" --test "$T/test.d2v" --baseline random > /dev/null 2> "$T/err"
st 2 $? "--baseline random without a checkpoint is a usage error"
d2v-eval -c "$T/missing.safetensors" --train "$T/train.d2v" --test "$T/test.d2v" > /dev/null 2> "$T/err"
st 1 $? "a missing checkpoint is an error"

# Labelled JPEGs tokenized without --channels (channels 0 in the header):
# the raw-input baseline takes them from the first record.
for i in 1 2 3 4; do gen-media jpeg "$T/p$i.jpg" 64 64 -p photo -r $i; done
printf '%s\t0\n%s\t1\n%s\t0\n%s\t1\n' "$T/p1.jpg" "$T/p2.jpg" "$T/p3.jpg" "$T/p4.jpg" |
	d2v-tokenize --size 16 --crop center 2>/dev/null > "$T/jpg.d2v"
d2v-eval --baseline input --train "$T/jpg.d2v" --test "$T/jpg.d2v" --l2 1e-3 --json "$T/jpg.json" > /dev/null 2> "$T/err"
st 0 $? "a JPEG stream with channels 0 in its header evaluates"
js "$T/jpg.json" 'R["input"]["dim"] == 3 * 16 * 16 and j["train"]["records"] == 4' "... as 3 x 16 x 16 pixels"
