#!/bin/sh
# d2v-train and d2v-teacher through the real commands on Fashion-MNIST.
. "$D2V_ROOT/tests/testlib"
need_fashion_mnist
export OMP_NUM_THREADS=1
MODEL="--dim 32 --heads 2 --depth 2 --prenet 1 --decoder-dim 16 --decoder-layers 1 --decoder-groups 4 -b 8 --lr 2e-3 --warmup 4 --ema-decay 0.99 --ema-end-decay 0.999"

fm_images 400 > "$T/img.d2v"
d2v-mask --patch 7 --copies 2 < "$T/img.d2v" > "$T/m.d2v"
check "a 400-image masked stream to train on" [ "$(d2v-show --check "$T/m.d2v" | cut -d, -f1)" = "records 400" ]

# Training: the loss falls, the targets keep their variance.
status 0 "d2v-train runs 50 steps" d2v-train $MODEL -i "$T/m.d2v" --epochs 1 --steps 50 -c "$T/ck.safetensors" --log "$T/log" 2> "$T/err"
check "the log has a header line and 50 steps" [ "$(wc -l < "$T/log")" -eq 51 ]
check "the log's first line names the GEMM engine and the CPU" $PY -c '
import json, sys
h = json.loads(open(sys.argv[1]).readline())
assert "step" not in h and h["device"] == "cpu" and h["precision"] == "fp32", h
assert h["gemm"].startswith(("oneDNN ", "OpenBLAS ")) and "(" in h["gemm"], h
assert h["cpu"] and h["threads"] >= 1 and h["start_step"] == 0, h
print("# " + h["gemm"] + " on " + h["cpu"])
' "$T/log"
check "the loss falls and target_var stays well above zero" $PY -c '
import json, sys
L = [l for l in map(json.loads, open(sys.argv[1])) if "step" in l]
first = sum(l["loss_reg"] for l in L[:5]) / 5; last = sum(l["loss_reg"] for l in L[-5:]) / 5
print("# regression loss %.4f -> %.4f, target_var %.3f" % (first, last, L[-1]["target_var"]))
assert last < 0.9 * first, (first, last)
assert min(l["target_var"] for l in L) > 0.3
assert all(k in L[0] for k in ("step", "loss", "lr", "tau", "grad_norm", "target_var", "pred_var", "tokens_per_sec"))
' "$T/log"
check "the checkpoint parses as safetensors with the config in __metadata__" $PY -c '
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
cfg = json.loads(h["__metadata__"]["config"])
assert cfg["dim"] == 32 and cfg["depth"] == 2 and h["__metadata__"]["step"] == "50"
for k in ("student.patch_embed.weight", "teacher.blocks.1.mlp.fc2.weight", "adam_m.cls_token", "adam_v.decoder.proj.bias"):
    assert k in h, k
assert not any(k.startswith("teacher.decoder") for k in h)
assert h["student.blocks.0.attn.qkv.weight"]["shape"] == [96, 32]
' "$T/ck.safetensors"

# --precision bf16: the same run with the linear layers' products from bf16
# operands: the loss falls as in fp32 and stays close to it.
status 0 "d2v-train --precision bf16 runs the same 50 steps" d2v-train $MODEL --precision bf16 -i "$T/m.d2v" --epochs 1 --steps 50 -c "$T/ckb.safetensors" --log "$T/logb" 2> "$T/err"
contains "$T/err" "precision bf16: \(onednn\|emulated\)" "... and says which engine ran its products"
check "the bf16 loss falls, tracks fp32 and is not fp32's exactly" $PY -c '
import json, sys
A = [l for l in map(json.loads, open(sys.argv[1])) if "step" in l]
B = [l for l in map(json.loads, open(sys.argv[2])) if "step" in l]
a = [l["loss_reg"] for l in A]; b = [l["loss_reg"] for l in B]
fa, fb = sum(a[-5:]) / 5, sum(b[-5:]) / 5
print("# fp32 %.4f -> %.4f, bf16 %.4f -> %.4f" % (a[0], fa, b[0], fb))
assert fb < 0.9 * sum(b[:5]) / 5
assert abs(b[0] - a[0]) < 0.02 * a[0] and abs(fb - fa) < 0.1 * fa, (a[0], b[0], fa, fb)
assert a != b
' "$T/log" "$T/logb"
status 0 "scripts/plot-log overlays the fp32 and bf16 logs" sh "$D2V_ROOT/scripts/plot-log" "$T/log" "$T/logb" "$T/both.png"
check "... into a PNG" [ "$(od -An -c -N4 "$T/both.png" | tr -d ' ')" = "211PNG" ]
status 1 "scripts/plot-log names a log it cannot read" sh -c "sh '$D2V_ROOT/scripts/plot-log' '$T/log' '$T/nolog' '$T/x.png' 2> '$T/err'"
contains "$T/err" "nolog" "... in its message"
status 0 "d2v-teacher --precision bf16 adds targets" sh -c "d2v-teacher -c '$T/ck.safetensors' --precision bf16 --dtype f32 '$T/m.d2v' > '$T/tb.d2v' 2> '$T/err'"
d2v-teacher -c "$T/ck.safetensors" --dtype f32 "$T/m.d2v" > "$T/tf.d2v" 2>/dev/null
check "... within bf16 rounding of the fp32 targets, and not equal to them" $PY -c '
import sys, json, numpy as np; sys.path.insert(0, sys.argv[3]); import d2v_stream as s
def t(f):
    h, ys = None, []
    for k, o in s.read(open(f, "rb")):
        if k == "header": h = o
        elif k == "record": ys.append(o["target"])
    return h, np.concatenate([y.ravel() for y in ys])
