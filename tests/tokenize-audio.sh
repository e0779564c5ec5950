#!/bin/sh
# d2v-tokenize on audio through the real command: WAV, FLAC and Ogg made
# here by gen-media (libsndfile) at 8, 22.05, 44.1 and 48 kHz, mono and
# stereo; the sine keeps its frequency, clips are normalised, short ones
# skipped, long ones cropped exactly; bad files are named and counted.
. "$D2V_ROOT/tests/testlib"
export PYTHONPATH="$D2V_ROOT/scripts"
# a libsndfile leak on malformed Ogg files, for the sanitizer build
export LSAN_OPTIONS="suppressions=$D2V_ROOT/tests/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
quiet() {  # as in tokenize-image.sh
	want=$1 d=$2
	shift 2
	"$@" > /dev/null 2> "$T/err"
	got=$?
	if [ "$got" -eq "$want" ]; then ok "$d"; else notok "$d (status $got, want $want)"; fi
}

# 2.5 s clips: 40000 samples at 16 kHz
gen-media audio "$T/a8.wav" 8000 20000
gen-media audio "$T/a22.flac" 22050 55125 -f flac -c 2
gen-media audio "$T/a44.ogg" 44100 110250 -f ogg
gen-media audio "$T/a48.wav" 48000 120000 -c 2 -F 1000
gen-media audio "$T/short.flac" 16000 16000 -f flac
printf '%s\t%d\n' "$T/a8.wav" 0 "$T/a22.flac" 1 "$T/a44.ogg" 2 \
	"$T/short.flac" 3 "$T/a48.wav" 4 > "$T/list"

d2v-tokenize -j 2 < "$T/list" > "$T/a.d2v" 2> "$T/err"
check "audio inputs run" [ $? -eq 0 ]
contains "$T/err" "wrote 4 records, skipped 1 (1 shorter than --min-samples)" \
	"a 1 s clip is skipped and counted as short"
check "16 kHz, normalised, the sine's frequency kept, labels kept" $PY -c '
import sys, d2v_stream, numpy as np
objs = list(d2v_stream.read(open(sys.argv[1], "rb")))
h = objs[0][1]
assert h["modality"] == "audio", h
m = h["meta"]["tokenize"]
assert m["sample_rate"] == 16000 and m["min_samples"] == 32000, m
assert m["max_samples"] == 320000 and m["normalize"] == "utterance", m
recs = [o for k, o in objs if k == "record"]
assert [o["label"] for o in recs] == [0, 1, 2, 4], [o["label"] for o in recs]
for o, hz in zip(recs, (440, 440, 440, 1000)):
    x = o["x"]
    assert x.dtype == np.float32 and x.ndim == 1, x.dtype
    assert abs(len(x) - 40000) <= 2, (o["id"], len(x))
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-3, (o["id"], x.mean(), x.std())
    f = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    peak = np.argmax(f) * 16000 / len(x)
    assert abs(peak - hz) < 1, (o["id"], peak)
' "$T/a.d2v"

# cropping: the crop of a long clip is an exact slice of the whole clip
d2v-tokenize -q --max-samples 1000000 "$T/a44.ogg" > "$T/whole.d2v"
d2v-tokenize -q --max-samples 16000 --crop center "$T/a44.ogg" > "$T/center.d2v"
d2v-tokenize -q --max-samples 16000 --views 3 "$T/a44.ogg" > "$T/random.d2v"
check "--crop center and random crops are exact slices of the normalised clip" $PY -c '
import sys, d2v_stream, numpy as np
whole, center, rand = ([o for k, o in d2v_stream.read(open(f, "rb")) if k == "record"]
                       for f in sys.argv[1:4])
x = whole[0]["x"]
c = center[0]["x"]
off = (len(x) - 16000) // 2
assert len(c) == 16000 and (c == x[off:off + 16000]).all()
offs = []
for r in rand:
    y = r["x"]
    hits = [i for i in range(len(x) - 16000 + 1) if x[i] == y[0] and (x[i:i + 16000] == y).all()]
    assert len(y) == 16000 and hits, r["id"]
    offs.append(hits[0])
assert len(set(offs)) == 3, offs          # three views, three offsets
assert [r["id"][-2:] for r in rand] == ["#0", "#1", "#2"]
' "$T/whole.d2v" "$T/center.d2v" "$T/random.d2v"
d2v-tokenize -q -j 1 --views 2 --max-samples 20000 < "$T/list" > "$T/j1.d2v"
d2v-tokenize -q -j 3 --views 2 --max-samples 20000 < "$T/list" > "$T/j3.d2v"
check "-j 3 writes the same bytes as -j 1" cmp -s "$T/j1.d2v" "$T/j3.d2v"

# the kind of a file without a known extension comes from its bytes
cp "$T/a8.wav" "$T/clip.bin"
d2v-tokenize -q "$T/clip.bin" > "$T/sniff.d2v"
d2v-show "$T/sniff.d2v" > "$T/out"
contains "$T/out" "^header modality=audio" "a WAV named clip.bin is taken as audio"

# bad files
head -c 20000 "$T/a22.flac" > "$T/cut.flac"
head -c 30000 "$T/a8.wav" > "$T/cut.wav"
head -c 3000 "$T/a44.ogg" > "$T/cut.ogg"
head -c 4000 /dev/urandom > "$T/junk.wav"
d2v-tokenize "$T/a8.wav" "$T/cut.flac" "$T/cut.wav" "$T/cut.ogg" \
	"$T/junk.wav" "$T/nope.wav" "$T/a48.wav" > "$T/bad.d2v" 2> "$T/err"
check "bad audio files are skipped with exit 0" [ $? -eq 0 ]
contains "$T/err" "cut.flac: truncated" "a truncated FLAC is named"
contains "$T/err" "cut.wav: truncated" "a truncated WAV is named"
contains "$T/err" "cut.ogg: " "a truncated Ogg is named"
contains "$T/err" "junk.wav: not an audio file" "random bytes are named"
contains "$T/err" "nope.wav: open: No such file" "a missing file is named"
contains "$T/err" "wrote 2 records, skipped 5" "summary: 2 written, 5 skipped"
d2v-show --check "$T/bad.d2v" > "$T/out"
contains "$T/out" "records 2, .* errors 0" "the stream of the good ones is valid"
quiet 1 "--strict stops at the truncated FLAC" d2v-tokenize --strict "$T/a8.wav" \
	"$T/cut.flac" "$T/a48.wav"
contains "$T/err" "cut.flac: truncated.*--strict" "--strict names the file"

d2v-tokenize -m audio < /dev/null > "$T/empty.d2v" 2> /dev/null
d2v-show "$T/empty.d2v" > "$T/out"
contains "$T/out" "^header modality=audio" "an empty input with -m audio is an empty audio stream"
contains "$T/out" "^end records=0" "with a trailer"
quiet 2 "--crop sideways is a usage error" d2v-tokenize --crop sideways "$T/a8.wav"
