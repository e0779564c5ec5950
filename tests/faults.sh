#!/bin/sh
# The fault suite: bad input, faults and misuse through the real commands,
# one case per class of what broke when the commands were tried as an
# adversary would (issue 20).  Each asserts the exit status, the message,
# and that nothing was lost or damaged: checksums of files before and
# after, a device still a device, a link still a link.
. "$D2V_ROOT/tests/testlib"
need_fashion_mnist
export OMP_NUM_THREADS=1
MODEL="--dim 16 --heads 2 --depth 1 --prenet 0 --decoder-dim 8 --decoder-layers 1 --decoder-groups 4 -b 8 --lr 2e-3 --warmup 2"
sum() { sha256sum "$1" | cut -d' ' -f1; }
steps_of() { cat "$1" 2>/dev/null | grep -c '"step":'; }
ck_step() { # the step in a checkpoint's metadata
	$PY -c '
import json, struct, sys
b = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", b[:8])[0]
print(json.loads(b[8:8 + n])["__metadata__"]["step"])' "$1"
}
strip_tps() { grep '"step":' "$1" | sed 's/,"tokens_per_sec".*//'; }

fm_images 100 > "$T/img.d2v"
d2v-mask --patch 7 --copies 2 < "$T/img.d2v" > "$T/m.d2v"
d2v-train $MODEL -i "$T/m.d2v" --steps 6 -c "$T/ck.safetensors" -q
check "a 100-image stream and a checkpoint to work on" [ -s "$T/ck.safetensors" ]

# ---- 1. a checkpoint path that is a device or a FIFO is written in place
if mknod "$T/null" c 1 3 2> /dev/null; then
	status 0 "-c on a character device (a private /dev/null)" \
		d2v-train $MODEL -i "$T/m.d2v" --steps 2 -c "$T/null" -q
	check "... which is still a character device" [ -c "$T/null" ]
else
	echo "skip - mknod needs root: the device case is not run"
fi
mkfifo "$T/ckfifo"
timeout 30 cat "$T/ckfifo" > "$T/fromfifo" &
rpid=$!
status 0 "-c on a FIFO" d2v-train $MODEL -i "$T/m.d2v" --steps 2 -c "$T/ckfifo" -q
wait $rpid
check "... which is still a FIFO, and the checkpoint went through it" \
	sh -c "[ -p '$T/ckfifo' ] && [ \"\$(head -c 8 '$T/fromfifo' | wc -c)\" -eq 8 ]"
mkdir "$T/dir"
status 1 "-c on a directory is refused" sh -c "d2v-train $MODEL -i '$T/m.d2v' --steps 200 -c '$T/dir' -q 2> '$T/err'"
contains "$T/err" "is a directory" "... before training, saying it is a directory"

# ---- 16. a symbolic link is written through
cp "$T/ck.safetensors" "$T/target.safetensors"
ln -s target.safetensors "$T/link.safetensors"
d2v-train $MODEL -i "$T/m.d2v" --steps 2 -c "$T/link.safetensors" --force -q
check "-c on a symbolic link keeps the link" [ -L "$T/link.safetensors" ]
check "... and replaces its target" [ "$(ck_step "$T/target.safetensors")" = 2 ]
cp "$T/img.d2v" "$T/target.d2v"
ln -s target.d2v "$T/link.d2v"
d2v-mask --patch 7 --copies 1 -o "$T/link.d2v" < "$T/img.d2v"
check "-o on a symbolic link keeps the link" [ -L "$T/link.d2v" ]
check "... and writes its target" sh -c "d2v-show --check '$T/target.d2v' | grep -q 'records 100' && ! cmp -s '$T/target.d2v' '$T/img.d2v'"