(hb, b), (hf, a) = t(sys.argv[1]), t(sys.argv[2])
e = np.linalg.norm(b - a) / np.linalg.norm(a)
print("# bf16 targets against fp32: relative %.2e" % e)
assert 1e-5 < e < 5e-2, e
assert hb["meta"]["teacher"]["precision"] == "bf16" and hf["meta"]["teacher"]["precision"] == "fp32"
' "$T/tb.d2v" "$T/tf.d2v" "$D2V_ROOT/scripts"
status 2 "d2v-teacher --precision fp16 is a usage error" sh -c "d2v-teacher -c '$T/ck.safetensors' --precision fp16 '$T/m.d2v' > /dev/null 2>&1"
status 2 "--precision fp16 is a usage error" d2v-train $MODEL --precision fp16 -i "$T/m.d2v" --steps 2 -c "$T/x.safetensors"

# --device cuda.  Where it runs on a GPU (make check-gpu compares it with
# the CPU), the run must work; elsewhere it must exit 1 saying why, write
# nothing, and never fall back to the CPU.  D2V_CUDA=1 (from the Makefile)
# when the CUDA backend is built: then the message must come from the CUDA
# runtime, which proves the backend linked and ran as far as the driver.
status 2 "--device tpu is a usage error" d2v-train $MODEL --device tpu -i "$T/m.d2v" --steps 2 -c "$T/x.safetensors"
rm -f "$T/cu.safetensors"
d2v-train $MODEL --device cuda -i "$T/m.d2v" --steps 3 -c "$T/cu.safetensors" --log "$T/logcu" 2> "$T/err"
rc=$?
if [ "$rc" -eq 0 ]; then
	ok "d2v-train --device cuda ran on a GPU here"
	check "... and wrote its checkpoint and 3 log lines" [ -s "$T/cu.safetensors" -a "$(grep -c '"step":' "$T/logcu")" -eq 3 ]
else
	check "d2v-train --device cuda without a usable GPU exits 1 (status $rc)" [ "$rc" -eq 1 ]
	check "... and writes no checkpoint" [ ! -e "$T/cu.safetensors" ]
	contains "$T/err" "d2v-train: --device cuda: " "... with a message naming the option"
	if [ "${D2V_CUDA:-0}" = 1 ]; then
		contains "$T/err" "no usable GPU: cudaGetDeviceCount: \|no usable GPU: the CUDA runtime sees no device" "... from the CUDA runtime (the backend is linked)"
	else
		contains "$T/err" "this build has no CUDA backend" "... saying the build has no CUDA backend"
	fi
	status 1 "d2v-teacher --device cuda without a usable GPU exits 1" sh -c "d2v-teacher -c '$T/ck.safetensors' --device cuda '$T/m.d2v' > '$T/tcu.d2v' 2> '$T/err'"
	contains "$T/err" "d2v-teacher: --device cuda: " "... saying why"
