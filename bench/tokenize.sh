#!/bin/sh
# d2v-tokenize throughput (not part of make check; bench/README.md keeps the
# numbers):
#  - images per second for 224-pixel random-resized crops (the data2vec 2.0
#    recipe: scale 0.2..1, bicubic, flip) of ImageNet-sized JPEG photos, next
#    to the same work in Python with PIL and torchvision's transforms;
#  - the same on full-size photographs, where DCT downscaling pays most;
#  - seconds of audio per second, decoded, resampled to 16 kHz, normalised.
# Photos: ImageNet-sized JPEGs (500x375 and 375x500, quality 90, 4:2:0) cut
# from the real photographs of a Debian package (mate-backgrounds; install it
# with scripts/install-deps --optional) when one is there, else gen-media's
# photo-like JPEGs.  BENCH_IMAGES sets how many (400).
set -eu
BIN=${D2V_BIN:?run through make bench}
TOOLS=${D2V_TOOLS:-$BIN/../tests/tools}
PY=/usr/bin/python3
N=${BENCH_IMAGES:-400}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir "$T/img" "$T/big" "$T/audio"

# best WALL of 3 runs of a command, in seconds
best() {
	b=
	for i in 1 2 3; do
		s=$(date +%s.%N)
		"$@" > /dev/null
		e=$(date +%s.%N)
		b=$(awk -v s="$s" -v e="$e" -v b="$b" 'BEGIN { t = e - s; print (b == "" || t < b) ? t : b }')
	done
	echo "$b"
}
row() { # label seconds count unit
	awk -v l="$1" -v t="$2" -v n="$3" -v u="$4" \
		'BEGIN { printf "  %-44s %8.2f s %9.1f %s/s\n", l, t, n / t, u }'
}

