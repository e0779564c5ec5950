/*
 * check-gpu.c - the CUDA backend against the CPU backend (make check-gpu).
 *
 * Every op of the table on the same inputs on both backends, compared by
 * the L2 relative error with the tolerance stated per op; then whole
 * training steps (image, audio and text models) and five steps of training
 * against the CPU; then the time of a B1 step (bench/README.md) in fp32 and
 * bf16.  Where no GPU can be used it says so and exits 1: it never passes
 * without having run.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/ops.h"
#include "mask.h"
#include "model/model.h"
#include "rng.h"
#include "t.h"
#include "train/optim.h"

static const d2v_ops *cpu, *gpu, *gpu16, *cpu16;

/* one buffer of n floats on each backend, the same contents */
typedef struct pair {
	float *c, *g;
	size_t n;
} pair;

static pair
mk(size_t n, d2v_rng *r, double scale)
{
	pair p = { cpu->alloc(n * sizeof(float)), gpu->alloc(n * sizeof(float)),
	    n };

	if (p.c == NULL || p.g == NULL) {
		fprintf(stderr, "check-gpu: out of memory for %zu floats\n", n);
		exit(1);
	}
	for (size_t i = 0; i < n && r != NULL; i++)
		p.c[i] = p.g[i] = (float)(scale * d2v_rng_normal(r));
	return p;
}

static void
drop(pair *p)
{
	cpu->release(p->c);
	gpu->release(p->g);
}

static double
err_of(const pair *p)
{
	return t_relerr(p->g, p->c, p->n);
}

#define CMP(p, tol, ...) do {                                             \
	double e_ = err_of(&(p));                                          \
	char what_[160];                                                   \
                                                                           \
	snprintf(what_, sizeof what_, __VA_ARGS__);                        \
	T_OK(e_ <= (tol), "%s: relative error %.2e <= %.0e", what_, e_,    \
	    (double)(tol));                                                \
} while (0)

static void
check_failed(const char *what)
{
	const char *why = gpu->failed ? gpu->failed() : NULL;

	T_OK(why == NULL, "%s: the CUDA backend reports no failure (%s)", what,
	    why ? why : "none");
}

static void
ops_matmul(d2v_rng *r, const d2v_ops *c, const d2v_ops *g, const char *nm,
    int M, int K, int N, double tol)
{
	pair in = mk((size_t)M * K, r, 1), w = mk((size_t)N * K, r, 0.1);
	pair b = mk(N, r, 0.1), out = mk((size_t)M * N, NULL, 0);
	pair dout = mk((size_t)M * N, r, 1), din = mk((size_t)M * K, r, 1);
	pair dw = mk((size_t)N * K, r, 1), db = mk(N, r, 1);

	c->matmul_forward(out.c, in.c, w.c, b.c, M, K, N);
	g->matmul_forward(out.g, in.g, w.g, b.g, M, K, N);
	CMP(out, tol, "%s forward %dx%dx%d", nm, M, K, N);
	c->matmul_backward(din.c, dw.c, db.c, dout.c, in.c, w.c, M, K, N);
	g->matmul_backward(din.g, dw.g, db.g, dout.g, in.g, w.g, M, K, N);
	CMP(din, tol, "%s din (added to)", nm);
	CMP(dw, tol, "%s dw (added to)", nm);
	CMP(db, 1e-5, "%s db (added to)", nm);
	drop(&in); drop(&w); drop(&b); drop(&out); drop(&dout); drop(&din);
	drop(&dw); drop(&db);
}