fi
if [ "${D2V_CUDA:-0}" = 1 ]; then
	for c in d2v-train d2v-teacher; do
		ldd "$D2V_BIN/$c" > "$T/ldd"
		contains "$T/ldd" "libcublas\\.so" "$c links cuBLAS"
		contains "$T/ldd" "libcudnn\\.so" "$c links cuDNN"
	done
	ldd "$D2V_BIN/d2v-show" > "$T/ldd"
	check "d2v-show (no GPU work) does not load CUDA's libraries" sh -c "! grep -q 'libcu' '$T/ldd'"
fi

# The cache stage, then training from cached targets.
status 0 "d2v-teacher adds targets" d2v-teacher -c "$T/ck.safetensors" -o "$T/cached.d2v" "$T/m.d2v"
d2v-show -n 1 "$T/cached.d2v" > "$T/out"
contains "$T/out" "target *f16 *\[16,32\]" "target is f16 [N, D]"
contains "$T/out" "target_cls *f16 *\[32\]" "target_cls is f16 [D]"
contains "$T/out" "mask *u8 *\[2,16\]" "the mask passes through"
sha=$(sha256sum "$T/ck.safetensors" | cut -d' ' -f1)
contains "$T/out" "\"sha256\":\"$sha\"" "the header names the checkpoint's sha256"
status 0 "d2v-train --targets stream trains on cached targets" d2v-train $MODEL --targets stream -i "$T/cached.d2v" --steps 10 -c "$T/ck2.safetensors" --log "$T/log2"
check "... for 10 steps" [ "$(grep -c '"step":' "$T/log2")" -eq 10 ]
status 1 "--targets stream without a teacher stage is refused" d2v-train $MODEL --targets stream -i "$T/m.d2v" --steps 2 -c "$T/x.safetensors" 2> "$T/err"
contains "$T/err" "no d2v-teacher stage" "... with a message saying so"
d2v-teacher -c "$T/ck.safetensors" --features -1 --pool mean "$T/img.d2v" 2>/dev/null | d2v-show -n 1 > "$T/out"
contains "$T/out" "features *f16 *\[32\]" "--features -1 --pool mean embeds each image as [D]"

# Refusals.
d2v-mask --patch 7 --copies 3 < "$T/img.d2v" > "$T/m3.d2v"
status 1 "a stream masked with other copies than the checkpoint's is refused" d2v-train --resume -i "$T/m3.d2v" --steps 60 -c "$T/ck.safetensors" 2> "$T/err"
contains "$T/err" "3 copies" "... naming the copies"
status 1 "an unmasked stream is refused" d2v-train $MODEL -i "$T/img.d2v" --steps 2 -c "$T/x.safetensors" 2> "$T/err"
contains "$T/err" "run d2v-mask first" "... with a hint"
d2v-tokenize --idx $FM/t10k-images-idx3-ubyte.gz --size 21 --crop center 2>/dev/null | d2v-mask --patch 7 --copies 2 > "$T/m14.d2v"
status 1 "images of another size than the model's are refused" d2v-train --resume -i "$T/m14.d2v" --steps 60 -c "$T/ck.safetensors" 2> "$T/err"
contains "$T/err" "size 21" "... naming the size"
gen-stream -n 3 -m audio > "$T/audio.d2v"
status 1 "an unmasked audio stream is refused" d2v-train $MODEL -i "$T/audio.d2v" --steps 2 -c "$T/x.safetensors" 2> "$T/err"
contains "$T/err" "no masks" "... naming what is missing"
status 1 "the image checkpoint's teacher refuses an audio stream" d2v-teacher -c "$T/ck.safetensors" "$T/audio.d2v" > /dev/null 2> "$T/err"
contains "$T/err" "an audio stream; the model is an image model" "... naming both modalities"
status 2 "stdin without --steps is a usage error" sh -c "d2v-train $MODEL -c '$T/x.safetensors' < '$T/m.d2v' 2>/dev/null"

# A failed checkpoint write leaves the previous checkpoint intact.
cp "$T/ck.safetensors" "$T/keep.safetensors"
( trap '' XFSZ; ulimit -f 64; d2v-train --resume -i "$T/m.d2v" --epochs 2 --steps 60 -c "$T/ck.safetensors" ) > /dev/null 2> "$T/err"
check "a checkpoint write over the file-size limit fails" [ $? -eq 1 ]
contains "$T/err" "intact" "... saying the previous checkpoint is intact"
check "... and it is byte for byte the previous one" cmp -s "$T/ck.safetensors" "$T/keep.safetensors"
check "no temporary file is left behind" [ -z "$(ls "$T" | grep 'ck.safetensors.tmp')" ]