# ---- 18. temporaries of dead writers do not stay
sh -c 'exit 0' &
dead=$!
wait $dead
: > "$T/ck.safetensors.tmp.$dead"
d2v-train $MODEL -i "$T/m.d2v" --steps 2 -c "$T/ck.safetensors" --force -q
check "a temporary left by a dead writer is removed by the next save" [ ! -e "$T/ck.safetensors.tmp.$dead" ]
check "... and no temporary of this writer is left" [ -z "$(ls "$T" | grep 'ck.safetensors.tmp')" ]

# ---- 14. the log and the checkpoint; overwriting a checkpoint
d2v-train $MODEL -i "$T/m.d2v" --steps 6 -c "$T/ck.safetensors" --force -q
before=$(sum "$T/ck.safetensors")
status 2 "--log and -c naming the same file is refused" sh -c "d2v-train $MODEL -i '$T/m.d2v' --steps 2 -c '$T/ck.safetensors' --log '$T/ck.safetensors' --force 2> '$T/err'"
contains "$T/err" "same file" "... saying the log would be lost"
status 1 "a fresh run onto an existing checkpoint is refused" sh -c "d2v-train $MODEL -i '$T/m.d2v' --steps 2 -c '$T/ck.safetensors' 2> '$T/err'"
contains "$T/err" "exists: --resume continues its run, --force replaces it" "... naming --resume and --force"
check "... and the checkpoint is unchanged" [ "$(sum "$T/ck.safetensors")" = "$before" ]

# ---- 15. a log that cannot be written stops the run
if [ -w /dev/full ]; then
	status 1 "--log /dev/full fails" sh -c "d2v-train $MODEL -i '$T/m.d2v' --steps 2 -c '$T/full.safetensors' --log /dev/full 2> '$T/err'"
	contains "$T/err" "write error" "... with a write error"
	check "/dev/full is still a character device" [ -c /dev/full ]
fi

# ---- 4. resuming a finished run, or --until at or below the step
status 0 "--resume of a finished run" sh -c "d2v-train --resume -i '$T/m.d2v' -c '$T/ck.safetensors' 2> '$T/err'"
contains "$T/err" "finished; nothing to do" "... does nothing and says so"
check "... leaving the checkpoint byte for byte" [ "$(sum "$T/ck.safetensors")" = "$before" ]
d2v-train $MODEL -i "$T/m.d2v" --steps 12 --until 6 -c "$T/u.safetensors" -q
before=$(sum "$T/u.safetensors")
status 0 "--resume --until 4 below the checkpoint's step 6" sh -c "d2v-train --resume --until 4 -i '$T/m.d2v' -c '$T/u.safetensors' 2> '$T/err'"
contains "$T/err" "nothing to do" "... does nothing and says so"
check "... leaving the checkpoint byte for byte" [ "$(sum "$T/u.safetensors")" = "$before" ]

# ---- 12. flags that conflict with the checkpoint on --resume
status 2 "--resume with another --lr is refused" sh -c "d2v-train --resume --lr 0.5 -i '$T/m.d2v' -c '$T/u.safetensors' 2> '$T/err'"
contains "$T/err" "conflicts with the checkpoint's" "... naming the conflict"
status 2 "--resume with another -b is refused" sh -c "d2v-train --resume -b 4 -i '$T/m.d2v' -c '$T/u.safetensors' 2> '$T/err'"
check "... and the checkpoint is unchanged" [ "$(sum "$T/u.safetensors")" = "$before" ]
status 0 "--resume with the same -b and --lr continues" sh -c "d2v-train --resume -b 8 --lr 2e-3 --until 8 -i '$T/m.d2v' -c '$T/u.safetensors' -q"
status 0 "--resume --steps 20 lengthens the run" sh -c "d2v-train --resume --steps 20 -i '$T/m.d2v' -c '$T/u.safetensors' 2> '$T/err'"
contains "$T/err" "the schedules now end at step 20" "... and says so"
check "... to step 20" [ "$(ck_step "$T/u.safetensors")" = 20 ]

