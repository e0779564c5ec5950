#!/bin/sh
# More than one process or machine: --accum, mpirun data parallel, and
# stages on two hosts (network namespaces) over TCP with socat.
. "$D2V_ROOT/tests/testlib"
need_fashion_mnist
export OMP_NUM_THREADS=1
MODEL="--dim 32 --heads 2 --depth 2 --prenet 1 --decoder-dim 16 --decoder-layers 1 --decoder-groups 4 --lr 2e-3 --warmup 4 --ema-decay 0.99 --ema-end-decay 0.999"

fm_images 400 > "$T/img.d2v"
d2v-mask --patch 7 --copies 2 < "$T/img.d2v" > "$T/m.d2v"
check "a 400-image masked stream" [ "$(d2v-show --check "$T/m.d2v" | cut -d, -f1)" = "records 400" ]

# same LOG1 LOG2 CK1 CK2 WHAT: the losses of every step within 1e-5
# (relative) and every tensor of the checkpoints (the teacher and Adam's
# moments too) within 1e-5 of the largest value of that tensor
same() {
	check "$5: the same losses and checkpoints (1e-5)" $PY -c '
import json, struct, sys
import numpy as np
def losses(p):
    return [l["loss"] for l in map(json.loads, open(p)) if "step" in l]
def tensors(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); h.pop("__metadata__", None)
    d = {}
    for k, v in h.items():
        s, e = v["data_offsets"]
        d[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype=np.float32)
    return d
a, b = losses(sys.argv[1]), losses(sys.argv[2])
assert len(a) == len(b) == 20, (len(a), len(b))
bad = [(i, x, y) for i, (x, y) in enumerate(zip(a, b)) if abs(x - y) > 1e-5 * abs(x)]
assert not bad, bad[:3]
ta, tb = tensors(sys.argv[3]), tensors(sys.argv[4])
assert ta.keys() == tb.keys() and len(ta) > 10
for k in ta:
    d = np.abs(ta[k] - tb[k]).max() if ta[k].size else 0
    assert d <= 1e-5 * max(np.abs(ta[k]).max(), 1e-6), (k, d)
' "$1" "$2" "$3" "$4"
}

# --accum: two batches of 4 per update are one batch of 8.
status 0 "d2v-train -b 8 for 20 steps" d2v-train $MODEL -b 8 -i "$T/m.d2v" --steps 20 -c "$T/b8.safetensors" --log "$T/b8.log" -q
status 0 "d2v-train -b 4 --accum 2 for 20 steps" d2v-train $MODEL -b 4 --accum 2 -i "$T/m.d2v" --steps 20 -c "$T/a2.safetensors" --log "$T/a2.log" -q
same "$T/b8.log" "$T/a2.log" "$T/b8.safetensors" "$T/a2.safetensors" "--accum 2 with -b 4 against -b 8"
d2v-train $MODEL -b 4 -i "$T/m.d2v" --steps 20 -c "$T/b4.safetensors" --log "$T/b4.log" -q
check "... which -b 4 alone is not (the test can tell)" $PY -c '
import json, sys
a = [l["loss"] for l in map(json.loads, open(sys.argv[1])) if "step" in l]
b = [l["loss"] for l in map(json.loads, open(sys.argv[2])) if "step" in l]
assert max(abs(x - y) / abs(x) for x, y in zip(a, b)) > 1e-3' "$T/b8.log" "$T/b4.log"
status 2 "--accum 0 is a usage error" d2v-train $MODEL --accum 0 -i "$T/m.d2v" --steps 2 -c "$T/x.safetensors" 2> /dev/null

# mpirun: two ranks of -b 4 are one process of -b 8.  Open MPI 4.1's
# plugins leak at exit from modules already unloaded, which no suppression
# can name: the ranks run without LeakSanitizer (in sanitizer builds); the
# same code without MPI is leak-checked by the runs above.
MPIRUN="mpirun --allow-run-as-root --oversubscribe -np 2 -x LSAN_OPTIONS=detect_leaks=0"
if ! command -v mpirun > /dev/null; then
	notok "mpirun is installed (scripts/install-deps installs openmpi-bin)"
else
	status 0 "mpirun -np 2 d2v-train -b 4 for 20 steps" $MPIRUN d2v-train $MODEL -b 4 -i "$T/m.d2v" --steps 20 -c "$T/np2.safetensors" --log "$T/np2.log" -q
	same "$T/b8.log" "$T/np2.log" "$T/b8.safetensors" "$T/np2.safetensors" "2 ranks of -b 4 against one of -b 8"
	status 0 "2 ranks stop at step 10" $MPIRUN d2v-train $MODEL -b 4 -i "$T/m.d2v" --steps 20 --until 10 -c "$T/np2r.safetensors" --log "$T/np2r.log" -q
	status 0 "... and --resume to step 20" $MPIRUN d2v-train $MODEL -b 4 -i "$T/m.d2v" --steps 20 --resume -c "$T/np2r.safetensors" --log "$T/np2r.log" -q
	same "$T/b8.log" "$T/np2r.log" "$T/b8.safetensors" "$T/np2r.safetensors" "2 ranks stopped and resumed against one process"
	status 0 "2 ranks with --accum 2 and -b 2" $MPIRUN d2v-train $MODEL -b 2 --accum 2 -i "$T/m.d2v" --steps 20 -c "$T/np2a.safetensors" --log "$T/np2a.log" -q
	same "$T/b8.log" "$T/np2a.log" "$T/b8.safetensors" "$T/np2a.safetensors" "2 ranks x --accum 2 x -b 2 against -b 8"
	$MPIRUN d2v-train $MODEL -b 4 --steps 2 -c "$T/x.safetensors" < "$T/m.d2v" > /dev/null 2> "$T/err"
	contains "$T/err" "every rank reads the input: give -i FILE" "under mpirun, standard input is refused with a reason"
	# --device cuda under mpirun: on GPUs (NCCL) it must train; without
	# one every rank must stop with the reason, none hang
	timeout 120 $MPIRUN d2v-train $MODEL --device cuda -b 4 -i "$T/m.d2v" --steps 4 -c "$T/g.safetensors" -q > /dev/null 2> "$T/err"
	rc=$?
	if [ "$rc" -eq 0 ]; then
		check "2 ranks with --device cuda trained on GPUs" [ -s "$T/g.safetensors" ]
	else
		check "2 ranks with --device cuda and no GPU stop with status 1 (status $rc)" [ "$rc" -eq 1 ]
		contains "$T/err" "d2v-train: --device cuda: " "... each saying why"
	fi