# kill -9 in the middle, then --resume: the same later losses, bit for bit.
d2v-train $MODEL -i "$T/m.d2v" --steps 20 -c "$T/full.safetensors" --log "$T/full.log"
$PY -c '
import sys; sys.path.insert(0, sys.argv[1]); import d2v_stream as s
out = sys.stdout.buffer; w = None
for kind, o in s.read(open(sys.argv[2], "rb")):
    if kind == "header": w = s.Writer(out, o["modality"], o["stages"], o["meta"])
    elif kind == "record" and w.n < 12 * 8:
        rid = o.pop("id"); w.record(rid, **o)
out.flush()   # no trailer: the writer is still "running"
' "$D2V_ROOT/scripts" "$T/m.d2v" > "$T/part.d2v"
mkfifo "$T/fifo"
d2v-train $MODEL --steps 20 --save-every 5 -c "$T/cut.safetensors" --log "$T/cut.log" < "$T/fifo" 2>/dev/null &
pid=$!
exec 7> "$T/fifo"
cat "$T/part.d2v" >&7
i=0
while [ "$(cat "$T/cut.log" 2>/dev/null | grep -c '"step":')" -lt 12 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
kill -9 $pid
wait $pid 2>/dev/null
exec 7>&-
check "the killed run got to step 12 and saved step 10" $PY -c '
import json, struct, sys
b = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", b[:8])[0]
assert json.loads(b[8:8 + n])["__metadata__"]["step"] == "10"
' "$T/cut.safetensors"
status 0 "--resume continues from the checkpoint" d2v-train --resume -i "$T/m.d2v" -c "$T/cut.safetensors" --log "$T/resumed.log"
check "steps 11..20 after resuming equal the uninterrupted run's, bit for bit" sh -c "grep '\"step\":' '$T/full.log' | tail -n 10 | sed 's/,\"tokens_per_sec\".*//' > '$T/a'; grep '\"step\":' '$T/resumed.log' | sed 's/,\"tokens_per_sec\".*//' > '$T/b'; cmp -s '$T/a' '$T/b'"
check "... and the final checkpoints agree" $PY -c '
import json, struct, sys
def body(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]
    return b[8 + n:]
assert body(sys.argv[1]) == body(sys.argv[2])
' "$T/full.safetensors" "$T/cut.safetensors"
status 0 "--until 7 stops a run of 20 steps at step 7" d2v-train $MODEL -i "$T/m.d2v" --steps 20 --until 7 -c "$T/until.safetensors" --log "$T/until.log"
check "... after 7 logged steps, with step 7 in the checkpoint" sh -c "[ \$(grep -c '\"step\":' '$T/until.log') -eq 7 ] && grep -q '\"step\":\"7\"' '$T/until.safetensors'"
d2v-train --resume -i "$T/m.d2v" -c "$T/until.safetensors" --log "$T/until.log"
check "--resume after --until gives the uninterrupted run's 20 steps, bit for bit" sh -c "grep '\"step\":' '$T/full.log' | sed 's/,\"tokens_per_sec\".*//' > '$T/a'; grep '\"step\":' '$T/until.log' | sed 's/,\"tokens_per_sec\".*//' > '$T/b'; cmp -s '$T/a' '$T/b'"

# A NaN loss stops training and names the last good checkpoint (the
# divergence injected at step 55: a checkpoint holding a NaN is refused
# as damaged before any step, tests/faults.sh).
cp "$T/ck.safetensors" "$T/nan.safetensors"
status 1 "a NaN loss stops training" sh -c "D2V_FAULT_NAN_AT=55 d2v-train --resume -i '$T/m.d2v' --epochs 2 --steps 60 -c '$T/nan.safetensors' 2> '$T/err'"
contains "$T/err" "step 54: the loss is nan.*last good checkpoint is $T/nan.safetensors (step 50)" "... naming the step and the last good checkpoint"

# JPEG photos tokenized without --channels: the header leaves the channels
# to the images, and the model takes them from the first record.
for i in 1 2 3 4; do gen-media jpeg "$T/p$i.jpg" 96 80 -p photo -r $i; done
gen-media jpeg "$T/grey.jpg" 96 80 -s gray
d2v-tokenize --size 32 "$T"/p[1-4].jpg 2>/dev/null | d2v-mask --patch 8 --copies 2 > "$T/jpg.d2v"
status 0 "a JPEG stream with channels 0 in its header trains" d2v-train --dim 24 --heads 2 --depth 1 --prenet 0 \
	--decoder-dim 8 --decoder-layers 1 --decoder-groups 2 -b 2 -i "$T/jpg.d2v" -c "$T/jpg.safetensors" 2> "$T/err"
check "... with a model of 3 channels" $PY -c '
import json, struct, sys
b = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", b[:8])[0]
m = json.loads(b[8:8 + n])["__metadata__"]; c = json.loads(m["config"])
assert c["channels"] == 3 and c["image_size"] == 32, c
' "$T/jpg.safetensors"
d2v-tokenize --size 32 "$T/p1.jpg" "$T/grey.jpg" 2>/dev/null | d2v-mask --patch 8 --copies 2 > "$T/mixed.d2v"
status 1 "grey and colour JPEGs mixed in one stream are refused" d2v-train --dim 24 --heads 2 --depth 1 --prenet 0 \
	--decoder-dim 8 --decoder-layers 1 --decoder-groups 2 -b 2 -i "$T/mixed.d2v" -c "$T/mixed.safetensors" 2> "$T/err"
contains "$T/err" "record 1 .*grey.jpg.*d2v-tokenize --channels 1 or 3" "... naming the record and the fix"

# The data2vec (v1) objective on images: BEiT block masks, one per image.
d2v-mask --strategy block --patch 4 --copies 1 < "$T/img.d2v" > "$T/b.d2v"
V1="--objective v1 --dim 32 --heads 2 --depth 3 -b 16 --lr 2e-3 --warmup 4 --layer-scale 0.1 --drop-path 0.1 --ema-decay 0.99 --ema-end-decay 0.999 --ema-anneal-end 20"
status 0 "d2v-train --objective v1 trains on block masks" d2v-train $V1 -i "$T/b.d2v" --epochs 2 --steps 40 -c "$T/v1.safetensors" --log "$T/v1log" 2> "$T/err"
check "the v1 loss falls" $PY -c '
import json, sys
L = [l for l in map(json.loads, open(sys.argv[1])) if "step" in l]
first = sum(l["loss"] for l in L[:5]) / 5; last = sum(l["loss"] for l in L[-5:]) / 5
print("# v1 Smooth-L1 loss %.4f -> %.4f" % (first, last))
assert len(L) == 40 and last < 0.8 * first, (first, last)
' "$T/v1log"
check "the v1 checkpoint: mask token, LayerScale, head, no decoder, an EMA of everything" $PY -c '
import json, struct, sys
b = open(sys.argv[1], "rb").read()
h = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])
cfg = json.loads(h["__metadata__"]["config"])
assert cfg["objective"] == "v1" and cfg["loss_beta"] == 2 and cfg["clone"] == 1
for k in ("student.mask_token", "student.blocks.2.gamma_2", "teacher.head.weight", "teacher.mask_token"):
    assert k in h, k
