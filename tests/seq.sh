#!/bin/sh
# d2v-train, d2v-teacher and d2v-eval on audio and text through the real
# commands: speech made here by espeak-ng (clips of different lengths, so
# batches are cropped), text tokenized with a sentencepiece model trained
# here by scripts/train-spm.
. "$D2V_ROOT/tests/testlib"
if ! command -v espeak-ng > /dev/null 2>&1 || ! command -v spm_train > /dev/null 2>&1; then
	echo "skip - espeak-ng or spm_train is not installed (make deps installs them)"
	exit 0
fi
export OMP_NUM_THREADS=1

# ---- audio ----------------------------------------------------------------
# two classes of words ("yes", "no") in several voices, speeds and pitches
mkdir -p "$T/speech/yes" "$T/speech/no"
i=0
for v in en en-us en-gb-x-rp; do
	for s in 120 150 180 210; do
		for p in 30 60; do
			i=$((i + 1))
			espeak-ng -v $v -s $s -p $p -w "$T/speech/yes/$i.wav" "yes yes" 2>/dev/null
			espeak-ng -v $v -s $s -p $p -w "$T/speech/no/$i.wav" "no no" 2>/dev/null
		done
	done
done
d2v-tokenize --label-from dir --min-samples 4000 --max-samples 16000 "$T/speech" > "$T/a.d2v" 2> "$T/err"
check "48 labelled spoken clips tokenized" [ "$(d2v-show --check "$T/a.d2v" | cut -d, -f1)" = "records 48" ]
d2v-mask --copies 2 < "$T/a.d2v" > "$T/am.d2v"
AM="--dim 32 --heads 2 --depth 3 --conv-dim 16 --decoder-dim 16 --decoder-groups 4 --decoder-layers 2 -b 8 --lr 2e-3 --warmup 4 --ema-decay 0.99 --ema-end-decay 0.999"
status 0 "d2v-train trains an audio model (clips of different lengths in a batch)" \
	d2v-train $AM -i "$T/am.d2v" --epochs 8 --steps 40 -c "$T/a.safetensors" --log "$T/alog" 2> "$T/err"
check "the audio loss falls" $PY -c '
import json, sys
L = [l for l in map(json.loads, open(sys.argv[1])) if "step" in l]
first = sum(l["loss_reg"] for l in L[:5]) / 5; last = sum(l["loss_reg"] for l in L[-5:]) / 5
print("# audio regression loss %.4f -> %.4f, target_var %.3f" % (first, last, L[-1]["target_var"]))
assert len(L) == 40 and last < 0.9 * first, (first, last)
assert all(l["loss_cls"] == 0 for l in L)
' "$T/alog"
check "the checkpoint holds the feature encoder, ALiBi scales and no CLS" $PY -c '
import json, struct, sys
b = open(sys.argv[1], "rb").read()
h = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])
cfg = json.loads(h["__metadata__"]["config"])
assert cfg["modality"] == "audio" and cfg["conv_dim"] == 16
assert h["student.feature_extractor.conv_layers.0.conv.weight"]["shape"] == [16, 1, 10]
assert h["teacher.alibi_scale"]["shape"] == [1, 1, 2, 1, 1]
assert h["student.decoder.layers.0.conv.weight"]["shape"] == [16, 8, 7]
assert not any("cls_token" in k for k in h)
' "$T/a.safetensors"
status 0 "d2v-teacher adds audio targets" d2v-teacher -c "$T/a.safetensors" -o "$T/at.d2v" "$T/am.d2v"
d2v-show -n 1 "$T/at.d2v" > "$T/out"
frames=$(grep -o 'mask *u8 *\[2,[0-9]*\]' "$T/out" | sed 's/.*,//; s/]//')
contains "$T/out" "target *f16 *\[$frames,32\]" "target is [frames, D], frames as the mask's"
check "no target_cls for audio" sh -c '! grep -q target_cls "$1"' - "$T/out"
status 0 "d2v-train --targets stream trains on cached audio targets" \
	d2v-train $AM --targets stream -i "$T/at.d2v" --steps 4 -c "$T/a2.safetensors"