# ---- 3 and 19. --resume across an epoch boundary, -b not dividing the
# records (100 records, -b 16: 6 whole updates and one of 4 a pass); the
# resumed log is cut back to the checkpoint
d2v-train $MODEL -b 16 -i "$T/m.d2v" --epochs 3 -c "$T/e.safetensors" --log "$T/e.log" -q
check "3 passes of 7 updates each" [ "$(steps_of "$T/e.log")" -eq 21 ]
d2v-train $MODEL -b 16 -i "$T/m.d2v" --epochs 3 --until 9 -c "$T/r.safetensors" --log "$T/r.log" -q
printf '{"step":10,"loss":1}\n{"step":11,"loss":1}\n' >> "$T/r.log"
d2v-train --resume -i "$T/m.d2v" --epochs 3 -c "$T/r.safetensors" --log "$T/r.log" -q
strip_tps "$T/e.log" > "$T/a"
strip_tps "$T/r.log" > "$T/b"
check "resumed past an epoch boundary: the uninterrupted run's 21 steps, bit for bit" cmp -s "$T/a" "$T/b"
check "... no step twice in the resumed log (cut back to step 9)" \
	[ "$(grep '"step":' "$T/r.log" | sed 's/,.*//' | sort | uniq -d | wc -l)" -eq 0 ]

# ---- 11. --steps beyond one pass without --epochs: the passes it needs
status 0 "--steps 20 on 100 records of -b 16, no --epochs" sh -c "d2v-train $MODEL -b 16 -i '$T/m.d2v' --steps 20 -c '$T/s.safetensors' --log '$T/s.log' 2> '$T/err'"
check "... runs all 20 steps" [ "$(steps_of "$T/s.log")" -eq 20 ]
status 0 "--steps 20 with --epochs 1" sh -c "d2v-train $MODEL -b 16 -i '$T/m.d2v' --steps 20 --epochs 1 -c '$T/s1.safetensors' 2> '$T/err'"
contains "$T/err" "ended at step 7 of 20" "... says the input ended before the steps"

# ---- 2. a signal while waiting on a stalled input
mkfifo "$T/in"
( cat "$T/m.d2v"; exec sleep 600 ) > "$T/in" &
wpid=$!
d2v-train $MODEL -c "$T/st.safetensors" --steps 1000 --log "$T/st.log" -q < "$T/in" 2> "$T/err" &
tpid=$!
i=0
while [ "$(steps_of "$T/st.log")" -lt 12 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
sleep 0.5
kill -TERM $tpid
# a guard against a hang, not a timing: the writer holds the pipe open
# for 600 s, and the question is whether d2v-train ends before it does
i=0
while kill -0 $tpid 2> /dev/null && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
writer=0
kill -0 $wpid 2> /dev/null && writer=1
kill -9 $tpid 2> /dev/null
wait $tpid
rc=$?
kill $wpid 2> /dev/null
wait $wpid 2> /dev/null
check "SIGTERM while the input stalls ends d2v-train while the writer still holds the pipe (status $rc)" [ $writer -eq 1 -a $rc -eq 0 ]
check "... with the checkpoint of the last whole update (step 12)" [ "$(ck_step "$T/st.safetensors")" = 12 ]

# ---- messages
mkfifo "$T/in2"
status 2 "a FIFO without --steps asks for --steps" sh -c "d2v-train $MODEL -i '$T/in2' -c '$T/p.safetensors' 2> '$T/err' & sleep 0.3; exec 5> '$T/in2'; cat '$T/m.d2v' >&5; exec 5>&-; wait \$!"
contains "$T/err" "cannot be counted without consuming it" "... saying that it cannot be counted"

# ---- 5, 6, 13. damaged or incomplete checkpoints are refused, naming why
mutate() { # MODE IN OUT: a changed copy of a checkpoint
	$PY - "$@" <<'PYEOF'
import hashlib, json, struct, sys
import numpy as np
mode, src, dst = sys.argv[1:4]
b = open(src, "rb").read(); n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n]); data = bytearray(b[8 + n:])
meta = h.pop("__metadata__")
def rehash():
    meta["data_sha256"] = hashlib.sha256(bytes(data)).hexdigest()
