#!/bin/sh
# d2v-mask through the real commands: shapes, counts and header meta,
# determinism and split streams, bad input, d2v-show --masks and --png.
# (The statistics of every strategy against the reference: test_mask.)
. "$D2V_ROOT/tests/testlib"
PYS="$D2V_ROOT/scripts"
# py SCRIPT ARGS...: python with the stream reader importable as s
py() {
	code=$1
	shift
	$PY -c "import sys; sys.path.insert(0, '$PYS'); import d2v_stream as s, numpy as np, json
def recs(p): return list(s.records(open(p, 'rb')))
def header(p): return next(s.read(open(p, 'rb')))[1]
$code" "$@"
}
# st WANT GOT DESCRIPTION: after a command with redirections (testlib's
# status would send its own line into the redirected output)
st() {
	if [ "$2" -eq "$1" ]; then ok "$3"; else notok "$3 (status $2, want $1)"; fi
}

gen-tokens -n 12 > "$T/img.d2v"
gen-tokens -n 6 -m audio -T 160000 > "$T/audio.d2v"
gen-tokens -n 20 -m text -T 100:512 > "$T/text.d2v"

# ---- the issue's example: 224-pixel images, 16 copies, 157 of 196 -----------
d2v-mask --strategy inverse-block --copies 16 < "$T/img.d2v" > "$T/m.d2v"
check "d2v-mask exits 0" [ $? -eq 0 ]
d2v-show -n 1 "$T/m.d2v" > "$T/out"
contains "$T/out" "mask *u8 *\[16,196\] *ones=2512 per-row=157..157 of 196" \
	"d2v-show -n 1 shows a [16, 196] mask with 157 ones in each row"
contains "$T/out" "^header modality=image stages=tokenize,mask" "mask is appended to the stages"
check "every record keeps x, label and the unknown field, and gets 157 per row" py '
a, b = recs(sys.argv[1]), recs(sys.argv[2])
assert len(a) == len(b) == 12
for r, m in zip(a, b):
    assert m["id"] == r["id"] and m["label"] == r["label"] and m["note"] == r["note"]
    assert np.array_equal(m["x"], r["x"])
    assert m["mask"].dtype == np.uint8 and m["mask"].shape == (16, 196)
    assert (m["mask"].sum(1) == 157).all() and set(np.unique(m["mask"])) <= {0, 1}
    assert len({row.tobytes() for row in m["mask"]}) == 16, "copies differ"
' "$T/img.d2v" "$T/m.d2v"
check "meta.mask records strategy, every parameter, patch, copies and seed" py '
m = header(sys.argv[1])["meta"]["mask"]
want = {"strategy": "inverse-block", "copies": 16, "seed": 1, "patch": 16,
        "prob": 0.8, "adjust": 0.07, "length": 3, "inverse": True,
        "grid": [14, 14], "tokens": 196, "key": "index", "offset": 0}
assert all(m[k] == v for k, v in want.items()), m
' "$T/m.d2v"

# ---- defaults by modality, and the other strategies through the command ------
d2v-mask < "$T/audio.d2v" > "$T/ma.d2v"
check "audio: block1d by default, 8 copies of 499 frames, 249 masked in each" py '
h = header(sys.argv[1])["meta"]["mask"]
assert h["strategy"] == "block1d" and h["copies"] == 8 and h["prob"] == 0.5, h
for r in recs(sys.argv[1]):
    assert r["mask"].shape == (8, 499) and (r["mask"].sum(1) == 249).all()
' "$T/ma.d2v"
d2v-mask --strategy span < "$T/audio.d2v" > "$T/ms.d2v"
check "audio span: one copy of 499 frames, about half masked" py '
h = header(sys.argv[1])["meta"]["mask"]
assert h["strategy"] == "span" and h["length"] == 10 and h["prob"] == 0.65 and h["min_masks"] == 1
for r in recs(sys.argv[1]):
    assert r["mask"].shape == (1, 499) and 150 < r["mask"].sum() < 350, r["mask"].sum()
