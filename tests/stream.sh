#!/bin/sh
# The stream and d2v-show through the real commands, and interop with Python.
. "$D2V_ROOT/tests/testlib"
PYS="$D2V_ROOT/scripts"

gen-stream -n 20 -s 3 > "$T/a.d2v"
gen-stream -n 7 -s 4 > "$T/b.d2v"
gen-stream -n 5 -m audio > "$T/audio.d2v"

status 0 "d2v-show reads a stream" d2v-show "$T/a.d2v" > "$T/out" 2> "$T/err"
check "one line per record" [ "$(grep -c '^record ' "$T/out")" -eq 20 ]
contains "$T/out" "^header modality=image stages=gen" "the header line shows modality and stages"
contains "$T/out" "meta.gen" "the header meta is shown"
contains "$T/out" "^end records=20" "the trailer line shows the count"
contains "$T/out" "x *f32 *\[[0-9,]*\] *min=" "tensor lines show name, dtype, shape and stats"

status 0 "--check on a good stream" d2v-show --check "$T/a.d2v" > "$T/out"
contains "$T/out" "records 20, bytes $(wc -c < "$T/a.d2v" | tr -d ' '), streams 1, errors 0" "--check summary counts records and bytes"

status 0 "-n 3 stops early" d2v-show -n 3 "$T/a.d2v" > "$T/out"
check "-n 3 prints 3 records" [ "$(grep -c '^record ' "$T/out")" -eq 3 ]

d2v-show --json "$T/a.d2v" > "$T/json"
check "--json lines all parse, 22 objects" $PY -c '
import json, sys
objs = [json.loads(l) for l in open(sys.argv[1])]
assert len(objs) == 22, len(objs)
assert objs[0]["type"] == "header" and objs[0]["modality"] == "image"
assert objs[-1] == {"type": "end", "records": 20, "streams": 1}
assert all(o["type"] == "record" for o in objs[1:-1])
' "$T/json"

cat "$T/a.d2v" "$T/b.d2v" | d2v-show --check > "$T/out"
contains "$T/out" "records 27, bytes .*, streams 2, errors 0" "cat a b | d2v-show reads one stream"
status 0 "d2v-show a b" d2v-show --check "$T/a.d2v" "$T/b.d2v" > "$T/out"
contains "$T/out" "records 27" "two file arguments are one stream"
cat "$T/a.d2v" "$T/audio.d2v" | d2v-show --check > "$T/out" 2> "$T/err"
check "a header of another modality fails" [ $? -eq 1 ]
contains "$T/err" "modality audio follows a stream of modality image" "the error names both modalities"
status 1 "files of two modalities fail" d2v-show --check "$T/a.d2v" "$T/audio.d2v" > /dev/null 2>&1

