#!/bin/sh
# d2v-tokenize on images through the real command: JPEGs made here with
# gen-media (TurboJPEG's encoder) in several sizes and subsamplings, class
# folders, lists with labels, crops with known pixels, -j, views, bad files,
# and the Fashion-MNIST IDX archives.
. "$D2V_ROOT/tests/testlib"
export PYTHONPATH="$D2V_ROOT/scripts"
# quiet WANT DESCRIPTION COMMAND...: ok when the exit status is WANT; the
# command's output goes to /dev/null and its standard error to $T/err (a
# redirection on status itself would swallow the ok line)
quiet() {
	want=$1 d=$2
	shift 2
	"$@" > /dev/null 2> "$T/err"
	got=$?
	if [ "$got" -eq "$want" ]; then ok "$d"; else notok "$d (status $got, want $want)"; fi
}

# ---- inputs ----------------------------------------------------------------
mkdir -p "$T/img/cat/sub" "$T/img/dog" "$T/img/empty"
gen-media jpeg "$T/ramp256.jpg" 256 256 -q 100 -s 444
gen-media jpeg "$T/ramp448.jpg" 448 448 -q 100 -s 444
gen-media jpeg "$T/img/cat/a.jpg" 64 48 -s 420
gen-media jpeg "$T/img/cat/b.JPEG" 500 375 -s 422 -p photo
gen-media jpeg "$T/img/cat/sub/c.jpg" 375 500 -s 444 -p photo -r 2
gen-media jpeg "$T/img/dog/d.jpg" 300 200 -s gray
gen-media jpeg "$T/img/dog/e.jpg" 1024 768 -s 420 -p photo -r 3
gen-media jpeg "$T/img/dog/f.jpg" 320 240 -s cmyk
echo "not an image" > "$T/img/dog/notes.txt"

# ---- class folders -----------------------------------------------------------
d2v-tokenize --label-from dir "$T/img" > "$T/dir.d2v" 2> "$T/err"
check "--label-from dir runs" [ $? -eq 0 ]
contains "$T/err" "wrote 6 records, skipped 0" "summary line counts 6 images"
check "labels, ids, classes and shapes of a class-folder tree" $PY -c '
import sys, d2v_stream
objs = list(d2v_stream.read(open(sys.argv[1], "rb")))
h = objs[0][1]
m = h["meta"]["tokenize"]
assert h["modality"] == "image" and h["stages"] == ["tokenize"], h
assert m["classes"] == ["cat", "dog", "empty"], m["classes"]
assert m["size"] == 224 and m["crop"] == "random" and m["seed"] == 1, m
assert m["mean"] == [0.485, 0.456, 0.406] and m["std"] == [0.229, 0.224, 0.225]
recs = [o for k, o in objs if k == "record"]
got = [(o["id"].split("/img/")[1], o["label"], o["x"].shape) for o in recs]
want = [("cat/a.jpg", 0, (3, 224, 224)), ("cat/b.JPEG", 0, (3, 224, 224)),
        ("cat/sub/c.jpg", 0, (3, 224, 224)), ("dog/d.jpg", 1, (1, 224, 224)),
        ("dog/e.jpg", 1, (3, 224, 224)), ("dog/f.jpg", 1, (3, 224, 224))]
assert got == want, got
assert all(o["x"].dtype.name == "uint8" for o in recs)
' "$T/dir.d2v"

# ---- crops with known pixels -------------------------------------------------
d2v-tokenize -q --crop center "$T/ramp256.jpg" > "$T/center.d2v"
check "a centre crop of a 256x256 ramp holds its middle 224 pixels" $PY -c '
import sys, d2v_stream, numpy as np
x = [o for k, o in d2v_stream.read(open(sys.argv[1], "rb")) if k == "record"][0]["x"]
x = x.astype(int)
j = np.arange(224)
R = np.tile(16 + j, (224, 1)); G = R.T; B = (R + G) // 2
err = max(np.abs(x[c] - e).max() for c, e in enumerate((R, G, B)))
assert x.shape == (3, 224, 224) and err <= 4, err
' "$T/center.d2v"

