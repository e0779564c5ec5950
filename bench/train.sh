#!/bin/sh
# Training step: d2v's bench-step against the PyTorch peer (bench/train_peer.py)
# on the same configurations, in the same run, and the GEMM peak of the
# machine; prints the JSON lines and then a table.  Not part of make check.
#
# The peer is PyTorch 2.x from PyPI, in a virtual environment made once
# under build/ (build/peer: `pip install torch numpy`, about 5.6 GB with the
# CUDA libraries the wheel pulls); where PyPI cannot be reached the script
# says so and the peer is Debian's torch alone.  Debian's torch (1.13) is a
# second row when python3-torch is installed.
#
#   BENCH_CONFIGS="B1 B2 B3 demo"  BENCH_STEPS=10
#   BENCH_BF16=1 (default): d2v's --precision bf16 and the peer's bf16
#     autocast too, on BENCH_BF16_CONFIGS ("B1 B2 demo")
#   BENCH_COMPILE=1 (default): the peer with torch.compile around the
#     forward and the loss, on BENCH_COMPILE_CONFIGS ("B1 demo")
#   BENCH_PEER=python: the peer's interpreter (skips the virtual environment)
set -u
BIN=${D2V_BIN:?}
BENCH=$BIN/../bench
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STEPS=${BENCH_STEPS:-10}
CONFIGS=${BENCH_CONFIGS:-B1 B2 B3 demo}
BF16_CONFIGS=${BENCH_BF16_CONFIGS:-B1 B2 demo}
COMPILE_CONFIGS=${BENCH_COMPILE_CONFIGS:-B1 demo}
THREADS=$(nproc)
out=$(mktemp)
trap 'rm -f "$out"' EXIT

# the peer: PyTorch 2.x from PyPI in build/peer, made once
VENV=$BIN/../peer
PEER=${BENCH_PEER:-}
if [ -z "$PEER" ]; then
	if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import torch, numpy' 2>/dev/null; then
		PEER=$VENV/bin/python
	else
		echo "-- making the peer's environment: $VENV (pip install torch numpy; once)"
		rm -rf "$VENV"
		for py in python3 /usr/bin/python3; do
			command -v "$py" > /dev/null 2>&1 || continue
			"$py" -m venv "$VENV" 2> /dev/null && break
			rm -rf "$VENV"
		done
		if [ -x "$VENV/bin/pip" ] && "$VENV/bin/pip" install -q torch numpy; then
			PEER=$VENV/bin/python
		else
			rm -rf "$VENV"
			echo "(no PyTorch 2.x peer: the virtual environment or 'pip install torch' failed;" \
				"the registry may be out of reach; Debian's torch alone is the peer)"
		fi
	fi
fi
DEB=
if /usr/bin/python3 -c 'import torch' 2> /dev/null; then
	DEB=/usr/bin/python3
fi

echo "-- CPU: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)," \
	"family $(sed -n 's/^cpu family[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" \
	"model $(sed -n 's/^model[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $THREADS threads"
echo "-- flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_bf16|avx512_fp16|amx_bf16|amx_tile)$' | tr '\n' ' ')"
OMP_NUM_THREADS=$THREADS "$BENCH/sgemm-peak" | tee -a "$out"
peer_row() { # python, config, extra arguments...
	py=$1 cfg=$2
	shift 2
	OPENBLAS_NUM_THREADS=1 "$py" "$ROOT/bench/train_peer.py" --config "$cfg" \
		--threads "$THREADS" --json "$@" 2> /dev/null | tee -a "$out"
}
for cfg in $CONFIGS; do
	echo "-- $cfg: median ms per step over $STEPS steps after warm-up"
	OMP_NUM_THREADS=$THREADS "$BENCH/bench-step" "$cfg" "$STEPS" 2 | tee -a "$out"
	bf=0
	case " $BF16_CONFIGS " in *" $cfg "*) [ "${BENCH_BF16:-1}" = 1 ] && bf=1 ;; esac
	if [ $bf = 1 ]; then
		OMP_NUM_THREADS=$THREADS "$BENCH/bench-step" "$cfg" "$STEPS" 2 bf16 | tee -a "$out"
	fi
	if [ -n "$PEER" ]; then
		peer_row "$PEER" "$cfg" --steps "$STEPS" --warmup 2
		[ $bf = 1 ] && peer_row "$PEER" "$cfg" --steps "$STEPS" --warmup 2 --bf16
		case " $COMPILE_CONFIGS " in *" $cfg "*)
			[ "${BENCH_COMPILE:-1}" = 1 ] && peer_row "$PEER" "$cfg" --steps "$STEPS" --warmup 3 --compile ;;
		esac
	fi
	if [ -n "$DEB" ]; then
		peer_row "$DEB" "$cfg" --steps "$STEPS" --warmup 2
	fi