' "$T/ms.d2v"
d2v-mask --strategy span --copies 4 < "$T/audio.d2v" > "$T/ms4.d2v"
check "span with 4 copies: equal counts within each record" py '
for r in recs(sys.argv[1]):
    c = r["mask"].sum(1)
    assert r["mask"].shape == (4, 499) and (c == c[0]).all(), c
' "$T/ms4.d2v"
d2v-mask < "$T/text.d2v" > "$T/mt.d2v"
check "text: random by default, 8 copies, N - int(N*0.52) masked per row" py '
h = header(sys.argv[1])["meta"]["mask"]
assert h["strategy"] == "random" and h["copies"] == 8 and h["prob"] == 0.48, h
for r in recs(sys.argv[1]):
    n = len(r["x"])
    assert r["mask"].shape == (8, n) and (r["mask"].sum(1) == n - int(n * (1 - 0.48))).all()
    assert "x_masked" not in r
' "$T/mt.d2v"
d2v-mask --strategy bert --copies 3 < "$T/text.d2v" > "$T/mb.d2v"
check "text bert: x_masked i32 [3, N]; selected tokens mostly the mask id, others unchanged" py '
h = header(sys.argv[1])["meta"]["mask"]
assert h["strategy"] == "bert" and h["mask_id"] == 999 and h["leave_unmasked"] == 0.1 and h["random_token"] == 0.1, h
sel = tomask = 0
for r in recs(sys.argv[1]):
    x, m, xm = r["x"], r["mask"], r["x_masked"]
    assert xm.dtype == np.int32 and xm.shape == m.shape == (3, len(x))
    assert (xm[m == 0] == np.broadcast_to(x, m.shape)[m == 0]).all()
    sel += m.sum(); tomask += (xm[m == 1] == 999).sum()
assert 0.7 < tomask / sel < 0.9, tomask / sel
' "$T/mb.d2v"
d2v-mask --strategy bert --span 4 --prob 0.35 < "$T/text.d2v" > "$T/mb4.d2v"
check "bert --span 4 --prob 0.35: the released config, every selected token is <mask>" py '
h = header(sys.argv[1])["meta"]["mask"]
assert h["length"] == 4 and h["leave_unmasked"] == 0 and h["random_token"] == 0, h
for r in recs(sys.argv[1]):
    assert (r["x_masked"][r["mask"] == 1] == 999).all()
' "$T/mb4.d2v"
d2v-mask --strategy block < "$T/img.d2v" > "$T/mk.d2v"
check "image block (BEiT): one copy, at most 120 of 196" py '
h = header(sys.argv[1])["meta"]["mask"]
assert h["count"] == 120 and h["min_patches"] == 16 and h["max_patches"] == 196, h
for r in recs(sys.argv[1]):
    assert r["mask"].shape == (1, 196) and 90 <= r["mask"].sum() <= 120
' "$T/mk.d2v"
d2v-mask --large --copies 2 < "$T/img.d2v" > "$T/ml.d2v"
check "--large: inverse-block R 0.75 A 0.10 masks 147 of 196" py '
h = header(sys.argv[1])["meta"]["mask"]
assert h["prob"] == 0.75 and h["adjust"] == 0.1
for r in recs(sys.argv[1]):
    assert (r["mask"].sum(1) == 147).all()
' "$T/ml.d2v"
gen-tokens -n 2 -S 28 -c 1 | d2v-mask --patch 4 --copies 4 > "$T/m28.d2v"
check "28-pixel images with --patch 4: [4, 49], 40 masked" py '
for r in recs(sys.argv[1]):
    assert r["mask"].shape == (4, 49) and (r["mask"].sum(1) == 40).all()
' "$T/m28.d2v"