d2v-teacher -c "$T/a.safetensors" --features -1 --pool mean "$T/a.d2v" 2>/dev/null | d2v-show -n 1 > "$T/out"
contains "$T/out" "features *f16 *\[32\]" "--features -1 --pool mean embeds a clip as [D]"
status 2 "--pool cls is a usage error for audio" d2v-teacher -c "$T/a.safetensors" --features -1 --pool cls "$T/a.d2v" > /dev/null 2>&1
d2v-eval -c "$T/a.safetensors" --baseline random,input --train "$T/a.d2v" --test "$T/a.d2v" --l2 1e-2 > "$T/rep" 2> "$T/err"
st=$?
check "d2v-eval evaluates the audio model" [ $st -eq 0 ]
contains "$T/rep" "^input *201 " "the input baseline is the 201-bin mean log spectrum"
check "on its training clips, the spectrum baseline separates yes from no" awk '$1 == "input" && $3 > 0.9 { f = 1 } END { exit !f }' "$T/rep"
d2v-eval -c "$T/a.safetensors" --masked "$T/am.d2v" --train "$T/a.d2v" --test "$T/a.d2v" --l2 1e-2 > "$T/rep" 2> "$T/err"
contains "$T/rep" "held-out pretraining loss .* on 48 masked clips" "--masked reports the audio pretraining loss"

# bad audio: shorter than the receptive field, non-finite samples
$PY -c '
import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import d2v_stream as s
w = s.Writer(sys.stdout.buffer, "audio", ["tokenize", "mask"], {"mask": {"copies": 2}})
w.record("ok", x=np.ones(4000, np.float32), mask=np.tile(np.arange(12) % 2, (2, 1)).astype(np.uint8))
w.record("short", x=np.ones(300, np.float32), mask=np.zeros((2, 0), np.uint8))
w.close()' "$D2V_ROOT/scripts" > "$T/short.d2v"
status 1 "audio shorter than the receptive field is refused" d2v-train --resume -i "$T/short.d2v" --steps 41 -c "$T/a.safetensors" 2> "$T/err"
contains "$T/err" "record 1 (short): 300 samples; the feature encoder needs at least 400" "... naming the record and the limit"

# ---- v1 audio: span masks, one copy, the whole sequence --------------------
d2v-mask --copies 1 --strategy span < "$T/a.d2v" > "$T/as.d2v"
A1="--objective v1 --dim 32 --heads 2 --depth 3 --conv-dim 16 -b 8 --lr 2e-3 --ema-decay 0.99 --ema-end-decay 0.999"
status 0 "d2v-train --objective v1 trains an audio model on span masks" \
	d2v-train $A1 -i "$T/as.d2v" --epochs 8 --steps 40 -c "$T/a1.safetensors" --log "$T/a1log" 2> "$T/err"
check "the v1 audio loss falls; the lr goes up, holds and decays (tri-stage)" $PY -c '
import json, sys
L = [l for l in map(json.loads, open(sys.argv[1])) if "step" in l]
first = sum(l["loss"] for l in L[:5]) / 5; last = sum(l["loss"] for l in L[-5:]) / 5
lr = [l["lr"] for l in L]
print("# v1 audio loss %.4f -> %.4f" % (first, last))
assert len(L) == 40 and last < 0.7 * first, (first, last)
peak = max(lr)
assert abs(peak - 2e-3) < 1e-9 and lr[0] < 0.1 * peak and lr[-1] < 0.5 * peak, lr
assert sum(1 for v in lr if v == peak) >= 30, lr
' "$T/a1log"
check "the v1 audio checkpoint: mask_emb and final_proj for the student only, no decoder, no ALiBi, the position encoder shared" $PY -c '
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
def data(k): o = h[k]["data_offsets"]; return b[8 + n + o[0]:8 + n + o[1]]
cfg = json.loads(h["__metadata__"]["config"])
assert cfg["objective"] == "v1" and cfg["lr_schedule"] == "tri_stage"
assert h["student.mask_emb"]["shape"] == [32] and "teacher.mask_emb" not in h
assert h["student.final_proj.weight"]["shape"] == [32, 32] and "teacher.final_proj.weight" not in h
assert not any(".decoder." in k or "alibi" in k for k in h)
assert data("teacher.pos_conv.0.weight") == data("student.pos_conv.0.weight")
assert data("teacher.blocks.0.mlp.fc1.weight") != data("student.blocks.0.mlp.fc1.weight")
' "$T/a1.safetensors"
status 0 "d2v-teacher adds v1 audio targets" d2v-teacher -c "$T/a1.safetensors" --objective v1 -o "$T/at1.d2v" "$T/as.d2v"
d2v-show -n 1 "$T/at1.d2v" > "$T/out"
frames=$(grep -o 'mask *u8 *\[1,[0-9]*\]' "$T/out" | sed 's/.*,//; s/]//')
contains "$T/out" "target *f16 *\[$frames,32\]" "v1 audio targets are [frames, D]"
status 1 "--objective v2 on the v1 checkpoint is refused" d2v-teacher -c "$T/a1.safetensors" --objective v2 "$T/as.d2v" 2> "$T/err" > /dev/null
contains "$T/err" "a v1 checkpoint; --objective v2" "... naming both objectives"
status 0 "d2v-train --objective v1 --targets stream trains on cached v1 audio targets" \
	d2v-train $A1 --targets stream -i "$T/at1.d2v" --steps 4 -c "$T/a3.safetensors"