if mode == "drop-one-teacher":
    k = sorted(k for k in h if k.startswith("teacher."))[0]; del h[k]
elif mode == "drop-adam":
    for k in [k for k in h if k.startswith("adam_")]: del h[k]
elif mode == "nan-teacher":
    a, e = h["teacher.blocks.0.attn.qkv.weight"]["data_offsets"]
    data[a:a + 4] = np.array([np.nan], np.float32).tobytes(); rehash()
elif mode == "random-bytes":
    a, e = h["teacher.blocks.0.attn.qkv.weight"]["data_offsets"]
    data[a:a + 16] = bytes(range(16))
elif mode == "bad-offsets":
    h["student.cls_token"]["data_offsets"] = [0, 5]
elif mode == "no-digest":
    meta.pop("data_sha256")
elif mode.startswith("step="):
    meta["step"] = mode[5:]
h["__metadata__"] = meta
# the data section as the header now says (dropped tensors leave gaps,
# which is still a valid file)
hb = json.dumps(h).encode(); hb += b" " * ((8 - len(hb) % 8) % 8)
open(dst, "wb").write(struct.pack("<Q", len(hb)) + hb + bytes(data))
PYEOF
}
d2v-train $MODEL -i "$T/m.d2v" --steps 4 -c "$T/good.safetensors" -q
for m in drop-one-teacher nan-teacher random-bytes bad-offsets step=-5 step=abc step=99999999999999999999; do
	mutate $m "$T/good.safetensors" "$T/bad.safetensors"
	before=$(sum "$T/bad.safetensors")
	status 1 "d2v-teacher refuses a checkpoint with $m" sh -c "d2v-teacher -c '$T/bad.safetensors' '$T/m.d2v' > '$T/out' 2> '$T/err'"
	case $m in
	drop-one-teacher) contains "$T/err" "missing tensor teacher\." "... naming the missing tensor" ;;
	nan-teacher) contains "$T/err" "teacher.blocks.0.attn.qkv.weight holds a non-finite value" "... naming the tensor" ;;
	random-bytes) contains "$T/err" "do not match the SHA-256" "... saying the data are damaged" ;;
	bad-offsets) contains "$T/err" "tensor student.cls_token: data_offsets \[0, 5\]" "... naming the tensor" ;;
	step=*) contains "$T/err" "metadata step" "... naming the step" ;;
	esac
	status 1 "... and so does d2v-train --resume" sh -c "d2v-train --resume -i '$T/m.d2v' -c '$T/bad.safetensors' 2> /dev/null"
	check "... leaving the file as it was" [ "$(sum "$T/bad.safetensors")" = "$before" ]
done
mutate drop-adam "$T/good.safetensors" "$T/noadam.safetensors"
status 0 "a checkpoint without any Adam moments loads (a fresh optimiser)" sh -c "d2v-teacher -c '$T/noadam.safetensors' '$T/m.d2v' > /dev/null 2> '$T/err'"
mutate no-digest "$T/good.safetensors" "$T/nodigest.safetensors"
status 0 "a checkpoint without a data digest loads" sh -c "d2v-teacher -c '$T/nodigest.safetensors' '$T/m.d2v' > /dev/null 2> '$T/err'"
contains "$T/err" "has no data digest" "... with a warning"

# ---- 7. corrupt and absurd JPEGs are skipped (named), --strict stops
mkdir "$T/jpg"
for i in 1 2 3; do gen-media jpeg "$T/jpg/p$i.jpg" 64 48 -p photo -r $i; done
$PY - "$T/jpg/p2.jpg" "$T/jpg/huge.jpg" <<'PYEOF'
import sys
b = bytearray(open(sys.argv[1], "rb").read())
sos = b.index(b"\xff\xda")
# the entropy-coded data of the middle: bytes that libjpeg warns about
for i in range(sos + 40, sos + 80):
    b[i] = 0xff if i % 7 == 0 else (b[i] ^ 0x5a)
