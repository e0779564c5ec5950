#!/bin/sh
# d2v-tokenize on text through the real command, with a sentencepiece model
# trained here by scripts/train-spm: the ids decode back to the text (by
# Debian's spm_decode), blocks follow the break modes, the header holds the
# specials and the model's sha256; bad lines and models are caught.
. "$D2V_ROOT/tests/testlib"
export PYTHONPATH="$D2V_ROOT/scripts"
quiet() {  # as in tokenize-image.sh
	want=$1 d=$2
	shift 2
	"$@" > /dev/null 2> "$T/err"
	got=$?
	if [ "$got" -eq "$want" ]; then ok "$d"; else notok "$d (status $got, want $want)"; fi
}
if ! command -v spm_train > /dev/null 2>&1; then
	echo "skip - spm_train is not installed (make deps installs sentencepiece)"
	exit 0
fi

# a corpus of documents separated by empty lines
$PY -c '
import random
r = random.Random(4)
words = ("the teacher student mask image audio text model block token "
         "stream pipe unix small command tensor learns predicts average "
         "of a from to and with").split()
for d in range(30):
    for s in range(r.randint(1, 6)):
        print(" ".join(r.choice(words) for _ in range(r.randint(3, 25))))
    print()
' > "$T/corpus.txt"
check "scripts/train-spm trains a model" sh -c \
	'"$1/scripts/train-spm" "$2/corpus.txt" "$2/spm" 40 > /dev/null 2>&1' - "$D2V_ROOT" "$T"
M=$T/spm.model

d2v-tokenize --spm "$M" --break-mode line "$T/corpus.txt" > "$T/line.d2v" 2> "$T/err"
check "--break-mode line runs" [ $? -eq 0 ]
n=$(grep -c . "$T/corpus.txt")
contains "$T/err" "wrote $n records, skipped 0" "one record per non-empty line ($n)"
$PY -c '
import sys, d2v_stream
for k, o in d2v_stream.read(open(sys.argv[1], "rb")):
    if k == "record":
        x = o["x"].tolist()
        assert x[0] == 0 and x[-1] == 2, x     # BOS ... EOS
        print(" ".join(map(str, x[1:-1])))
' "$T/line.d2v" > "$T/ids"
spm_decode --model="$M" --input_format=id < "$T/ids" > "$T/back" 2> /dev/null
grep . "$T/corpus.txt" > "$T/want"
check "spm_decode turns the ids back into the text" cmp -s "$T/back" "$T/want"
check "header: specials, vocabulary, sha256 of the model, modality text" $PY -c '
import sys, hashlib, d2v_stream
h = next(d2v_stream.read(open(sys.argv[1], "rb")))[1]
m = h["meta"]["tokenize"]
assert h["modality"] == "text", h
assert (m["bos"], m["pad"], m["eos"], m["unk"], m["mask"]) == (0, 1, 2, 3, 4), m
assert m["vocab_size"] == 40 and m["spm_vocab"] == 40 and m["block"] == 512, m
assert m["spm_sha256"] == hashlib.sha256(open(sys.argv[2], "rb").read()).hexdigest()
assert m["break_mode"] == "line"
' "$T/line.d2v" "$M"

# none: the whole corpus as one token stream in blocks of 15 after BOS
d2v-tokenize -q --spm "$M" --block 16 < "$T/corpus.txt" > "$T/none.d2v"
spm_encode --model="$M" --output_format=id < "$T/corpus.txt" > "$T/enc" 2> /dev/null
check "none: 16-token blocks that are BOS + the token stream, EOS after each line" $PY -c '
import sys, d2v_stream
recs = [o["x"].tolist() for k, o in d2v_stream.read(open(sys.argv[1], "rb")) if k == "record"]
stream = []
for line in open(sys.argv[2]):
    stream += [int(t) for t in line.split()] + [2]