d2v-eval -c "$T/a1.safetensors" --masked "$T/as.d2v" --train "$T/a.d2v" --test "$T/a.d2v" --l2 1e-2 > "$T/rep" 2> "$T/err"
contains "$T/rep" "held-out pretraining loss .* on 48 masked clips" "d2v-eval evaluates the v1 audio model and its pretraining loss"
status 1 "v1 with several mask copies is refused" d2v-train $A1 -i "$T/am.d2v" --steps 4 -c "$T/a4.safetensors" 2> "$T/err"
contains "$T/err" "masks of 2 copies; the v1 objective takes one mask per sample (d2v-mask --copies 1 --strategy span)" "... naming the fix"

# ---- text -------------------------------------------------------------------
$PY -c '
import random
random.seed(3)
a = "apple banana cherry grape lemon mango orange peach pear plum".split()
b = "red green blue yellow purple white black brown pink grey".split()
for i in range(400):
    print(" ".join(random.choice(a if i % 2 else b) for _ in range(random.randint(6, 14))))
' > "$T/corpus.txt"
"$D2V_ROOT/scripts/train-spm" "$T/corpus.txt" "$T/spm" 40 > /dev/null 2>&1
d2v-tokenize --spm "$T/spm.model" --block 24 "$T/corpus.txt" > "$T/t.d2v" 2> "$T/err"
d2v-mask --copies 3 < "$T/t.d2v" > "$T/tm.d2v"
TM="--dim 32 --heads 2 --depth 3 -b 16 --lr 2e-3 --warmup 4 --ema-decay 0.99 --ema-end-decay 0.999"
status 0 "d2v-train trains a text model" d2v-train $TM -i "$T/tm.d2v" --epochs 4 --steps 40 -c "$T/t.safetensors" --log "$T/tlog" 2> "$T/err"
check "the text loss falls" $PY -c '
import json, sys
L = [l for l in map(json.loads, open(sys.argv[1])) if "step" in l]
first = sum(l["loss_reg"] for l in L[:5]) / 5; last = sum(l["loss_reg"] for l in L[-5:]) / 5
print("# text regression loss %.4f -> %.4f" % (first, last))
assert len(L) == 40 and last < 0.9 * first, (first, last)
' "$T/tlog"
check "the checkpoint holds the embeddings and a two-layer projection" $PY -c '
import json, struct, sys
b = open(sys.argv[1], "rb").read()
h = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])
cfg = json.loads(h["__metadata__"]["config"])
assert cfg["modality"] == "text" and cfg["vocab"] == 40 and cfg["max_positions"] == 24
assert h["student.embed_tokens.weight"]["shape"] == [40, 32]
assert h["student.embed_positions.weight"]["shape"] == [26, 32]
assert h["student.decoder.proj.0.weight"]["shape"] == [64, 32]
assert h["student.decoder.proj.1.weight"]["shape"] == [32, 64]
assert "student.context_norm.weight" not in h
' "$T/t.safetensors"
# labelled lines of different lengths: the two word families
$PY -c '
import random
random.seed(4)
a = "apple banana cherry grape lemon mango orange peach pear plum".split()
b = "red green blue yellow purple white black brown pink grey".split()
for i in range(120):
    print("%d\t%s" % (i % 2, " ".join(random.choice(a if i % 2 else b) for _ in range(random.randint(3, 12)))))