d2v-tokenize -q --scale 1,1 --ratio 1,1 --flip 0 "$T/ramp448.jpg" > "$T/whole.d2v"
d2v-tokenize -q --scale 1,1 --ratio 1,1 --flip 1 "$T/ramp448.jpg" > "$T/flip.d2v"
check "a whole-image crop of a 448 ramp halves it; --flip 1 mirrors it" $PY -c '
import sys, d2v_stream, numpy as np
def x(f):
    return [o for k, o in d2v_stream.read(open(f, "rb")) if k == "record"][0]["x"].astype(int)
a, b = x(sys.argv[1]), x(sys.argv[2])
j = np.arange(224)
want = (2 * j + 0.5) * 255 / 447           # output column j is source 2j+0.5
inner = slice(2, 222)                      # the filter clamps at the edges
err = np.abs(a[0][:, inner] - want[inner]).max()
assert err <= 3, err
assert np.abs(a[1].T[:, inner] - want[inner]).max() <= 3
assert (b == a[:, :, ::-1]).all()
' "$T/whole.d2v" "$T/flip.d2v"

if $PY -c 'import PIL, torchvision' 2> /dev/null; then
	d2v-tokenize -q --crop center --no-dct "$T/img/cat/b.JPEG" \
		"$T/img/cat/sub/c.jpg" "$T/img/dog/d.jpg" > "$T/tv.d2v"
	check "centre crops match torchvision's Resize(256) + CenterCrop(224)" $PY -c '
import sys, d2v_stream, numpy as np
from PIL import Image
import torchvision.transforms as T
tf = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(224)])
for k, o in d2v_stream.read(open(sys.argv[1], "rb")):
    if k == "record":
        ref = np.asarray(tf(Image.open(o["id"]))).astype(int)
        ref = ref[None] if ref.ndim == 2 else ref.transpose(2, 0, 1)
        d = np.abs(o["x"].astype(int) - ref)
        assert d.max() <= 3 and d.mean() < 0.5, (o["id"], d.max(), d.mean())
' "$T/tv.d2v"
else
	echo "skip - no python3-pil and python3-torchvision to compare crops with (scripts/install-deps --optional)"
fi

# ---- lists, labels, threads, views ------------------------------------------
for i in 0 1 2 3 4 5 6 7 8 9; do
	gen-media jpeg "$T/p$i.jpg" $((120 + 37 * i)) $((90 + 23 * i)) -p photo -r $i
	printf '%s\t%d\n' "$T/p$i.jpg" $((i % 3))
done > "$T/list"
d2v-tokenize -q -j 1 < "$T/list" > "$T/j1.d2v"
d2v-tokenize -q -j 3 < "$T/list" > "$T/j3.d2v"
check "-j 3 writes the same bytes as -j 1" cmp -s "$T/j1.d2v" "$T/j3.d2v"
d2v-tokenize -q -j 2 --seed 7 < "$T/list" > "$T/s7.d2v"
check "another seed gives other crops" sh -c '! cmp -s "$1" "$2"' - "$T/j1.d2v" "$T/s7.d2v"
d2v-tokenize -q -j 2 --views 2 < "$T/list" > "$T/views.d2v"
check "path<TAB>label lists and --views 2" $PY -c '
import sys, d2v_stream, numpy as np
recs = [o for k, o in d2v_stream.read(open(sys.argv[1], "rb")) if k == "record"]
one = [o for k, o in d2v_stream.read(open(sys.argv[2], "rb")) if k == "record"]
assert len(recs) == 20 and len(one) == 10
assert [o["label"] for o in one] == [i % 3 for i in range(10)]
assert [o["id"].rsplit("/", 1)[1] for o in recs[:4]] == ["p0.jpg#0", "p0.jpg#1", "p1.jpg#0", "p1.jpg#1"]
assert all(recs[2 * i]["label"] == recs[2 * i + 1]["label"] == i % 3 for i in range(10))
assert all((recs[2 * i]["x"] != recs[2 * i + 1]["x"]).any() for i in range(10))
assert (recs[0]["x"] == one[0]["x"]).all()   # view 0 is the single view
' "$T/views.d2v" "$T/j1.d2v"
sed '2s/.*/missing.jpg/' "$T/list" | d2v-tokenize -q > "$T/hole.d2v"
sed -n '4,10p' "$T/list" | d2v-tokenize -q > "$T/tail.d2v"
check "a crop depends on the input's position only, not on skipped inputs" $PY -c '
import sys, d2v_stream
a, b, c = ([o for k, o in d2v_stream.read(open(f, "rb")) if k == "record"]
           for f in sys.argv[1:4])