static void
ops_norms(d2v_rng *r, int rows, int C)
{
	pair in = mk((size_t)rows * C, r, 2), w = mk(C, r, 1), b = mk(C, r, 1);
	pair out = mk((size_t)rows * C, NULL, 0), mean = mk(rows, NULL, 0);
	pair rstd = mk(rows, NULL, 0), dout = mk((size_t)rows * C, r, 1);
	pair din = mk((size_t)rows * C, r, 1), dw = mk(C, r, 1), db = mk(C, r, 1);

	for (int affine = 0; affine < 2; affine++) {
		const float *wc = affine ? w.c : NULL, *wg = affine ? w.g : NULL;

		cpu->layernorm_forward(out.c, mean.c, rstd.c, in.c, wc,
		    affine ? b.c : NULL, rows, C, 1e-5f);
		gpu->layernorm_forward(out.g, mean.g, rstd.g, in.g, wg,
		    affine ? b.g : NULL, rows, C, 1e-5f);
		CMP(out, 1e-5, "layernorm forward %dx%d, affine %d", rows, C,
		    affine);
		CMP(rstd, 1e-5, "layernorm rstd");
		cpu->layernorm_backward(din.c, affine ? dw.c : NULL,
		    affine ? db.c : NULL, dout.c, in.c, mean.c, rstd.c, wc, rows, C);
		gpu->layernorm_backward(din.g, affine ? dw.g : NULL,
		    affine ? db.g : NULL, dout.g, in.g, mean.g, rstd.g, wg, rows, C);
		CMP(din, 1e-5, "layernorm din, affine %d", affine);
		if (affine) {
			CMP(dw, 1e-5, "layernorm dw");
			CMP(db, 1e-5, "layernorm db");
		}
	}
	/* instance norm: over T = rows / 2 per channel of 2 sequences */
	for (int acc = 0; acc < 2; acc++) {
		cpu->instancenorm_forward(out.c, in.c, 2, rows / 2, C, 1e-5f, acc,
		    0.5f);
		gpu->instancenorm_forward(out.g, in.g, 2, rows / 2, C, 1e-5f, acc,
		    0.5f);
		CMP(out, 1e-5, "instancenorm %dx%dx%d, acc %d", 2, rows / 2, C, acc);
	}
	cpu->gelu_forward(out.c, in.c, in.n);
	gpu->gelu_forward(out.g, in.g, in.n);
	CMP(out, 1e-6, "gelu forward (%zu)", in.n);
	cpu->gelu_backward(din.c, in.c, dout.c, in.n);
	gpu->gelu_backward(din.g, in.g, dout.g, in.n);
	CMP(din, 1e-6, "gelu backward (added to)");
	cpu->add(out.c, in.c, in.n);
	gpu->add(out.g, in.g, in.n);
	CMP(out, 0, "add");
	cpu->mul(out.c, in.c, in.n);
	gpu->mul(out.g, in.g, in.n);
	CMP(out, 0, "mul");
	drop(&in); drop(&w); drop(&b); drop(&out); drop(&mean); drop(&rstd);
	drop(&dout); drop(&din); drop(&dw); drop(&db);
}

static void
ops_attention(d2v_rng *r, int R, int T, int D, int H, int alibi, int dropout)
{
	size_t RT = (size_t)R * T, P = RT * H * T;
	pair qkv = mk(RT * 3 * D, r, 1), out = mk(RT * D, NULL, 0);
	pair probs = mk(P, NULL, 0), dr = mk(P, NULL, 0);
	pair slope = mk(H, NULL, 0), ds = mk(H, r, 1);
	pair dout = mk(RT * D, r, 1), dqkv = mk(RT * 3 * D, r, 1);
	int *posc = cpu->alloc(RT * sizeof(int)), *posg = gpu->alloc(RT *
	    sizeof(int));

	for (size_t i = 0; i < RT; i++)
		posc[i] = posg[i] = (int)(i % T) * 2 + (int)(i / T) % 3;
	for (int h = 0; h < H; h++)
		slope.c[h] = slope.g[h] = 0.25f / (h + 1);
	for (size_t i = 0; i < P; i++)
		dr.c[i] = dr.g[i] = d2v_rng_below(r, 10) < 2 ? 0 : 1.25f;
	cpu->attention_forward(out.c, probs.c, qkv.c, dropout ? dr.c : NULL,
	    alibi ? slope.c : NULL, alibi ? posc : NULL, R, T, D, H);
	gpu->attention_forward(out.g, probs.g, qkv.g, dropout ? dr.g : NULL,
	    alibi ? slope.g : NULL, alibi ? posg : NULL, R, T, D, H);
	CMP(probs, 1e-5, "attention probs R%d T%d D%d H%d, alibi %d, dropout %d",
	    R, T, D, H, alibi, dropout);
	CMP(out, 1e-5, "attention forward");
	cpu->attention_backward(dqkv.c, alibi ? ds.c : NULL, dout.c, qkv.c,
	    probs.c, dropout ? dr.c : NULL, alibi ? posc : NULL, R, T, D, H);
	gpu->attention_backward(dqkv.g, alibi ? ds.g : NULL, dout.g, qkv.g,
	    probs.g, dropout ? dr.g : NULL, alibi ? posg : NULL, R, T, D, H);
	CMP(dqkv, 1e-5, "attention dqkv (added to)");
	if (alibi)
		CMP(ds, 1e-4, "attention dslope (added to)");
	cpu->release(posc);
	gpu->release(posg);
	drop(&qkv); drop(&out); drop(&probs); drop(&dr); drop(&slope);
	drop(&ds); drop(&dout); drop(&dqkv);
}