# ---- determinism --------------------------------------------------------------
d2v-mask --strategy inverse-block --copies 16 < "$T/img.d2v" > "$T/m2.d2v"
check "the same seed gives the same bytes" cmp -s "$T/m.d2v" "$T/m2.d2v"
d2v-mask --copies 16 --seed 2 < "$T/img.d2v" > "$T/m3.d2v"
check "another seed gives other masks" py '
a, b = recs(sys.argv[1]), recs(sys.argv[2])
assert all(not np.array_equal(x["mask"], y["mask"]) for x, y in zip(a, b))
' "$T/m.d2v" "$T/m3.d2v"
d2v-mask --copies 4 < "$T/img.d2v" > "$T/c4.d2v"
check "copy m does not depend on how many copies: the first 4 of 16 are the 4" py '
a, b = recs(sys.argv[1]), recs(sys.argv[2])
assert all(np.array_equal(x["mask"][:4], y["mask"]) for x, y in zip(a, b))
' "$T/m.d2v" "$T/c4.d2v"

# A stream split in two and masked separately equals the whole masked at once.
for strat in inverse-block block random; do
	gen-tokens -n 7 -S 64 > "$T/p1.d2v"
	gen-tokens -n 5 -f 7 -S 64 > "$T/p2.d2v"
	gen-tokens -n 12 -S 64 > "$T/whole.d2v"
	d2v-mask -s $strat -m 3 < "$T/whole.d2v" > "$T/w.d2v"
	d2v-mask -s $strat -m 3 < "$T/p1.d2v" > "$T/a.d2v"
	d2v-mask -s $strat -m 3 --offset 7 < "$T/p2.d2v" > "$T/b.d2v"
	cat "$T/a.d2v" "$T/b.d2v" > "$T/ab.d2v"
	check "$strat: parts masked with --offset equal the whole" py '
w, ab = recs(sys.argv[1]), recs(sys.argv[2])
assert len(w) == len(ab) == 12
assert all(x["id"] == y["id"] and np.array_equal(x["mask"], y["mask"]) for x, y in zip(w, ab))
' "$T/w.d2v" "$T/ab.d2v"
done
check "the concatenated parts are one valid stream" d2v-show --check "$T/ab.d2v" > /dev/null
d2v-mask -m 3 < "$T/p2.d2v" > "$T/b0.d2v"
check "without --offset the second part gets other masks (the test can fail)" py '
w, b = recs(sys.argv[1])[7:], recs(sys.argv[2])
assert not any(np.array_equal(x["mask"], y["mask"]) for x, y in zip(w, b))
' "$T/w.d2v" "$T/b0.d2v"
gen-tokens -n 6 -m audio -T 20000:40000 > "$T/aw.d2v"
gen-tokens -n 3 -m audio -T 20000:40000 > "$T/a1.d2v"
gen-tokens -n 3 -f 3 -m audio -T 20000:40000 > "$T/a2.d2v"
d2v-mask -s span -m 2 --key id < "$T/aw.d2v" > "$T/w.d2v"
{ d2v-mask -s span -m 2 --key id < "$T/a2.d2v"; d2v-mask -s span -m 2 --key id < "$T/a1.d2v"; } > "$T/ab.d2v"
check "--key id: parts masked in any order, without offsets, equal the whole" py '
w = {r["id"]: r["mask"] for r in recs(sys.argv[1])}
ab = recs(sys.argv[2])
assert len(ab) == 6 and all(np.array_equal(w[r["id"]], r["mask"]) for r in ab)
' "$T/w.d2v" "$T/ab.d2v"

# ---- masking twice ----------------------------------------------------------------
d2v-mask < "$T/m.d2v" > "$T/x.d2v" 2> "$T/err"
check "a masked stream is refused (status 1)" [ $? -eq 1 ]
contains "$T/err" "already masked (strategy inverse-block); use --replace" "the message says --replace"
check "and nothing is written" [ ! -s "$T/x.d2v" ]
d2v-mask --replace -s random -m 2 < "$T/m.d2v" > "$T/r.d2v"
check "--replace masks it again: one mask stage, the new meta and masks" py '
h = header(sys.argv[1])
assert h["stages"] == ["tokenize", "mask"] and h["meta"]["mask"]["strategy"] == "random", h
for r in recs(sys.argv[1]):
    assert r["mask"].shape == (2, 196)
' "$T/r.d2v"
d2v-mask --replace -s random -m 2 < "$T/mb.d2v" > "$T/r.d2v"
check "--replace drops a stale x_masked" py '
assert all("x_masked" not in r for r in recs(sys.argv[1]))
' "$T/r.d2v"