assert all(len(x) == 16 for x in recs[:-1]) and 1 < len(recs[-1]) <= 16
assert all(x[0] == 0 for x in recs)
assert sum((x[1:] for x in recs), []) == stream
' "$T/none.d2v" "$T/enc"

d2v-tokenize -q --spm "$M" --block 40 --break-mode complete_doc "$T/corpus.txt" > "$T/doc.d2v"
check "complete_doc: whole lines, no block across an empty line" $PY -c '
import sys, d2v_stream
recs = [o["x"].tolist() for k, o in d2v_stream.read(open(sys.argv[1], "rb")) if k == "record"]
docs, cur = [], []
for line in open(sys.argv[2]):
    ids = [int(t) for t in line.split()]
    if ids: cur.append(ids + [2])
    else: docs.append(cur); cur = []
if cur: docs.append(cur)
want = []                               # the packing, written out again
for d in docs:
    blk = []
    for s in d:
        if blk and len(blk) + len(s) > 39:
            if len(blk) > 1: want.append(blk)   # fairseq drops a lone EOS
            blk = []
        while len(s) > 39 and not blk:
            want.append(s[:39]); s = s[39:]
        blk += s
    if len(blk) > 1: want.append(blk)
assert [x[1:] for x in recs] == want, (len(recs), len(want))
assert all(x[0] == 0 and len(x) <= 40 for x in recs)
' "$T/doc.d2v" "$T/enc"

d2v-tokenize -q -j 1 --spm "$M" --block 16 "$T/corpus.txt" > "$T/j1.d2v"
d2v-tokenize -q -j 3 --spm "$M" --block 16 "$T/corpus.txt" > "$T/j3.d2v"
check "-j 3 writes the same bytes as -j 1" cmp -s "$T/j1.d2v" "$T/j3.d2v"

# labels and bad lines
printf '3\tthe teacher learns\n7\ta small model\nx\tno label\n5\tbad \377 byte\n\n1\tpipe\n' \
	> "$T/labeled.tsv"
d2v-tokenize --spm "$M" --break-mode line --labeled "$T/labeled.tsv" > "$T/lab.d2v" 2> "$T/err"
check "--labeled runs" [ $? -eq 0 ]
contains "$T/err" "labeled.tsv:3: want LABEL<TAB>TEXT" "a line without a label is named"
contains "$T/err" "labeled.tsv:4: not valid UTF-8" "a line that is not UTF-8 is named"
contains "$T/err" "wrote 3 records, skipped 2" "summary: 3 written, 2 skipped"
d2v-show "$T/lab.d2v" | grep '^record' | sed 's/.*label=//' | tr '\n' ' ' > "$T/labels"
check "labels 3 7 1" [ "$(cat "$T/labels")" = "3 7 1 " ]

# bad models and usage
head -c 2000 "$M" > "$T/cut.model"
quiet 1 "a truncated model is refused" d2v-tokenize --spm "$T/cut.model" "$T/corpus.txt"
contains "$T/err" "cut.model: not a whole sentencepiece model" "the message names the model"
head -c 5000 /dev/urandom > "$T/junk.model"
quiet 1 "random bytes are not a model" d2v-tokenize --spm "$T/junk.model" "$T/corpus.txt"
quiet 2 "--labeled needs --break-mode line" d2v-tokenize --spm "$M" --labeled "$T/corpus.txt"
quiet 2 "-m text needs --spm" d2v-tokenize -m text "$T/corpus.txt"
d2v-tokenize --spm "$M" "$T/corpus.txt" "$T/none.txt" > /dev/null 2> "$T/err"
contains "$T/err" "open .*none.txt: No such file" "a missing text file is named and skipped"
d2v-tokenize --spm "$M" < /dev/null > "$T/empty.d2v" 2> /dev/null
d2v-show --check "$T/empty.d2v" > "$T/out"
contains "$T/out" "records 0, .* errors 0" "empty text is a valid empty stream"