static void
ops_conv2d(d2v_rng *r, int R, int S, int C, int k, int G)
{
	size_t n = (size_t)R * S * S * C, sc = d2v_conv_scratch(R, S, S, C, C,
	    k, k, G);
	pair in = mk(n, r, 1), w = mk((size_t)C * (C / G) * k * k, r, 0.2);
	pair b = mk(C, r, 1), out = mk(n, NULL, 0), col = mk(sc, NULL, 0);
	pair dcol = mk(sc, NULL, 0), dout = mk(n, r, 1), din = mk(n, r, 1);
	pair dw = mk(w.n, r, 1), db = mk(C, r, 1);

	cpu->conv2d_forward(out.c, col.c, in.c, w.c, b.c, R, S, S, C, C, k, G);
	gpu->conv2d_forward(out.g, col.g, in.g, w.g, b.g, R, S, S, C, C, k, G);
	CMP(out, 1e-5, "conv2d forward R%d %dx%d C%d k%d G%d", R, S, S, C, k, G);
	cpu->conv2d_backward(din.c, dw.c, db.c, col.c, dcol.c, dout.c, in.c,
	    w.c, R, S, S, C, C, k, G);
	gpu->conv2d_backward(din.g, dw.g, db.g, col.g, dcol.g, dout.g, in.g,
	    w.g, R, S, S, C, C, k, G);
	CMP(din, 1e-5, "conv2d din (added to)");
	CMP(dw, 1e-5, "conv2d dw (added to)");
	CMP(db, 1e-5, "conv2d db (added to)");
	drop(&in); drop(&w); drop(&b); drop(&out); drop(&col); drop(&dcol);
	drop(&dout); drop(&din); drop(&dw); drop(&db);
}

static void
ops_conv1d(d2v_rng *r, int R, int Ti, int Ci, int Co, int k, int s, int pad,
    int G, int bias)
{
	int To = (Ti + 2 * pad - k) / s + 1;
	size_t sc = d2v_conv1d_scratch(R, Ti, Ci, Co, k, s, pad, G);
	pair in = mk((size_t)R * Ti * Ci, r, 1), w = mk((size_t)Co * (Ci / G) *
	    k, r, 0.2);
	pair b = mk(Co, r, 1), out = mk((size_t)R * To * Co, NULL, 0);
	pair col = mk(sc, NULL, 0), dcol = mk(sc, NULL, 0);
	pair dout = mk(out.n, r, 1), din = mk(in.n, r, 1), dw = mk(w.n, r, 1);
	pair db = mk(Co, r, 1);

	cpu->conv1d_forward(out.c, col.c, in.c, w.c, bias ? b.c : NULL, R, Ti,
	    Ci, Co, k, s, pad, G);
	gpu->conv1d_forward(out.g, col.g, in.g, w.g, bias ? b.g : NULL, R, Ti,
	    Ci, Co, k, s, pad, G);
	CMP(out, 1e-5, "conv1d forward R%d T%d %d->%d k%d s%d pad%d G%d", R, Ti,
	    Ci, Co, k, s, pad, G);
	cpu->conv1d_backward(din.c, dw.c, bias ? db.c : NULL, col.c, dcol.c,
	    dout.c, in.c, w.c, R, Ti, Ci, Co, k, s, pad, G);
	gpu->conv1d_backward(din.g, dw.g, bias ? db.g : NULL, col.g, dcol.g,
	    dout.g, in.g, w.g, R, Ti, Ci, Co, k, s, pad, G);
	CMP(din, 1e-5, "conv1d din (added to)");
	CMP(dw, 1e-5, "conv1d dw (added to)");
	if (bias)
		CMP(db, 1e-5, "conv1d db (added to)");
	drop(&in); drop(&w); drop(&b); drop(&out); drop(&col); drop(&dcol);
	drop(&dout); drop(&din); drop(&dw); drop(&db);
}