# ---- bad input -----------------------------------------------------------------------
d2v-mask < /dev/null > "$T/x.d2v" 2> "$T/err"
st 1 $? "empty input fails"
contains "$T/err" "empty input" "empty input says so"
py 'import msgpack
sys.stdout.buffer.write(msgpack.packb({"type": "record", "id": "a", "x": {"dtype": "u8", "shape": [1], "data": b"\0"}}))' > "$T/nohdr.d2v"
d2v-mask < "$T/nohdr.d2v" > "$T/x.d2v" 2> "$T/err"
st 1 $? "a stream without a header fails"
contains "$T/err" "does not start with a header" "the message says there is no header"
gen-tokens -n 3 -m text -k > "$T/nomask.d2v"
d2v-mask -s bert < "$T/nomask.d2v" > "$T/x.d2v" 2> "$T/err"
st 1 $? "bert on text without a mask id fails"
contains "$T/err" "bert needs the <mask> id, and the header has none" "the message names the missing mask id"
d2v-mask < "$T/nomask.d2v" > "$T/x.d2v"
st 0 $? "random masking of the same stream works"
gen-tokens -n 2 -S 200 > "$T/i200.d2v"
d2v-mask < "$T/i200.d2v" > "$T/x.d2v" 2> "$T/err"
st 1 $? "an image size not divisible by the patch fails"
contains "$T/err" "image size 200 (meta.tokenize.size) is not divisible by the patch size 16" "the message names size and patch"
d2v-mask --patch 8 < "$T/i200.d2v" > "$T/x.d2v"
st 0 $? "--patch 8 fits 200"
for p in 0 1 1.5 -0.2 x; do
	d2v-mask --prob $p < "$T/img.d2v" > "$T/x.d2v" 2> "$T/err"
	st 2 $? "--prob $p is a usage error"
done
contains "$T/err" "is not a number in" "a bad ratio names the option"
d2v-mask --prob 1 < "$T/img.d2v" > /dev/null 2> "$T/err"
contains "$T/err" "is not in (0, 1)" "--prob 1 says the ratio must be in (0, 1)"
d2v-mask --count 50 < "$T/img.d2v" > "$T/x.d2v" 2> "$T/err"
st 2 $? "--count has no meaning for inverse-block"
contains "$T/err" "count has no meaning for --strategy inverse-block" "and says so"
d2v-mask -s mae < "$T/img.d2v" > "$T/x.d2v" 2>/dev/null
st 2 $? "an unknown strategy is a usage error"
d2v-mask -m 0 < "$T/img.d2v" > "$T/x.d2v" 2>/dev/null
st 2 $? "--copies 0 is a usage error"
d2v-mask -s bert < "$T/audio.d2v" > "$T/x.d2v" 2> "$T/err"
st 1 $? "bert on audio fails"
d2v-mask -s inverse-block < "$T/text.d2v" > "$T/x.d2v" 2> "$T/err"
st 1 $? "inverse-block on text fails"
contains "$T/err" "masks image patches" "and says why"
gen-tokens -n 3 -m audio -T 1000 > "$T/short.d2v"
gen-tokens -n 1 -f 3 -m audio -T 300 >> "$T/short.d2v"
d2v-mask < "$T/short.d2v" > "$T/x.d2v" 2> "$T/err"
check "a record too short to mask fails (status 1)" [ $? -eq 1 ]
contains "$T/err" "record 3 (id audio:3): 300 samples are too short to mask" "the error names the record and its id"
d2v-show "$T/x.d2v" > "$T/out" 2> "$T/err"
check "the records before it were written whole, without a trailer" [ "$(grep -c '^record ' "$T/out")" -eq 3 ]
contains "$T/err" "truncated" "so the output reads as truncated"
gen-tokens -n 2 -m audio -T 1000 | d2v-mask -s span > /dev/null 2> "$T/err"
contains "$T/err" "id audio:0): 2 tokens are too few for span masking" "1000 samples (2 frames) are too few for spans of 10"
head -c 300000 "$T/img.d2v" | d2v-mask > "$T/x.d2v" 2> "$T/err"
check "truncated input: status 1" [ $? -eq 1 ]
contains "$T/err" "truncated" "the message says truncated"
check "the whole records before the cut are passed on" [ "$(d2v-show "$T/x.d2v" 2>/dev/null | grep -c '^record ')" -eq 1 ]
d2v-mask < "$T/img.d2v" > /dev/full 2> "$T/err"
st 1 $? "a full disk is an error"
contains "$T/err" "No space left on device" "the full disk is reported"
d2v-mask -o "$T/o.d2v" "$T/img.d2v" && d2v-mask "$T/img.d2v" > "$T/o2.d2v"
check "-o FILE and a FILE argument write what stdout gets" cmp -s "$T/o.d2v" "$T/o2.d2v"
# -o onto a FIFO (as onto /dev/null): written in place, never renamed over
mkfifo "$T/fifo"
timeout 30 cat "$T/fifo" > "$T/o3.d2v" &
d2v-mask -o "$T/fifo" "$T/img.d2v" 2> "$T/err"
st 0 $? "-o FIFO writes into the pipe"
wait
check "... which stays a FIFO and carried the whole stream" sh -c "[ -p '$T/fifo' ] && cmp -s '$T/o.d2v' '$T/o3.d2v'"
check "... and no temporary file is left beside it" sh -c "! ls '$T' | grep -q 'fifo.tmp'"
d2v-mask --help > "$T/out"
st 0 $? "--help"
contains "$T/out" "inverse-block" "--help lists the strategies"
d2v-mask --version > "$T/out"
st 0 $? "--version"
contains "$T/out" "d2v-mask (d2v) " "--version names the program"

