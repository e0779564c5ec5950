#!/bin/sh
# Training step: d2v's bench-step against the PyTorch peer (bench/train_peer.py)
# on the same configurations, in the same run, and the sgemm peak of the
# machine; prints the JSON lines and then a table.  Not part of make check.
#   BENCH_CONFIGS="B1 B2 B3"  BENCH_STEPS=20  BENCH_BF16=1 (adds d2v's
#   --precision bf16, and the peer's bf16 autocast on BENCH_BF16_CONFIGS,
#   "B1 B2", over BENCH_BF16_STEPS steps, 3: on a CPU without bf16 units
#   the peer's bf16 step is some 30 times its fp32 one)
set -u
BIN=${D2V_BIN:?}
BENCH=$BIN/../bench
PY=/usr/bin/python3
STEPS=${BENCH_STEPS:-20}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
OMP_NUM_THREADS=2 "$BENCH/sgemm-peak" | tee -a "$out"
peer=0
if [ -r "$(dirname "$0")/train_peer.py" ] && $PY -c 'import torch' 2>/dev/null; then
	peer=1
else
	echo "(no PyTorch peer: install python3-torch)"
fi
for cfg in ${BENCH_CONFIGS:-B1 B2 B3}; do
	echo "-- $cfg: median ms per step over $STEPS steps after warm-up"
	OMP_NUM_THREADS=2 "$BENCH/bench-step" "$cfg" "$STEPS" 3 | tee -a "$out"
	if [ "${BENCH_BF16:-0}" = 1 ]; then
		OMP_NUM_THREADS=2 "$BENCH/bench-step" "$cfg" "$STEPS" 3 bf16 | tee -a "$out"
	fi
	[ $peer = 1 ] || continue
	OPENBLAS_NUM_THREADS=1 $PY "$(dirname "$0")/train_peer.py" --config "$cfg" --threads 2 --steps "$STEPS" --json | tee -a "$out"
	OPENBLAS_NUM_THREADS=2 $PY "$(dirname "$0")/train_peer.py" --config "$cfg" --threads 1 --steps "$STEPS" --json | tee -a "$out"
	if [ "${BENCH_BF16:-0}" = 1 ]; then
		case " ${BENCH_BF16_CONFIGS:-B1 B2} " in
		*" $cfg "*)
			OPENBLAS_NUM_THREADS=1 $PY "$(dirname "$0")/train_peer.py" --config "$cfg" --threads 2 --steps "${BENCH_BF16_STEPS:-3}" --warmup 1 --bf16 --json | tee -a "$out" ;;
		esac
	fi
done
$PY - "$out" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
peak = next((r["gflops"] for r in rows if r.get("impl") == "sgemm"), None)
bpeak = next((r for r in rows if r.get("impl") == "onednn-bf16"), None)
flops = {r["config"]: r["gflop_per_step"] for r in rows if "gflop_per_step" in r}
print()
print("| config | implementation | threads | median ms | vs best PyTorch (same precision) | GFLOP/s | of sgemm peak | peak RSS MB |")
print("|---|---|---|---:|---:|---:|---:|---:|")
for cfg in dict.fromkeys(r["config"] for r in rows if "config" in r):
    rs = [r for r in rows if r.get("config") == cfg]
    best = min((r["median_ms"] for r in rs if r.get("impl") != "d2v" and not r.get("bf16")), default=None)
    bbest = min((r["median_ms"] for r in rs if r.get("impl") != "d2v" and r.get("bf16")), default=None)
    for r in rs:
        bf = r.get("bf16") or r.get("precision") == "bf16"
        if r.get("impl") == "d2v":
            name = "d2v bf16 (%s)" % r["engine"] if bf else "d2v fp32"
        else:
            name = "PyTorch %s%s" % (r.get("torch", ""), " bf16" if bf else " fp32")
        ref = bbest if bf else best
        gf = flops.get(cfg)
        g = gf / r["median_ms"] * 1e3 if gf else None
        print("| %s | %s | %s | %.0f | %s | %s | %s | %.0f |" % (
            cfg, name, r["threads"], r["median_ms"],
            "%.2fx" % (ref / r["median_ms"]) if ref else "-",
            "%.0f" % g if g else "-",
            "%.0f%%" % (100 * g / peak) if g and peak else "-",
            r["max_rss_mb"]))
if peak:
    print("\nsgemm peak (2048^3, 2 threads): %.0f GFLOP/s" % peak)
if bpeak:
    print("oneDNN bf16 matmul peak (2048^3): %s" % ("%.0f GFLOP/s" % bpeak["gflops"] if bpeak.get("gflops") else "none: " + bpeak.get("why", "")))
PYEOF