# ---- inputs ------------------------------------------------------------------
photos=$(ls /usr/share/backgrounds/*/*/*.jpg /usr/share/backgrounds/*/*.jpg \
	2>/dev/null | grep -v _[0-9]*x[0-9]*.jpg || true)
have_pil=0
$PY -c 'import PIL' 2> /dev/null && have_pil=1
have_tv=0
$PY -c 'import torch, torchvision' 2> /dev/null && have_tv=1
if [ -n "$photos" ] && [ $have_pil -eq 1 ]; then
	echo "$photos" | $PY -c '
import random, sys
from PIL import Image
paths = sys.stdin.read().split()
out, n = sys.argv[1], int(sys.argv[2])
r = random.Random(0)
ims = [Image.open(p).convert("RGB") for p in paths]
for i in range(n):
    im = ims[i % len(ims)]
    w, h = (500, 375) if i % 4 else (375, 500)
    s = r.uniform(0.4, 1.0) * min(im.width / w, im.height / h)
    bw, bh = w * s, h * s
    x, y = r.uniform(0, im.width - bw), r.uniform(0, im.height - bh)
    im.resize((w, h), Image.LANCZOS, box=(x, y, x + bw, y + bh)).save(
        "%s/%04d.jpg" % (out, i), quality=90, subsampling=2)
' "$T/img" "$N"
	src="cut to ImageNet size from $(echo "$photos" | wc -l) real photos in /usr/share/backgrounds"
	for k in 1 2 3 4 5 6 7 8; do
		echo "$photos"
	done | head -n 96 > "$T/biglist"
	bigsrc="the photographs themselves"
else
	i=0
	while [ $i -lt "$N" ]; do
		if [ $((i % 4)) -eq 0 ]; then
			"$TOOLS/gen-media" jpeg "$T/img/$i.jpg" 375 500 -p photo -r $i -q 90
		else
			"$TOOLS/gen-media" jpeg "$T/img/$i.jpg" 500 375 -p photo -r $i -q 90
		fi
		i=$((i + 1))
	done
	i=0
	while [ $i -lt 24 ]; do
		"$TOOLS/gen-media" jpeg "$T/big/$i.jpg" 1920 1280 -p photo -r $i -q 90
		echo "$T/big/$i.jpg"
		i=$((i + 1))
	done > "$T/biglist"
	src="gen-media photo-like JPEGs (no photos or no PIL here)"
	bigsrc="gen-media 1920x1280 photo-like JPEGs"
fi
ls "$T"/img/*.jpg > "$T/list"
nbig=$(wc -l < "$T/biglist")
bytes=$(cat $(cat "$T/list") | wc -c)
echo "images: $N JPEGs, $src; mean $((bytes / N / 1024)) KiB"
echo "224-pixel random-resized crops (scale 0.2..1, bicubic, flip) to u8 [3,224,224]; best of 3"

tok() { "$BIN/d2v-tokenize" -q "$@"; }
tokl() { # LIST OPTION...: the paths of LIST on standard input
	l=$1
	shift
	"$BIN/d2v-tokenize" -q "$@" < "$l"
}
row "d2v-tokenize -j 1" "$(best tokl "$T/list" -j 1)" "$N" images
row "d2v-tokenize -j 2" "$(best tokl "$T/list" -j 2)" "$N" images
row "d2v-tokenize -j 1 --no-dct" "$(best tokl "$T/list" -j 1 --no-dct)" "$N" images

cat > "$T/peer.py" <<'EOF'
# The peer: PIL decode + torchvision RandomResizedCrop(224, bicubic) +
# RandomHorizontalFlip + PILToTensor (u8, like d2v's x), or PIL alone.
import sys, time, random
from multiprocessing import Pool
from PIL import Image
paths = open(sys.argv[1]).read().split()
procs, use_tv = int(sys.argv[2]), sys.argv[3] == "1"
if use_tv:
    import torch
    import torchvision.transforms as T
    torch.set_num_threads(1)
    tf = T.Compose([T.RandomResizedCrop(224, scale=(0.2, 1.0),
                    interpolation=T.InterpolationMode.BICUBIC),
                    T.RandomHorizontalFlip(), T.PILToTensor()])
else:
    import math
    def tf(im):  # the same crop drawn in Python, one PIL resize with a box
        w, h = im.size
        for _ in range(10):
            a = w * h * random.uniform(0.2, 1.0)
            r = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(a * r)), round(math.sqrt(a / r))
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:
            cw, ch = min(w, h), min(w, h)
        x, y = random.randint(0, w - cw), random.randint(0, h - ch)
        im = im.resize((224, 224), Image.BICUBIC, box=(x, y, x + cw, y + ch))
        if random.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        return im.tobytes()
def one(p):
    with open(p, "rb") as f:
        im = Image.open(f).convert("RGB")
    tf(im)
    return 0
best = None
for _ in range(3):
    t = time.time()
    if procs == 1:
        for p in paths:
            one(p)
    else:
        with Pool(procs) as pool:
            pool.map(one, paths, chunksize=8)
    t = time.time() - t
    best = t if best is None or t < best else best
print("%.4f" % best)
EOF
if [ $have_pil -eq 1 ]; then
	peer="PIL + torchvision"
	[ $have_tv -eq 1 ] || peer="PIL alone (no torchvision here)"
	row "$peer, 1 process" "$($PY "$T/peer.py" "$T/list" 1 $have_tv)" "$N" images
	row "$peer, 2 processes" "$($PY "$T/peer.py" "$T/list" 2 $have_tv)" "$N" images
else
	echo "  (python3-pil is not installed: no peer; scripts/install-deps --optional)"
fi

# the same on noisy photo-like JPEGs, about ImageNet's mean file size
mkdir "$T/noisy"
i=0
while [ $i -lt 200 ]; do
	"$TOOLS/gen-media" jpeg "$T/noisy/$i.jpg" 500 375 -p photo -r $i -q 92
	echo "$T/noisy/$i.jpg"
	i=$((i + 1))
done > "$T/noisylist"
nb=$(cat $(cat "$T/noisylist") | wc -c)
echo "noisy photo-like 500x375 JPEGs from gen-media, 200, mean $((nb / 200 / 1024)) KiB"
row "d2v-tokenize -j 1" "$(best tokl "$T/noisylist" -j 1)" 200 images
if [ $have_pil -eq 1 ]; then
	row "$peer, 1 process" "$($PY "$T/peer.py" "$T/noisylist" 1 $have_tv)" 200 images
fi

echo "full-size photographs: $nbig decodes of $bigsrc"
row "d2v-tokenize -j 1" "$(best tokl "$T/biglist" -j 1)" "$nbig" images
row "d2v-tokenize -j 1 --no-dct" "$(best tokl "$T/biglist" -j 1 --no-dct)" "$nbig" images
if [ $have_pil -eq 1 ]; then
	row "$peer, 1 process" "$($PY "$T/peer.py" "$T/biglist" 1 $have_tv)" "$nbig" images
fi

# ---- audio ---------------------------------------------------------------------
# 24 clips of 15 s each way: 16 kHz mono FLAC (as LibriSpeech ships), 44.1 kHz
# stereo WAV and 48 kHz Ogg Vorbis (both resampled), and espeak-ng speech
# (22.05 kHz WAV) when it is installed.
i=0
while [ $i -lt 24 ]; do
	"$TOOLS/gen-media" audio "$T/audio/f$i.flac" 16000 240000 -f flac -F $((200 + 10 * i))
	"$TOOLS/gen-media" audio "$T/audio/w$i.wav" 44100 661500 -c 2 -F $((200 + 10 * i))
	"$TOOLS/gen-media" audio "$T/audio/o$i.ogg" 48000 720000 -f ogg -F $((200 + 10 * i))
	i=$((i + 1))
done
echo "audio: 24 clips of 15 s per row, to 16 kHz f32, normalised; best of 3"
row "16 kHz FLAC, -j 1" "$(best tok -j 1 "$T"/audio/f*.flac)" 360 "audio s"
row "44.1 kHz stereo WAV (resampled), -j 1" "$(best tok -j 1 "$T"/audio/w*.wav)" 360 "audio s"
row "48 kHz Ogg Vorbis (resampled), -j 1" "$(best tok -j 1 "$T"/audio/o*.ogg)" 360 "audio s"
row "44.1 kHz WAV, -j 1 --resampler fastest" \
	"$(best tok -j 1 --resampler fastest "$T"/audio/w*.wav)" 360 "audio s"
row "44.1 kHz WAV, -j 1 --resampler best" \
	"$(best tok -j 1 --resampler best "$T"/audio/w*.wav)" 360 "audio s"
row "44.1 kHz stereo WAV (resampled), -j 2" "$(best tok -j 2 "$T"/audio/w*.wav)" 360 "audio s"
if command -v espeak-ng > /dev/null 2>&1; then
	i=0
	while [ $i -lt 24 ]; do
		espeak-ng -w "$T/audio/s$i.wav" -s 150 "Data to vec learns from \
masked views of speech, images and text. Sentence number $i of a small \
benchmark, long enough to last more than the two seconds of the minimum \
sample size used in pretraining." 2> /dev/null
		i=$((i + 1))
	done
	secs=$($PY -c '
import sys, wave
print(sum(wave.open(f).getnframes() / wave.open(f).getframerate() for f in sys.argv[1:]))
' "$T"/audio/s*.wav)
	row "espeak-ng speech, 22.05 kHz WAV, -j 1" "$(best tok -j 1 "$T"/audio/s*.wav)" "$secs" "audio s"
fi