static void
ops_tokens(d2v_rng *r, int R, int M, int N, int V, int E, int D)
{
	size_t T = (size_t)E + V;
	pair src = mk((size_t)(R / M) * N * D, r, 1), first = mk(D, r, 1);
	pair out = mk((size_t)R * T * D, NULL, 0), din = mk(out.n, r, 1);
	pair ds = mk(src.n, r, 1), df = mk(D, r, 1);
	int *ic = cpu->alloc((size_t)R * V * sizeof(int));
	int *ig = gpu->alloc((size_t)R * V * sizeof(int));

	for (int row = 0; row < R; row++)
		for (int j = 0; j < V; j++) /* ascending, spread over N */
			ic[(size_t)row * V + j] = ig[(size_t)row * V + j] =
			    (int)(((long)j * N + row % 3) / V);
	cpu->gather_tokens(out.c, src.c, ic, E ? first.c : NULL, R, M, N, V, E,
	    D);
	gpu->gather_tokens(out.g, src.g, ig, E ? first.g : NULL, R, M, N, V, E,
	    D);
	CMP(out, 0, "gather_tokens R%d M%d N%d V%d E%d", R, M, N, V, E);
	cpu->scatter_tokens(ds.c, E ? df.c : NULL, din.c, ic, R, M, N, V, E, D);
	gpu->scatter_tokens(ds.g, E ? df.g : NULL, din.g, ig, R, M, N, V, E, D);
	CMP(ds, 0, "scatter_tokens (added to, same order)");
	CMP(df, 0, "scatter_tokens first token (added to)");
	cpu->release(ic);
	gpu->release(ig);
	drop(&src); drop(&first); drop(&out); drop(&din); drop(&ds); drop(&df);
}

/* a mask (R,N) with k set per row, in both backends' memory */
static uint8_t *
mk_mask(d2v_rng *r, const d2v_ops *o, int R, int N, int k, const uint8_t *like)
{
	uint8_t *m = o->alloc((size_t)R * N);

	if (m == NULL) {
		fprintf(stderr, "check-gpu: out of memory for a mask\n");
		exit(1);
	}
	for (int row = 0; row < R; row++)
		for (int n = 0; n < N; n++)
			m[(size_t)row * N + n] = like ?
			    like[(size_t)row * N + n] :
			    (uint8_t)(d2v_rng_below(r,
			    (uint64_t)N) < (uint64_t)k);
	return m;
}

/* The decoder's input, the masked positions, the random fills, the
 * losses and the statistics (ops.h's row operations). */