assert len(b) == 9 and [o["id"] for o in b] == [o["id"] for o in a[:1] + a[2:]]
assert all((p["x"] == q["x"]).all() for p, q in zip(a[:1] + a[2:], b))
assert c[0]["id"] == a[3]["id"] and not (a[3]["x"] == c[0]["x"]).all()
' "$T/j1.d2v" "$T/hole.d2v" "$T/tail.d2v"

# ---- bad inputs ----------------------------------------------------------------
head -c 3000 "$T/p5.jpg" > "$T/cut.jpg"
head -c 5000 /dev/urandom > "$T/junk.jpg"
: > "$T/zero.jpg"
printf '%s\n' "$T/p0.jpg" "$T/cut.jpg" "$T/junk.jpg" "$T/p1.jpg" \
	"$T/missing.jpg" "$T/zero.jpg" "$T/img" "$T/p2.jpg" > "$T/badlist"
printf '%s\tseven\n' "$T/p3.jpg" >> "$T/badlist"
d2v-tokenize -j 2 < "$T/badlist" > "$T/bad.d2v" 2> "$T/err"
check "bad inputs are skipped with exit 0" [ $? -eq 0 ]
contains "$T/err" "cut.jpg: truncated JPEG" "a truncated JPEG is named"
contains "$T/err" "junk.jpg: not a JPEG" "random bytes are named"
contains "$T/err" "missing.jpg: open: No such file" "a missing file is named"
contains "$T/err" "zero.jpg: not a JPEG" "an empty file is named"
contains "$T/err" "/img: a directory, not a file" "a folder is named"
contains "$T/err" "label after the tab is not a class index" "a bad label is named"
contains "$T/err" "wrote 3 records, skipped 6" "summary counts 3 written, 6 skipped"
d2v-show --check "$T/bad.d2v" > "$T/out"
contains "$T/out" "records 3, .* errors 0" "the stream of the good ones is valid"
d2v-tokenize --strict < "$T/badlist" > "$T/strict.d2v" 2> "$T/err"
check "--strict stops at the first bad input with exit 1" [ $? -eq 1 ]
contains "$T/err" "cut.jpg: truncated JPEG.*--strict" "--strict names the file"
d2v-show --check "$T/strict.d2v" > "$T/out" 2>&1
contains "$T/out" "records 1, .* errors 1" "--strict keeps the records before it and writes no trailer"

# ---- empty input and usage ----------------------------------------------------
d2v-tokenize < /dev/null > "$T/empty.d2v" 2> "$T/err"
d2v-show --check "$T/empty.d2v" > "$T/out"
contains "$T/out" "records 0, .* errors 0" "an empty input is a valid empty stream"
contains "$T/err" "wrote 0 records, skipped 0" "and says so"
head -c 100 /dev/urandom > "$T/what.dat"
quiet 2 "a file of unknown kind is a usage error" d2v-tokenize "$T/what.dat"
contains "$T/err" "cannot tell whether .*what.dat is an image or audio" "the message names it"
status 0 "--modality image takes it" sh -c 'd2v-tokenize -m image "$1" > /dev/null 2>&1' - "$T/what.dat"
quiet 2 "an unknown --crop is a usage error" d2v-tokenize --crop sideways "$T/p0.jpg"
quiet 2 "--idx with --spm is a usage error" d2v-tokenize --idx x --spm y
quiet 2 "--scale 1,0.5 is a usage error" d2v-tokenize --scale 1,0.5 "$T/p0.jpg"
status 0 "--help" sh -c 'd2v-tokenize --help | grep -q -- --label-from'
status 0 "--version" sh -c 'd2v-tokenize --version | grep -q "(d2v)"'
check "mandoc -Tlint d2v-tokenize.1 prints nothing" sh -c \
	'[ -z "$(mandoc -Tlint "$1" 2>&1)" ]' - "$D2V_ROOT/man/man1/d2v-tokenize.1"