# ---- d2v-show --masks and --png ----------------------------------------------------
d2v-mask -m 3 < "$T/img.d2v" 2>/dev/null | d2v-show -n 1 --masks > "$T/out"
check "--masks draws 3 grids of 14 rows side by side" [ "$(grep -cE '^    [#.]{14}  [#.]{14}  [#.]{14} $' "$T/out")" -eq 14 ]
check "with 157 masked patches in each" py '
rows = [l.split() for l in open(sys.argv[1]) if l.startswith("    ") and l.strip() and set(l.strip()) <= set("#. ")]
assert len(rows) == 14 and all(sum(r[c].count("#") for r in rows) == 157 for c in range(3))
' "$T/out"
d2v-show -n 1 --masks "$T/ma.d2v" > "$T/out"
check "audio masks are strips: 8 copies of 499 frames wrapped at 100" [ "$(grep -cE '^ +[0-9]+ [#.]{100}$' "$T/out")" -eq 8 ]
d2v-show --masks --json "$T/m.d2v" > /dev/null 2>&1
st 2 $? "--masks with --json is a usage error"
gen-tokens -n 2 -S 64 -c 3 > "$T/i64.d2v"
d2v-mask -m 3 < "$T/i64.d2v" > "$T/m64.d2v"
d2v-show --png "$T/png" "$T/m64.d2v" > /dev/null
st 0 $? "d2v-show --png DIR"
check "one PNG per record and copy" [ "$(ls "$T/png" | wc -l)" -eq 6 ] && [ -s "$T/png/1-image_1-2.png" ]
if $PY -c 'import PIL' 2>/dev/null; then
	check "visible patches keep the image, masked patches are greyed out" py '
from PIL import Image
for r in recs(sys.argv[1]):
    i = int(r["id"].split(":")[1])
    x = r["x"].transpose(1, 2, 0).astype(int)            # H, W, C
    for c in range(3):
        p = np.asarray(Image.open("%s/%d-image_%d-%d.png" % (sys.argv[2], i, i, c))).astype(int)
        m = np.kron(r["mask"][c].reshape(4, 4), np.ones((16, 16), int)).astype(bool)
        assert p.shape == x.shape
        assert (p[~m] == x[~m]).all()
        assert (abs(p[m] - (128 + (x[m] - 128) / 4)) <= 1).all()
' "$T/m64.d2v" "$T/png"
else
	echo "skip - python3-pil is not installed: PNG contents not checked"
fi