open(sys.argv[1], "wb").write(b)
h = bytearray(open(sys.argv[1].replace("p2", "p1"), "rb").read())
sof = h.index(b"\xff\xc0")
h[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2    # height, width
open(sys.argv[2], "wb").write(h)
PYEOF
status 0 "d2v-tokenize skips a corrupt JPEG and one claiming 60000 x 60000" sh -c "d2v-tokenize --size 32 '$T'/jpg/*.jpg > '$T/j.d2v' 2> '$T/err'"
contains "$T/err" "p2.jpg.*corrupt JPEG" "... naming the corrupt file"
contains "$T/err" "huge.jpg.*60000 x 60000 pixels, above d2v's limit" "... and the absurd one"
check "... and keeps the two good ones" [ "$(d2v-show --check "$T/j.d2v" | cut -d, -f1)" = "records 2" ]
status 1 "--strict stops at the corrupt JPEG" sh -c "d2v-tokenize --strict --size 32 '$T/jpg/p2.jpg' > /dev/null 2> /dev/null"

# ---- 8. a float WAV with a NaN sample is an error for that file
$PY - "$T/nan.wav" <<'PYEOF'
import struct, sys
import numpy as np
x = (0.1 * np.sin(np.arange(16000) / 10.0)).astype("<f4")
x[5000] = np.nan
data = x.tobytes()
fmt = struct.pack("<HHIIHH", 3, 1, 16000, 16000 * 4, 4, 32)
riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
open(sys.argv[1], "wb").write(b"RIFF" + struct.pack("<I", len(riff)) + riff)
PYEOF
gen-media audio "$T/ok.wav" 16000 40000
status 0 "d2v-tokenize skips a WAV with a NaN sample" sh -c "d2v-tokenize '$T/nan.wav' '$T/ok.wav' > '$T/w.d2v' 2> '$T/err'"
contains "$T/err" "nan.wav.*sample 5000 of channel 0 is nan: not audio" "... naming the file and the sample"
check "... and keeps the good one" [ "$(d2v-show --check "$T/w.d2v" | cut -d, -f1)" = "records 1" ]

# ---- 9. image masks that mask nothing cannot train
$PY - "$D2V_ROOT/scripts" "$T/m.d2v" "$T/zero.d2v" <<'PYEOF'
import sys; sys.path.insert(0, sys.argv[1]); import d2v_stream as s
out = open(sys.argv[3], "wb"); w = None
for kind, o in s.read(open(sys.argv[2], "rb")):
    if kind == "header": w = s.Writer(out, o["modality"], o["stages"], o["meta"])
    elif kind == "record":
        o["mask"] = o["mask"] * 0
        rid = o.pop("id"); w.record(rid, **o)
w.close()
PYEOF
status 1 "all-zero image masks are refused" sh -c "d2v-train $MODEL -i '$T/zero.d2v' --steps 4 -c '$T/z.safetensors' 2> '$T/err'"
contains "$T/err" "have no masked patch" "... for images, saying so"
check "... and no checkpoint is written" [ ! -e "$T/z.safetensors" ]

# ---- 10. block masks that would mask all patches, or none
status 1 "d2v-mask -s block --count 16 of 16 patches" sh -c "d2v-mask -s block --patch 7 --count 16 < '$T/img.d2v' > /dev/null 2> '$T/err'"
contains "$T/err" "would mask all of them" "... is refused"
status 1 "d2v-mask -s block --min-patches above --count" sh -c "d2v-mask -s block --patch 7 --count 3 --min-patches 9 < '$T/img.d2v' > /dev/null 2> '$T/err'"
contains "$T/err" "above the 3 patches to mask" "... is refused"
status 0 "d2v-mask -s block on a 4x4 grid: the default --min-patches follows the count" sh -c "d2v-mask -s block --patch 7 < '$T/img.d2v' > /dev/null"

# ---- 17. record ids are length-delimited: a NUL or a newline goes through
$PY - "$D2V_ROOT/scripts" "$T/img.d2v" "$T/ids.d2v" <<'PYEOF'
import sys; sys.path.insert(0, sys.argv[1]); import d2v_stream as s
out = open(sys.argv[3], "wb"); w = None
for kind, o in s.read(open(sys.argv[2], "rb")):
    if kind == "header": w = s.Writer(out, o["modality"], o["stages"], o["meta"])
    elif kind == "record" and w.n < 3:
        o.pop("id"); w.record(["a\x00b", "x\ny\x1b[31m", "c"][w.n], **o)
w.close()
PYEOF
d2v-mask --patch 7 < "$T/ids.d2v" > "$T/idsm.d2v"
check "ids with NUL and control bytes survive d2v-mask" $PY -c '
import sys; sys.path.insert(0, sys.argv[1]); import d2v_stream as s
ids = [o["id"] for k, o in s.read(open(sys.argv[2], "rb")) if k == "record"]
assert ids == ["a\x00b", "x\ny\x1b[31m", "c"], ids' "$D2V_ROOT/scripts" "$T/idsm.d2v"
d2v-show "$T/idsm.d2v" > "$T/shown"
contains "$T/shown" 'id=a\\x00b' "d2v-show escapes a NUL"
contains "$T/shown" 'id=x\\ny\\x1b\[31m' "... and a newline and an escape byte"
check "... and prints no raw escape byte" [ "$(tr -dc '\033' < "$T/shown" | wc -c)" -eq 0 ]

# ---- a producer whose reader goes away ends quietly
d2v-mask --patch 7 --copies 2 < "$T/img.d2v" 2> "$T/err" | d2v-show -n 1 > /dev/null
check "d2v-mask | d2v-show -n 1: no 'Broken pipe' from the producer" [ ! -s "$T/err" ]

# ---- messages that name the problem
head -c 200 "$T/jpg/p1.jpg" > "$T/cut200.jpg"
d2v-tokenize --size 32 "$T/cut200.jpg" > /dev/null 2> "$T/err"
check "a JPEG cut at 200 bytes is named as no JPEG, not '0 x 0 pixels'" sh -c "grep -q 'cut200.jpg: not a' '$T/err' && ! grep -q '0 x 0' '$T/err'"
$PY - "$T/ok.wav" "$T/rate0.wav" <<'PYEOF'
import struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
f = b.index(b"fmt ")
b[f + 12:f + 16] = struct.pack("<I", 0)   # the sample rate
open(sys.argv[2], "wb").write(b)
PYEOF
d2v-tokenize "$T/rate0.wav" > /dev/null 2> "$T/err"
contains "$T/err" "rate0.wav: not an audio file: its header is incomplete or invalid" "a WAV of rate 0 is named as such"
status 1 "d2v-teacher -c DIR" sh -c "d2v-teacher -c '$T/dir' '$T/m.d2v' > /dev/null 2> '$T/err'"
contains "$T/err" "is a directory, not a safetensors file" "... says it is a directory"
d2v-tokenize "$T/dir" > /dev/null 2> "$T/err"
contains "$T/err" "is a directory: give the files in it" "d2v-tokenize DIR says it is a directory"
d2v-mask --prob 1.5 < "$T/img.d2v" > /dev/null 2> "$T/err"
contains "$T/err" "'1.5' is not in (0, 1)" "--prob 1.5 names the open interval, as --prob 0 does"
printf '%s\t99999999999999999999\n%s\t-1\n%s\t3\n' "$T/jpg/p1.jpg" "$T/jpg/p3.jpg" "$T/jpg/p1.jpg" |
	d2v-tokenize --size 32 > /dev/null 2> "$T/err"
check "labels that overflow or are negative are refused, not clamped" sh -c "[ \$(grep -c 'not a class index' '$T/err') -eq 2 ]"
d2v-mask --patch 7 --copies 3 < "$T/img.d2v" > "$T/m3.d2v"
t0=$(date +%s)
status 1 "d2v-eval --masked with other copies than the model's" sh -c "d2v-eval -c '$T/good.safetensors' --train '$T/img.d2v' --test '$T/img.d2v' --masked '$T/m3.d2v' > /dev/null 2> '$T/err'"
contains "$T/err" "masks of 3 copies; the checkpoint's model trains with 2" "... is refused naming both counts"
status 2 "d2v-eval --teacher --student together is a usage error" sh -c "d2v-eval -c '$T/good.safetensors' --teacher --student --train '$T/img.d2v' --test '$T/img.d2v' 2> /dev/null"
$PY - "$D2V_ROOT/scripts" "$T/m.d2v" "$T/hdr" <<'PYEOF'
import sys, copy; sys.path.insert(0, sys.argv[1]); import d2v_stream as s
items = list(s.read(open(sys.argv[2], "rb")))
for name, stage, key, val in (("patch0", "mask", "patch", 0), ("size2g", "tokenize", "size", 2 ** 31)):
    out = open(sys.argv[3] + "." + name, "wb"); w = None
    for kind, o in items:
        if kind == "header":
            meta = copy.deepcopy(o["meta"]); meta[stage][key] = val
            w = s.Writer(out, o["modality"], o["stages"], meta)
        elif kind == "record":
            o = dict(o); rid = o.pop("id"); w.record(rid, **o)
    w.close()
PYEOF
d2v-train $MODEL -i "$T/hdr.patch0" --steps 2 -c "$T/h.safetensors" 2> "$T/err"
contains "$T/err" "meta.mask.patch is 0, not in \[1," "a header patch of 0 is named as such"
d2v-train $MODEL -i "$T/hdr.size2g" --steps 2 -c "$T/h.safetensors" 2> "$T/err"
contains "$T/err" "meta.tokenize.size is 2147483648, not in" "a header size of 2^31 prints as itself"
$PY -c '
import sys
# a header map whose value nests 40 arrays deep
sys.stdout.buffer.write(b"\x81\xa4type\xa6header" [:0] + b"\x82\xa4type\xa6header\xa4deep" + b"\x91" * 40 + b"\xc0")' > "$T/deep.d2v"
d2v-show "$T/deep.d2v" > /dev/null 2> "$T/err"
contains "$T/err" "nested more than 32 deep" "deep msgpack nesting is named, not 'out of memory'"

# ---- 17 again: an id in another command's error message is escaped too
$PY - "$D2V_ROOT/scripts" "$T/img.d2v" "$T/badid.d2v" <<'PYEOF'
import sys; sys.path.insert(0, sys.argv[1]); import d2v_stream as s
out = open(sys.argv[3], "wb"); w = None
for kind, o in s.read(open(sys.argv[2], "rb")):
    if kind == "header": w = s.Writer(out, o["modality"], o["stages"], o["meta"])
    elif kind == "record" and w.n < 1:
        o.pop("id"); o["x"] = o["x"][:, :20, :]; w.record("evil\x1b[31m\nid", **o)
w.close()
PYEOF
status 1 "a record of the wrong shape is refused" sh -c "d2v-mask --patch 7 < '$T/badid.d2v' > /dev/null 2> '$T/err'"
contains "$T/err" 'id evil\\x1b\[31m\\x0aid' "... its id escaped in the message"
check "... on one line, with no raw escape byte" [ "$(wc -l < "$T/err")" -eq 1 -a "$(tr -dc '\033' < "$T/err" | wc -c)" -eq 0 ]