done
"${PEER:-${DEB:-python3}}" - "$out" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
peak = next((r for r in rows if r.get("impl") == "sgemm"), None)
ob = next((r for r in rows if r.get("impl") == "openblas"), None)
bpeak = next((r for r in rows if r.get("impl") == "onednn-bf16"), None)
flops = {r["config"]: r["gflop_per_step"] for r in rows if "gflop_per_step" in r}
print()
if peak:
    print("CPU: %s" % peak["cpu"])
    print("GEMM peak (2048^3, %d threads): d2v's engine %s %.0f GFLOP/s%s" % (
        peak["threads"], peak["engine"], peak["gflops"],
        "; %s %.0f GFLOP/s" % (ob["engine"], ob["gflops"]) if ob else ""))
if bpeak:
    print("oneDNN bf16 matmul peak (2048^3): %s" % ("%.0f GFLOP/s" % bpeak["gflops"] if bpeak.get("gflops") else "none: " + bpeak.get("why", "")))
print()
print("| config | implementation | threads | median ms | d2v / best PyTorch 2.x | GFLOP/s | of GEMM peak | peak RSS MB |")
print("|---|---|---|---:|---:|---:|---:|---:|")
def major(r):
    return int(r.get("torch", "0").split(".")[0])
for cfg in dict.fromkeys(r["config"] for r in rows if "config" in r):
    rs = [r for r in rows if r.get("config") == cfg]
    peers = [r for r in rs if r.get("impl") != "d2v" and major(r) >= 2]
    best32 = min((r["median_ms"] for r in peers if not r.get("bf16")), default=None)
    best_any = min((r["median_ms"] for r in peers), default=None)
    for r in rs:
        bf = r.get("bf16") or r.get("precision") == "bf16"
        if r.get("impl") == "d2v":
            name = "d2v bf16 (%s)" % r["engine"] if bf else "d2v fp32 (%s)" % r.get("gemm", "sgemm")
            ref = best_any if bf else best32
            ratio = "%.2f" % (r["median_ms"] / ref) if ref else "-"
        else:
            name = "PyTorch %s %s%s" % (r.get("torch", ""), "bf16 autocast" if bf else "fp32",
                                         ", torch.compile" if r.get("compile") else "")
            ratio = ""
        gf = flops.get(cfg)
        g = gf / r["median_ms"] * 1e3 if gf else None
        print("| %s | %s | %s | %.0f | %s | %s | %s | %.0f |" % (
            cfg, name, r["threads"], r["median_ms"], ratio,
            "%.0f" % g if g else "-",
            "%.0f%%" % (100 * g / peak["gflops"]) if g and peak else "-",
            r["max_rss_mb"]))
print()
print("d2v / best PyTorch 2.x: d2v's time over the best PyTorch 2.x row of the config")
print("(fp32 rows: the best fp32 row, torch.compile included; bf16 rows: the best of all).")
print("GFLOP/s counts the matrix products and convolutions only (train_peer.py's step_flops).")
PYEOF