# Truncation: every whole record is passed on, then "truncated", exit 1.
gen-stream -n 50 -b 100 > "$T/big.d2v"
head -c 1000 "$T/big.d2v" | d2v-show > "$T/out" 2> "$T/err"
check "head -c 1000 big.d2v | d2v-show exits 1" [ $? -eq 1 ]
contains "$T/err" "truncated" "the message says truncated"
want=$($PY -c '
import sys; sys.path.insert(0, sys.argv[1]); import d2v_stream, io
n = 0
try:
    for r in d2v_stream.records(io.BytesIO(open(sys.argv[2], "rb").read()[:1000])): n += 1
except d2v_stream.StreamError: pass
print(n)' "$PYS" "$T/big.d2v")
got=$(grep -c '^record ' "$T/out")
check "it printed every whole record first ($got, python reader: $want)" [ "$got" -eq "$want" ] && [ "$want" -gt 0 ]
for cut in 1 2 5 30 200 5000; do
	head -c $cut "$T/big.d2v" | d2v-show --check > /dev/null 2> "$T/err"
	rc=$?
	if [ $rc -eq 1 ] && grep -q truncated "$T/err"; then ok "cut at $cut bytes: truncated"; else notok "cut at $cut bytes (status $rc: $(cat "$T/err"))"; fi
done

status 1 "empty input fails" d2v-show < /dev/null > /dev/null 2> "$T/err"
contains "$T/err" "empty input" "empty input says so"
printf 'hello world\n' > "$T/junk"
status 1 "text is not a stream" d2v-show "$T/junk" > /dev/null 2> "$T/err"
contains "$T/err" "d2v-show: $T/junk: byte 0:" "errors name the file and byte offset"
status 1 "a missing file fails" d2v-show "$T/nonexistent" > /dev/null 2> "$T/err"
contains "$T/err" "open $T/nonexistent: No such file or directory" "the missing file is named"
status 2 "an unknown option is a usage error" d2v-show --bogus > /dev/null 2>&1
status 2 "a bad -n is a usage error" d2v-show -n x "$T/a.d2v" > /dev/null 2>&1
status 0 "--version" d2v-show --version > "$T/out"
contains "$T/out" "d2v-show (d2v) " "--version names the program"
status 1 "a full disk on stdout is an error" d2v-show "$T/a.d2v" > /dev/full 2> "$T/err"
contains "$T/err" "No space left on device" "the full disk is reported"
d2v-show -o "$T/shown.txt" "$T/a.d2v" && d2v-show "$T/a.d2v" > "$T/shown2.txt"
check "-o FILE writes what stdout gets" cmp -s "$T/shown.txt" "$T/shown2.txt"

# Interop: C -> Python -> C, and Python -> C.
check "python reads the C stream, rewrites it, and the bytes are equal" $PY -c '
import sys; sys.path.insert(0, sys.argv[1]); import d2v_stream as s, numpy as np
out = open(sys.argv[3], "wb")
w = None
for kind, o in s.read(open(sys.argv[2], "rb")):
    if kind == "header":
        w = s.Writer(out, o["modality"], o["stages"], o["meta"])
    elif kind == "record":
        rid = o.pop("id")
        w.record(rid, **o)
w.close()
' "$PYS" "$T/a.d2v" "$T/py.d2v"
check "C -> Python -> C: d2v-show output identical" sh -c "d2v-show '$T/a.d2v' > '$T/1' && d2v-show '$T/py.d2v' > '$T/2' && cmp -s '$T/1' '$T/2'"
check "C -> Python -> C: byte-identical stream" cmp -s "$T/a.d2v" "$T/py.d2v"

$PY -c '
import sys; sys.path.insert(0, sys.argv[1]); import d2v_stream as s, numpy as np
rng = np.random.default_rng(5)
with open(sys.argv[2], "wb") as f:
    w = s.Writer(f, "text", ["py"], {"py": {"vocab_size": 100}})
    w.record("t0", x=rng.integers(0, 100, 17).astype(np.int32), label=1)
    w.record("t1", x=rng.standard_normal((3, 4)).astype(np.float16))
    w.record("t2", x=rng.standard_normal((2, 2, 2)).astype(np.float32), extra={"k": [1, 2]})
    w.record("t3", x=s.f32_to_bf16(np.array([1.0, -2.5, 3.25], np.float32)))
    w.record("t4", x=np.arange(6, dtype=np.int64).reshape(2, 3), mask=np.eye(4, dtype=np.uint8))
    w.close()
' "$PYS" "$T/frompy.d2v"
status 0 "a stream written by Python passes d2v-show --check" d2v-show --check "$T/frompy.d2v" > "$T/out"
contains "$T/out" "records 5, .* errors 0" "all 5 Python records are valid"
d2v-show --json "$T/frompy.d2v" > "$T/json"
check "d2v-show's statistics equal numpy's on the Python stream" $PY -c '
import json, sys; sys.path.insert(0, sys.argv[1]); import d2v_stream as s, numpy as np
shown = [json.loads(l) for l in open(sys.argv[3])][1:-1]
recs = list(s.records(open(sys.argv[2], "rb")))
assert len(shown) == len(recs) == 5
for j, r in zip(shown, recs):
    x = r["x"]
    v = s.bf16_to_f32(x) if isinstance(x, s.BF16) else x.astype(np.float64)
    assert j["x"]["shape"] == list(x.shape), (j, x.shape)
    for k, f in (("min", v.min()), ("max", v.max()), ("mean", v.mean()), ("std", v.std())):
        assert abs(j["x"][k] - f) <= 1e-5 * max(1, abs(f)), (r["id"], k, j["x"][k], f)
assert shown[2]["extra"] == {"k": [1, 2]}
assert shown[4]["mask"]["ones"] == 4 and shown[4]["mask"]["row_ones_max"] == 1
' "$PYS" "$T/frompy.d2v" "$T/json"
check "python reports truncation too" sh -c "head -c 300 '$T/a.d2v' > '$T/cut.d2v'; ! $PY '$PYS/d2v_stream.py' '$T/cut.d2v' 2>&1 >/dev/null | grep -q -v truncated"