static void
ops_rows(d2v_rng *r, int R, int M, int N, int V, int E, int D)
{
	size_t nrow = (size_t)R * N * D, nin = (size_t)R * (E + V) * D;
	pair in = mk(nin, r, 1), sc = mk((size_t)R * V * D, r, 1);
	pair out = mk(nrow, r, 1), back = mk(nin, r, 1);
	pair src = mk((size_t)(R / M) * N * D, r, 1), fill = mk(D, r, 1);
	pair dsrc = mk(src.n, r, 1), dfill = mk(D, r, 1), y = mk(src.n, r, 1);
	pair pred = mk(nrow, r, 1), dp = mk(nrow, r, 1), dm = mk(nrow, NULL, 0);
	pair mt = mk((size_t)(R / M) * D, NULL, 0);
	uint8_t *mc = mk_mask(r, cpu, R, N, N - V, NULL);
	uint8_t *mg = mk_mask(r, gpu, R, N, 0, mc);
	int *ic = cpu->alloc((size_t)R * V * sizeof(int));
	int *ig = gpu->alloc((size_t)R * V * sizeof(int));
	double lc, lg, sc_, sg;

	for (int row = 0; row < R; row++)
		for (int j = 0; j < V; j++)
			ic[(size_t)row * V + j] = ig[(size_t)row * V + j] =
			    (int)(((long)j * N + row % 3) / V);
	cpu->place_tokens(out.c, in.c, ic, sc.c, R, N, V, E, D);
	gpu->place_tokens(out.g, in.g, ig, sc.g, R, N, V, E, D);
	CMP(out, 0, "place_tokens R%d N%d V%d E%d", R, N, V, E);
	cpu->pick_tokens(back.c, out.c, ic, sc.c, R, N, V, E, D);
	gpu->pick_tokens(back.g, out.g, ig, sc.g, R, N, V, E, D);
	CMP(back, 0, "pick_tokens (added to)");
	cpu->mask_tokens(out.c, src.c, mc, fill.c, R, M, N, D);
	gpu->mask_tokens(out.g, src.g, mg, fill.g, R, M, N, D);
	CMP(out, 0, "mask_tokens R%d M%d N%d", R, M, N);
	cpu->unmask_tokens(dsrc.c, dfill.c, out.c, mc, R, M, N, D);
	gpu->unmask_tokens(dsrc.g, dfill.g, out.g, mg, R, M, N, D);
	CMP(dsrc, 0, "unmask_tokens (added to, same order)");
	CMP(dfill, 0, "unmask_tokens fill (added to, same order)");
	cpu->noise_fill(out.c, mc, R, N, D, 0.01f, 17, 3);
	gpu->noise_fill(out.g, mg, R, N, D, 0.01f, 17, 3);
	/* device log, sqrt and sincos in double, then rounded to float */
	CMP(out, 1e-6, "noise_fill");
	cpu->drop_fill(dm.c, R * N, D, 0.2, 0.1, 9, 0xd0003, 11);
	gpu->drop_fill(dm.g, R * N, D, 0.2, 0.1, 9, 0xd0003, 11);
	CMP(dm, 0, "drop_fill (rows of %d)", D);
	cpu->drop_fill(dm.c, 2, nrow / 2, 0.1, 0, 9, 0xd0004, 0);
	gpu->drop_fill(dm.g, 2, nrow / 2, 0.1, 0, 9, 0xd0004, 0);
	CMP(dm, 0, "drop_fill (rows of %zu)", nrow / 2);
	lc = cpu->masked_loss(dp.c, pred.c, y.c, mc, R, M, N, N, 0, D, 0.3, 0,
	    7);
	lg = gpu->masked_loss(dp.g, pred.g, y.g, mg, R, M, N, N, 0, D, 0.3, 0,
	    7);
	T_OK(fabs(lc - lg) <= 1e-12 * lc, "masked_loss L2: %.15g against %.15g",
	    lg, lc);
	CMP(dp, 1e-7, "masked_loss L2 gradient");
	lc = cpu->masked_loss(dp.c, pred.c, y.c, NULL, R / M, 1, N - E, N, E, D,
	    1.0 / D, 0.5, 3);
	lg = gpu->masked_loss(dp.g, pred.g, y.g, NULL, R / M, 1, N - E, N, E, D,
	    1.0 / D, 0.5, 3);
	T_OK(fabs(lc - lg) <= 1e-12 * lc, "masked_loss Smooth-L1: %.15g "
	    "against %.15g", lg, lc);
	CMP(dp, 1e-7, "masked_loss Smooth-L1 gradient");
	sc_ = cpu->masked_std(pred.c, mc, R, N, N, 0, D);
	sg = gpu->masked_std(pred.g, mg, R, N, N, 0, D);
	T_OK(fabs(sc_ - sg) <= 1e-12 * sc_, "masked_std: %.15g against %.15g",
	    sg, sc_);
	cpu->mean_tokens(mt.c, pred.c, R / M, N, D);
	gpu->mean_tokens(mt.g, pred.g, R / M, N, D);
	CMP(mt, 1e-7, "mean_tokens");
	/* LayerScale, with and without the dropout scale */
	for (int scaled = 0; scaled < 2; scaled++) {
		cpu->layerscale_forward(pred.c, fill.c, out.c, scaled ? y.c : NULL,
		    R / M, D);
		gpu->layerscale_forward(pred.g, fill.g, out.g, scaled ? y.g : NULL,
		    R / M, D);
		CMP(pred, 0, "layerscale_forward%s (added to)", scaled ?
		    ", scaled" : "");
		cpu->layerscale_backward(back.c, dfill.c, dp.c, fill.c, out.c,
		    scaled ? y.c : NULL, R / M, D);
		gpu->layerscale_backward(back.g, dfill.g, dp.g, fill.g, out.g,
		    scaled ? y.g : NULL, R / M, D);
		CMP(back, 0, "layerscale_backward dx");
		/* a double sum rounded once: an ulp where the orders differ */
		CMP(dfill, 2e-7, "layerscale_backward dg (added to)");
	}
	cpu->add_bcast(pred.c, fill.c, R * N, D);
	gpu->add_bcast(pred.g, fill.g, R * N, D);
	CMP(pred, 0, "add_bcast");
	cpu->zero(pred.c, nrow * sizeof(float));
	gpu->zero(pred.g, nrow * sizeof(float));
	{
		/* from the host: page-locked memory, as d2v-train's batches */
		float *h = gpu->host_alloc(nin * sizeof(float));

		T_OK(h != NULL, "host_alloc of %zu floats", nin);
		if (h != NULL) {
			memcpy(h, in.c, nin * sizeof(float));
			gpu->copy(pred.g, h, nin * sizeof(float));
			cpu->copy(pred.c, in.c, nin * sizeof(float));
			CMP(pred, 0, "zero, then copy from page-locked host memory");
			gpu->host_release(h);
		}
	}
	{
		/* token rows by id, ids repeating: (R*N) ids into a table of
		 * 50 rows */
		int n = R * N;
		int32_t *dc = cpu->alloc(sizeof(int32_t) * (size_t)n);
		int32_t *dg = gpu->alloc(sizeof(int32_t) * (size_t)n);
		pair tab = mk((size_t)50 * D, r, 1), dtab = mk(tab.n, r, 1);

		for (int i = 0; i < n; i++)
			dc[i] = dg[i] = (int32_t)d2v_rng_below(r, 50);
		cpu->gather_rows(out.c, tab.c, dc, n, D);
		gpu->gather_rows(out.g, tab.g, dg, n, D);
		CMP(out, 0, "gather_rows (%d ids)", n);
		cpu->scatter_rows(dtab.c, out.c, dc, n, D);
		gpu->scatter_rows(dtab.g, out.g, dg, n, D);
		CMP(dtab, 0, "scatter_rows (added to, same order)");
		cpu->release(dc); gpu->release(dg); drop(&tab); drop(&dtab);
	}
	cpu->release(mc); gpu->release(mg); cpu->release(ic); gpu->release(ig);
	drop(&in); drop(&sc); drop(&out); drop(&back); drop(&src);
	drop(&fill); drop(&dsrc); drop(&dfill); drop(&y); drop(&pred);
	drop(&dp); drop(&dm); drop(&mt);
}