' > "$T/lab.txt"
d2v-tokenize --spm "$T/spm.model" --block 24 --break-mode line --labeled "$T/lab.txt" > "$T/lab.d2v" 2> "$T/err"
d2v-eval -c "$T/t.safetensors" --baseline input --train "$T/lab.d2v" --test "$T/lab.d2v" --limit-test 60 --l2 1e-2 > "$T/rep" 2> "$T/err"
st=$?
check "d2v-eval evaluates the text model on lines of different lengths" [ $st -eq 0 ]
contains "$T/rep" "^input *40 " "the input baseline is the 40 token frequencies"
check "the pretrained features separate the word families" awk '$1 == "pretrained" && $3 > 0.9 { f = 1 } END { exit !f }' "$T/rep"
d2v-tokenize --spm "$T/spm.model" --block 32 "$T/corpus.txt" 2>/dev/null | d2v-mask --copies 3 > "$T/t32.d2v"
status 1 "text longer than the position table is refused" d2v-train --resume -i "$T/t32.d2v" --steps 41 -c "$T/t.safetensors" 2> "$T/err"
contains "$T/err" "record 0 .*32 tokens; the model's position table holds 24" "... naming the record and the table"
status 1 "an audio model refuses a text stream" d2v-teacher -c "$T/a.safetensors" "$T/t.d2v" 2> "$T/err" > /dev/null
contains "$T/err" "a text stream; the model is an audio model" "... naming both"

# ---- v1 text: BERT masks, the student reads x_masked ----------------------
d2v-mask --copies 1 --strategy bert < "$T/t.d2v" > "$T/tb.d2v"
T1="--objective v1 --dim 32 --heads 2 --depth 3 -b 16 --lr 2e-3 --warmup 4 --ema-decay 0.99 --ema-end-decay 0.999"
status 0 "d2v-train --objective v1 trains a text model on BERT masks" \
	d2v-train $T1 -i "$T/tb.d2v" --epochs 4 --steps 40 -c "$T/t1.safetensors" --log "$T/t1log" 2> "$T/err"
check "the v1 text loss falls" $PY -c '
import json, sys
L = [l for l in map(json.loads, open(sys.argv[1])) if "step" in l]
first = sum(l["loss"] for l in L[:5]) / 5; last = sum(l["loss"] for l in L[-5:]) / 5
print("# v1 text loss %.4f -> %.4f" % (first, last))
assert len(L) == 40 and last < 0.85 * first, (first, last)
' "$T/t1log"
check "the v1 text checkpoint: the two-layer regression head for the student only, the embedding shared" $PY -c '
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
def data(k): o = h[k]["data_offsets"]; return b[8 + n + o[0]:8 + n + o[1]]
cfg = json.loads(h["__metadata__"]["config"])
assert cfg["objective"] == "v1" and cfg["loss_beta"] == 4 and cfg["target_layer_norm"] == "ln"
assert h["student.regression_head.0.weight"]["shape"] == [64, 32]
assert h["student.regression_head.2.weight"]["shape"] == [32, 64]
assert not any(k.startswith("teacher.regression_head") or ".decoder." in k for k in h)
assert data("teacher.embed_tokens.weight") == data("student.embed_tokens.weight")
' "$T/t1.safetensors"
d2v-eval -c "$T/t1.safetensors" --masked "$T/tb.d2v" --train "$T/lab.d2v" --test "$T/lab.d2v" --limit-test 60 --l2 1e-2 > "$T/rep" 2> "$T/err"
contains "$T/rep" "held-out pretraining loss" "d2v-eval evaluates the v1 text model and its pretraining loss"
d2v-mask --copies 1 --strategy random < "$T/t.d2v" > "$T/tr.d2v"
status 1 "v1 text on masks without x_masked is refused" d2v-train $T1 -i "$T/tr.d2v" --steps 4 -c "$T/t4.safetensors" 2> "$T/err"
contains "$T/err" "strategy random without a <mask> id.*d2v-mask --strategy bert" "... naming the fix"
$PY -c '
import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import d2v_stream as s
w = s.Writer(sys.stdout.buffer, "text", ["tokenize", "mask"], {"tokenize": {"vocab_size": 40, "mask": 4},
    "mask": {"strategy": "bert", "copies": 1, "mask_id": 4}})
x = np.arange(5, 17, dtype=np.int32); m = (np.arange(12) % 4 == 0).astype(np.uint8)[None]
w.record("good", x=x, mask=m, x_masked=np.where(m[0] == 1, 4, x).astype(np.int32)[None])
w.record("bare", x=x, mask=m)
w.close()' "$D2V_ROOT/scripts" > "$T/nomask.d2v"
status 1 "a v1 text record without x_masked is refused" d2v-train $T1 -b 1 -i "$T/nomask.d2v" --steps 4 -c "$T/t5.safetensors" 2> "$T/err"
contains "$T/err" "record 1 (bare): the v1 text objective needs x_masked i32 \[1,12\]" "... naming the record"