fi

# Stages on two hosts: network namespaces joined by a veth pair, d2v-teacher
# in one, d2v-train in the other, the stream over TCP through socat.
d2v-train $MODEL -b 8 -i "$T/m.d2v" --steps 5 -c "$T/tch.safetensors" -q
if ! command -v socat > /dev/null || ! ip netns add d2v-a$$ 2> /dev/null; then
	notok "network namespaces and socat (root, iproute2 and socat are needed)"
	exit 0
fi
A=d2v-a$$ B=d2v-b$$
ip netns add $B
cleanup() { ip netns del $A 2> /dev/null; ip netns del $B 2> /dev/null; rm -rf "$T"; }
trap cleanup EXIT
ip link add va$$ type veth peer name vb$$
ip link set va$$ netns $A
ip link set vb$$ netns $B
ip -n $A addr add 10.77.0.1/24 dev va$$
ip -n $B addr add 10.77.0.2/24 dev vb$$
ip -n $A link set va$$ up; ip -n $A link set lo up
ip -n $B link set vb$$ up; ip -n $B link set lo up
check "two network namespaces joined by a veth pair" sh -c "ip -n $A -br addr | grep -q 10.77.0.1 && ip -n $B -br addr | grep -q 10.77.0.2"

# whole stream: targets made in A, training on them in B
d2v-teacher -c "$T/tch.safetensors" "$T/m.d2v" > "$T/cached.d2v" 2> /dev/null
ip netns exec $B sh -c "socat -u TCP-LISTEN:7700,reuseaddr STDOUT 2> /dev/null | d2v-train $MODEL -b 8 --targets stream --steps 40 -c '$T/net.safetensors' --log '$T/net.log' -q" 2> "$T/err" &
pid=$!
sleep 0.5
ip netns exec $A sh -c "d2v-teacher -c '$T/tch.safetensors' '$T/m.d2v' 2> /dev/null | socat -u STDIN TCP:10.77.0.2:7700,retry=20,interval=0.2"
wait $pid
rc=$?
check "d2v-teacher | socat (host A) -> socat | d2v-train (host B): 40 steps (status $rc)" [ "$rc" -eq 0 -a "$(grep -c '"step":' "$T/net.log")" -eq 40 ]
d2v-train $MODEL -b 8 --targets stream -i "$T/cached.d2v" --steps 40 -c "$T/local.safetensors" --log "$T/local.log" -q
check "... the same steps as training on the targets cached locally" sh -c "cut -d, -f1-3 '$T/net.log' > '$T/a'; cut -d, -f1-3 '$T/local.log' > '$T/b'; cmp -s '$T/a' '$T/b'"

# the connection dropped halfway: a proxy in B forwards the first 60% of
# the bytes, then closes
size=$(wc -c < "$T/cached.d2v")
cut=$((size * 6 / 10))
ip netns exec $B sh -c "socat -u TCP-LISTEN:7701,reuseaddr STDOUT 2> /dev/null | head -c $cut | d2v-train $MODEL -b 8 --targets stream --steps 40 -c '$T/cut.safetensors' --log '$T/cut.log' -q" 2> "$T/err" &
pid=$!
sleep 0.5
ip netns exec $A sh -c "socat -u FILE:'$T/cached.d2v' TCP:10.77.0.2:7701,retry=20,interval=0.2" 2> /dev/null
wait $pid
rc=$?
check "a connection cut at 60% ends d2v-train with status 1 (status $rc)" [ "$rc" -eq 1 ]
contains "$T/err" "truncated" "... reporting the stream as truncated"
n=$(grep -c '"step":' "$T/cut.log")
check "... after training on the whole batches before the cut ($n steps)" [ "$n" -ge 20 -a "$n" -lt 40 ]
status 0 "... leaving a checkpoint that --resume continues from" d2v-train $MODEL -b 8 --targets stream --steps 40 --resume -i "$T/cached.d2v" -c "$T/cut.safetensors" --log "$T/cut.log" -q
check "... to step 40" [ "$(tail -1 "$T/cut.log" | $PY -c 'import json,sys; print(json.loads(sys.stdin.read())["step"])')" = 40 ]