static void
ops_optim(d2v_rng *r, size_t n)
{
	pair p = mk(n, r, 1), g = mk(n, r, 1), m = mk(n, r, 0.1), v = mk(n, r, 0);
	pair t = mk(n, r, 1);
	double sc, sg;

	for (size_t i = 0; i < n; i++)
		v.c[i] = v.g[i] = fabsf(v.c[i]) + 0.01f;
	sc = cpu->sumsq(g.c, n);
	sg = gpu->sumsq(g.g, n);
	T_OK(fabs(sc - sg) <= 1e-9 * sc, "sumsq (%zu): %.12g against %.12g", n,
	    sg, sc);
	cpu->scale(g.c, n, 0.3f);
	gpu->scale(g.g, n, 0.3f);
	CMP(g, 0, "scale");
	cpu->adamw(p.c, g.c, m.c, v.c, n, 0.9, 0.98, 1e-3, 1e-6, 5e-5f);
	gpu->adamw(p.g, g.g, m.g, v.g, n, 0.9, 0.98, 1e-3, 1e-6, 5e-5f);
	CMP(p, 1e-6, "adamw parameters");
	CMP(m, 1e-6, "adamw first moment");
	CMP(v, 1e-6, "adamw second moment");
	cpu->ema(t.c, p.c, n, 0.999);
	gpu->ema(t.g, p.g, n, 0.999);
	CMP(t, 1e-7, "ema");
	drop(&p); drop(&g); drop(&m); drop(&v); drop(&t);
}

/* ---- whole models ------------------------------------------------------ */

typedef struct job {
	const char *name;
	d2v_config cfg;
	int B, len;      /* samples; audio samples or text tokens */
	void *x;         /* (B,...) the input */
	uint8_t *mask;   /* (B*M,N) */
} job;