# ---- IDX ---------------------------------------------------------------------
F=/usr/share/datasets/fashion-mnist
if [ ! -r "$F/train-images-idx3-ubyte.gz" ]; then
	echo "skip - Fashion-MNIST is not installed (make deps installs dataset-fashion-mnist)"
	exit 0
fi
for set in train t10k; do
	n=60000
	[ $set = t10k ] && n=10000
	d2v-tokenize -q --idx "$F/$set-images-idx3-ubyte.gz" \
		--idx-labels "$F/$set-labels-idx1-ubyte.gz" --size 28 --crop center \
		> "$T/$set.d2v"
	d2v-show --check "$T/$set.d2v" > "$T/out"
	contains "$T/out" "records $n, .* errors 0" "Fashion-MNIST $set gives $n records"
	d2v-show "$T/$set.d2v" | sed -n 's/^record [0-9]* id=[^ ]* label=//p' > "$T/got"
	gzip -dc "$F/$set-labels-idx1-ubyte.gz" | od -An -tu1 -v -j8 | tr -s ' ' '\n' |
		sed '/^$/d' > "$T/want"
	check "Fashion-MNIST $set labels match the label archive" cmp -s "$T/got" "$T/want"
done
check "Fashion-MNIST ids name the archive and index; one channel" $PY -c '
import sys, gzip, d2v_stream, numpy as np
it = d2v_stream.read(open(sys.argv[1], "rb"))
h = next(it)[1]["meta"]["tokenize"]
assert h["channels"] == 1 and h["mean"] == [0.449] and h["source"] == "idx", h
first = next(it)[1]
assert first["id"] == "t10k-images-idx3-ubyte.gz:0" and first["x"].shape == (1, 28, 28)
' "$T/t10k.d2v"
d2v-tokenize -q --idx "$F/t10k-images-idx3-ubyte.gz" --size 28 --crop none \
	> "$T/raw.d2v"
check "--crop none at the source size keeps the IDX pixels exactly" $PY -c '
import sys, gzip, d2v_stream, numpy as np
raw = np.frombuffer(gzip.open(sys.argv[2]).read()[16:], np.uint8).reshape(-1, 28, 28)
recs = [o for k, o in d2v_stream.read(open(sys.argv[1], "rb")) if k == "record"]
assert len(recs) == 10000 and "label" not in recs[0]
assert all((recs[i]["x"][0] == raw[i]).all() for i in (0, 1, 5000, 9999))
' "$T/raw.d2v" "$F/t10k-images-idx3-ubyte.gz"
gzip -dc "$F/t10k-images-idx3-ubyte.gz" > "$T/plain-idx3"
d2v-tokenize -q --idx "$T/plain-idx3" --size 28 --crop none > "$T/plain.d2v"
check "an uncompressed IDX file gives the same records" $PY -c '
import sys, d2v_stream
a, b = ([o for k, o in d2v_stream.read(open(f, "rb")) if k == "record"]
        for f in sys.argv[1:3])
assert len(a) == len(b) == 10000 and b[7]["id"] == "plain-idx3:7"
assert all((p["x"] == q["x"]).all() for p, q in zip(a, b))
' "$T/raw.d2v" "$T/plain.d2v"
head -c 200000 "$F/t10k-images-idx3-ubyte.gz" > "$T/cut.gz"
quiet 1 "a truncated IDX archive fails" d2v-tokenize --idx "$T/cut.gz"
contains "$T/err" "cut.gz: truncated" "the message names the archive"
head -c 500000 "$T/plain-idx3" > "$T/cut-idx3"
quiet 1 "a truncated plain IDX file fails" d2v-tokenize --idx "$T/cut-idx3"
contains "$T/err" "truncated at byte 500000" "the message gives the offset"
quiet 1 "labels of another size fail" d2v-tokenize --idx "$F/t10k-images-idx3-ubyte.gz" \
	--idx-labels "$F/train-labels-idx1-ubyte.gz"
contains "$T/err" "60000 labels for 10000 images" "the message gives both counts"