assert not any(".decoder." in k or k.endswith("decoder.proj.weight") for k in h)
' "$T/v1.safetensors"
d2v-teacher -c "$T/v1.safetensors" "$T/b.d2v" 2> "$T/err" | d2v-show -n 1 > "$T/out"
contains "$T/out" "target *f16 *\[49,32\]" "d2v-teacher adds v1 targets [N, D]"
check "... and no target_cls" sh -c '! grep -q target_cls "$1"' - "$T/out"
status 1 "d2v-teacher --objective v2 refuses a v1 checkpoint" d2v-teacher --objective v2 -c "$T/v1.safetensors" "$T/b.d2v" 2> "$T/err" > /dev/null
contains "$T/err" "a v1 checkpoint; --objective v2" "... naming both"
status 1 "the v2 objective refuses v1 block masks" d2v-train $MODEL -i "$T/b.d2v" --steps 2 -c "$T/x.safetensors" 2> "$T/err"
contains "$T/err" "masks of strategy block, a data2vec (v1) strategy" "... naming the strategy and the fix"
status 1 "the v1 objective refuses masks of 2 copies" d2v-train $V1 -i "$T/m.d2v" --steps 2 -c "$T/x.safetensors" 2> "$T/err"
contains "$T/err" "the v1 objective takes one mask per sample" "... saying so"
status 2 "--objective v3 is a usage error" d2v-train --objective v3 -i "$T/b.d2v" --steps 2 -c "$T/x.safetensors" 2> /dev/null