static void
job_inputs(job *j, const d2v_model *m, uint64_t seed)
{
	d2v_rng r;
	const d2v_config *c = &j->cfg;
	int N = m->N, R = j->B * c->clone, keep = N / 4 > 0 ? N / 4 : 1;

	d2v_rng_seed(&r, seed, 0, 0);
	if (d2v_config_is_image(c)) {
		size_t n = (size_t)j->B * c->channels * c->image_size *
		    c->image_size;
		uint8_t *x = malloc(n);

		for (size_t i = 0; i < n; i++)
			x[i] = (uint8_t)d2v_rng_below(&r, 256);
		j->x = x;
	} else if (strcmp(c->modality, "audio") == 0) {
		float *x = malloc((size_t)j->B * j->len * sizeof *x);

		for (size_t i = 0; i < (size_t)j->B * j->len; i++)
			x[i] = (float)d2v_rng_normal(&r);
		j->x = x;
	} else {
		int32_t *x = malloc((size_t)j->B * j->len * sizeof *x);

		for (size_t i = 0; i < (size_t)j->B * j->len; i++)
			x[i] = (int32_t)d2v_rng_below(&r, (uint64_t)c->vocab);
		j->x = x;
	}
	j->mask = malloc((size_t)R * N);
	for (int row = 0; row < R; row++) {
		int *idx = malloc((size_t)N * sizeof *idx);

		for (int n = 0; n < N; n++)
			idx[n] = n;
		d2v_rng_shuffle_int(&r, idx, N);
		for (int n = 0; n < N; n++)
			j->mask[(size_t)row * N + idx[n]] = n >= keep;
		free(idx);
	}
}

static int
model_on(d2v_model *m, const job *j, const d2v_ops *o)
{
	d2v_err err = {0};

	if (d2v_model_init(m, &j->cfg, o, &err) < 0 ||
	    d2v_model_set_length(m, j->len, &err) < 0) {
		T_OK(0, "%s: model on %s: %s", j->name, o->name, err.msg);
		return -1;
	}
	d2v_params_init(&m->lay, &j->cfg, m->params, 7);
	d2v_model_sync_teacher(m);
	return 0;
}

static void
train_against_cpu(job *j)
{
	d2v_model mc, mg;
	d2v_err err = {0};
	double worst = 0;

	if (model_on(&mc, j, cpu) < 0)
		return;
	if (model_on(&mg, j, gpu) < 0) {
		d2v_model_free(&mc);
		return;
	}
	job_inputs(j, &mc, 3);
	for (int s = 0; s < 6; s++) {
		d2v_step_out oc, og;
		int rc = d2v_model_step(&mc, j->x, j->mask, NULL, NULL, NULL, j->B,
		    (uint64_t)s, &oc, &err);
		int rg = d2v_model_step(&mg, j->x, j->mask, NULL, NULL, NULL, j->B,
		    (uint64_t)s, &og, &err);

		if (rc < 0 || rg < 0) {
			T_OK(0, "%s: step %d: %s", j->name, s, err.msg);
			break;
		}
		if (s == 0) {
			T_OK(fabs(og.loss - oc.loss) <= 1e-4 * fabs(oc.loss),
			    "%s: one step's loss %.7g on the GPU, %.7g on the CPU "
			    "(1e-4)", j->name, og.loss, oc.loss);
			T_OK(t_relerr(mg.grads, mc.grads, mc.lay.total) <= 1e-3,
			    "%s: one step's gradient, relative error %.2e (1e-3)",
			    j->name, t_relerr(mg.grads, mc.grads, mc.lay.total));
		} else {
			worst = fmax(worst, fabs(og.loss - oc.loss) / fabs(oc.loss));
		}
		if (s == 5)
			break;
		d2v_train_update(&mc, s, NULL, NULL);
		d2v_train_update(&mg, s, NULL, NULL);
	}
	T_OK(worst <= 1e-3, "%s: five steps of training, losses within %.2e of "
	    "the CPU's (1e-3)", j->name, worst);
	T_OK(t_relerr(mg.params, mc.params, mc.lay.total) <= 1e-4,
	    "%s: the parameters after five updates, relative error %.2e (1e-4)",
	    j->name, t_relerr(mg.params, mc.params, mc.lay.total));
	check_failed(j->name);
	d2v_model_free(&mc);
	d2v_model_free(&mg);
	free(j->x);
	free(j->mask);
}

static double
now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static int
cmpd(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* B1 of bench/README.md: median ms of 10 steps (with the update) after 2 */
static void
time_b1(const d2v_ops *o)
{
	job j = { .name = "B1", .B = 4 };
	d2v_model m;
	d2v_err err = {0};
	double t[10];

	d2v_config_preset(&j.cfg, "tiny", NULL);
	j.cfg.clone = 8;
	if (model_on(&m, &j, o) < 0)
		return;
	job_inputs(&j, &m, 1);
	for (int s = 0; s < 12; s++) {
		double t0 = now();
		d2v_step_out out;

		if (d2v_model_step(&m, j.x, j.mask, NULL, NULL, NULL, j.B,
		    (uint64_t)s, &out, &err) < 0) {
			T_OK(0, "B1 on %s: %s", o->name, err.msg);
			break;
		}
		d2v_train_update(&m, s, NULL, NULL);
		if (s >= 2)
			t[s - 2] = now() - t0;
		if (s == 11) {
			qsort(t, 10, sizeof *t, cmpd);
			printf("# B1 step on %s: %.1f ms (median of 10)\n", o->name,
			    1e3 * (t[4] + t[5]) / 2);
		}
	}
	d2v_model_free(&m);
	free(j.x);
	free(j.mask);
}

int
main(void)
{
	d2v_err err = {0};
	d2v_rng r;
	job img = { .name = "image v2", .B = 2 };
	job aud = { .name = "audio v2", .B = 2, .len = 16000 };
	job txt = { .name = "text v2", .B = 2, .len = 40 };

	cpu = d2v_backend_cpu();
	cpu16 = d2v_backend_cpu_bf16(NULL);
	if ((gpu16 = d2v_backend_cuda(1, &err)) == NULL) {
		fprintf(stderr, "check-gpu: needs a CUDA GPU: %s\n", err.msg);
		return 1;
	}
	/* bf16 first: the last call's precision is the one that runs */
	d2v_rng_seed(&r, 1, 0, 0);
	ops_matmul(&r, cpu16, gpu16, "bf16 matmul", 197, 192, 768, 1e-5);
	gpu = d2v_backend_cuda(0, &err);
	ops_matmul(&r, cpu, gpu, "matmul", 197, 192, 768, 1e-5);
	ops_matmul(&r, cpu, gpu, "matmul", 7, 31, 5, 1e-5);
	ops_norms(&r, 2 * 197, 192);
	ops_norms(&r, 2 * 5, 31);
	ops_attention(&r, 3, 50, 64, 4, 0, 0);
	ops_attention(&r, 3, 50, 64, 4, 1, 1);
	ops_attention(&r, 2, 197, 192, 3, 0, 1);
	ops_conv2d(&r, 3, 14, 48, 3, 16);
	ops_conv2d(&r, 2, 7, 12, 5, 1);
	ops_conv1d(&r, 2, 400, 1, 32, 10, 5, 0, 1, 0);
	ops_conv1d(&r, 2, 49, 32, 32, 3, 2, 0, 1, 0);
	ops_conv1d(&r, 2, 49, 32, 32, 19, 1, 9, 16, 1);
	ops_tokens(&r, 32, 8, 196, 39, 1, 192);
	ops_tokens(&r, 6, 1, 49, 10, 0, 31);
	ops_rows(&r, 32, 8, 196, 39, 1, 192);
	ops_rows(&r, 6, 3, 49, 10, 0, 31);
	ops_optim(&r, 100003);
	check_failed("the ops");

	d2v_config_preset(&img.cfg, "tiny", NULL);
	img.cfg.image_size = 32; img.cfg.patch = 4; img.cfg.dim = 64;
	img.cfg.heads = 4; img.cfg.mlp_dim = 128; img.cfg.depth = 2;
	img.cfg.top_k = 2; img.cfg.decoder_dim = 32; img.cfg.decoder_layers = 2;
	img.cfg.clone = 2;
	train_against_cpu(&img);
	d2v_config_preset(&aud.cfg, "tiny", NULL);
	d2v_config_modality(&aud.cfg, "audio", NULL);
	aud.cfg.dim = 64; aud.cfg.heads = 4; aud.cfg.mlp_dim = 128;
	aud.cfg.depth = 2; aud.cfg.top_k = 2; aud.cfg.conv_dim = 32;
	aud.cfg.decoder_dim = 32; aud.cfg.decoder_layers = 2; aud.cfg.clone = 2;
	train_against_cpu(&aud);
	d2v_config_preset(&txt.cfg, "tiny", NULL);
	d2v_config_modality(&txt.cfg, "text", NULL);
	txt.cfg.dim = 64; txt.cfg.heads = 4; txt.cfg.mlp_dim = 128;
	txt.cfg.depth = 2; txt.cfg.top_k = 2; txt.cfg.vocab = 500;
	txt.cfg.decoder_dim = 32; txt.cfg.decoder_layers = 2; txt.cfg.clone = 2;
	train_against_cpu(&txt);

	time_b1(gpu);
	time_b1(d2v_backend_cuda(1, &err));
	check_failed("the timed steps");
	return T_DONE();
}
