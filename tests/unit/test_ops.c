/* test_ops.c - finite differences on every backward of the CPU backend. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/conv_dnnl.h"
#include "backend/ops.h"
#include "rng.h"
#include "t.h"

static d2v_rng rng;
static const d2v_ops *o;

static float *
rnd(size_t n, double scale)
{
	float *p = malloc(n * sizeof *p);

	for (size_t i = 0; i < n; i++)
		p[i] = (float)(scale * d2v_rng_normal(&rng));
	return p;
}

static float *
zeros(size_t n)
{
	return calloc(n, sizeof(float));
}

/* A scalar loss from an op's output: sum(out * w) with fixed random w.
 * The check perturbs input i of buffer x by +-h and compares the central
 * difference with the analytical gradient g[i]. */
typedef double (*lossfn)(void *ctx);

/* Checks up to 40 coordinates of x against g; returns the worst error
 * relative to max(|numerical|, 1e-2). */
static double
fd_check(lossfn f, void *ctx, float *x, const float *g, size_t n, double h)
{
	double worst = 0;
	size_t step = n > 40 ? n / 40 : 1;

	for (size_t i = (size_t)d2v_rng_below(&rng, step); i < n; i += step) {
		float save = x[i];
		double lp, lm, num, e;

		x[i] = save + (float)h;
		lp = f(ctx);
		x[i] = save - (float)h;
		lm = f(ctx);
		x[i] = save;
		num = (lp - lm) / (2 * h);
		e = fabs(num - g[i]) / (fabs(num) + fabs(g[i]) + 0.05);
		if (e > worst)
			worst = e;
	}
	return worst;
}

/* ---- matmul ---- */
struct mm { int M, K, N; float *in, *w, *b, *out, *r; };
static double
mm_loss(void *c)
{
	struct mm *s = c;

	o->matmul_forward(s->out, s->in, s->w, s->b, s->M, s->K, s->N);
	return t_dot(s->out, s->r, (size_t)s->M * s->N);
}

static void
test_matmul(void)
{
	struct mm s = {.M = 7, .K = 5, .N = 6};
	float *din, *dw, *db;

	s.in = rnd(35, 1); s.w = rnd(30, 1); s.b = rnd(6, 1);
	s.out = zeros(42); s.r = rnd(42, 1);
	din = zeros(35); dw = zeros(30); db = zeros(6);
	o->matmul_backward(din, dw, db, s.r, s.in, s.w, s.M, s.K, s.N);
	T_OK(fd_check(mm_loss, &s, s.in, din, 35, 1e-2) < 1e-3, "matmul d(in)");
	T_OK(fd_check(mm_loss, &s, s.w, dw, 30, 1e-2) < 1e-3, "matmul d(w)");
	T_OK(fd_check(mm_loss, &s, s.b, db, 6, 1e-2) < 1e-3, "matmul d(b)");
	free(s.in); free(s.w); free(s.b); free(s.out); free(s.r);
	free(din); free(dw); free(db);
}

/* ---- layernorm ---- */
struct ln { int rows, C, affine; float *in, *w, *b, *out, *mean, *rstd, *r; };
static double
ln_loss(void *c)
{
	struct ln *s = c;

	o->layernorm_forward(s->out, s->mean, s->rstd, s->in,
	    s->affine ? s->w : NULL, s->affine ? s->b : NULL, s->rows, s->C, 1e-5f);
	return t_dot(s->out, s->r, (size_t)s->rows * s->C);
}

static void
test_layernorm(void)
{
	for (int affine = 0; affine <= 1; affine++) {
		struct ln s = {.rows = 5, .C = 8, .affine = affine};
		float *din = zeros(40), *dw = zeros(8), *db = zeros(8);

		s.in = rnd(40, 2); s.w = rnd(8, 1); s.b = rnd(8, 1);
		s.out = zeros(40); s.mean = zeros(5); s.rstd = zeros(5);
		s.r = rnd(40, 1);
		ln_loss(&s);
		o->layernorm_backward(din, affine ? dw : NULL, affine ? db : NULL,
		    s.r, s.in, s.mean, s.rstd, affine ? s.w : NULL, 5, 8);
		T_OK(fd_check(ln_loss, &s, s.in, din, 40, 1e-2) < 2e-3,
		    "layernorm d(in), affine %d", affine);
		if (affine) {
			T_OK(fd_check(ln_loss, &s, s.w, dw, 8, 1e-2) < 2e-3,
			    "layernorm d(w)");
			T_OK(fd_check(ln_loss, &s, s.b, db, 8, 1e-2) < 2e-3,
			    "layernorm d(b)");
		}
		free(s.in); free(s.w); free(s.b); free(s.out); free(s.mean);
		free(s.rstd); free(s.r); free(din); free(dw); free(db);
	}
}

/* ---- gelu ---- */
struct ge { size_t n; float *in, *out, *r; };
static double
ge_loss(void *c)
{
	struct ge *s = c;

	o->gelu_forward(s->out, s->in, s->n);
	return t_dot(s->out, s->r, s->n);
}

static void
test_gelu(void)
{
	struct ge s = {.n = 50};
	float *din = zeros(50);

	s.in = rnd(50, 2); s.out = zeros(50); s.r = rnd(50, 1);
	o->gelu_backward(din, s.in, s.r, 50);
	T_OK(fd_check(ge_loss, &s, s.in, din, 50, 1e-2) < 1e-3, "gelu d(in)");
	o->gelu_forward(s.out, (float[]){1.0f}, 1);
	T_OK(fabs(s.out[0] - 0.8413447f) < 1e-6, "gelu(1) = 0.8413447 (erf form)");
	free(s.in); free(s.out); free(s.r); free(din);
}

/* ---- attention ---- */
struct at { int R, T, D, H; float *qkv, *out, *probs, *r, *drop, *slope;
    int *pos; };
static double
at_loss(void *c)
{
	struct at *s = c;

	o->attention_forward(s->out, s->probs, s->qkv, s->drop, s->slope,
	    s->pos, s->R, s->T, s->D, s->H);
	return t_dot(s->out, s->r, (size_t)s->R * s->T * s->D);
}

static void
test_attention(void)
{
	struct at s = {.R = 2, .T = 5, .D = 8, .H = 2};
	size_t nq = 2 * 5 * 24, no = 2 * 5 * 8;
	float *dq = zeros(nq);
	double rowsum = 0;

	s.qkv = rnd(nq, 1); s.out = zeros(no); s.probs = zeros(2 * 2 * 25);
	s.r = rnd(no, 1);
	at_loss(&s);
	for (int i = 0; i < 5; i++)
		rowsum += s.probs[i];
	T_OK(fabs(rowsum - 1) < 1e-5, "attention probabilities sum to 1");
	o->attention_backward(dq, NULL, s.r, s.qkv, s.probs, NULL, NULL, 2, 5, 8,
	    2);
	T_OK(fd_check(at_loss, &s, s.qkv, dq, nq, 1e-2) < 2e-3,
	    "attention d(qkv)");
	/* with attention dropout: probabilities scaled by 0 or 1/(1-p) */
	s.drop = zeros(2 * 2 * 25);
	for (int i = 0; i < 100; i++)
		s.drop[i] = d2v_rng_uniform(&rng) < 0.3 ? 0.0f : 1.0f / 0.7f;
	memset(dq, 0, nq * sizeof(float));
	at_loss(&s);
	o->attention_backward(dq, NULL, s.r, s.qkv, s.probs, s.drop, NULL, 2, 5,
	    8, 2);
	T_OK(fd_check(at_loss, &s, s.qkv, dq, nq, 1e-2) < 2e-3,
	    "attention d(qkv) with attention dropout");
	/* ALiBi: positions with gaps (kept tokens of a masked row) */
	{
		int pos[10] = {0, 2, 3, 7, 8, 1, 4, 5, 6, 9};
		float slope[2] = {0.5f, 0.125f}, dsl[2] = {0, 0};
		double direct;

		s.slope = slope;
		s.pos = pos;
		memset(dq, 0, nq * sizeof(float));
		at_loss(&s);
		/* one probability by the definition: row 1, head 1, i 2, j 4 */
		{
			const float *q = s.qkv + (5 + 2) * 24 + 4;
			double lg[5], mx = -1e30, z = 0;

			for (int j = 0; j < 5; j++) {
				const float *k = s.qkv + (5 + j) * 24 + 8 + 4;

				lg[j] = 0;
				for (int e = 0; e < 4; e++)
					lg[j] += q[e] * k[e];
				lg[j] = lg[j] / 2 - 0.125 * abs(pos[5 + 2] - pos[5 + j]);
				mx = lg[j] > mx ? lg[j] : mx;
			}
			for (int j = 0; j < 5; j++)
				z += exp(lg[j] - mx);
			direct = exp(lg[4] - mx) / z;
		}
		T_OK(fabs(direct - s.probs[((1 * 2 + 1) * 5 + 2) * 5 + 4]) < 1e-5,
		    "ALiBi attention matches the definition at one probability");
		o->attention_backward(dq, dsl, s.r, s.qkv, s.probs, s.drop, pos, 2,
		    5, 8, 2);
		T_OK(fd_check(at_loss, &s, s.qkv, dq, nq, 1e-2) < 2e-3,
		    "ALiBi attention d(qkv)");
		T_OK(fd_check(at_loss, &s, slope, dsl, 2, 1e-3) < 2e-3,
		    "ALiBi attention d(slope)");
		s.slope = NULL;
		s.pos = NULL;
	}
	free(s.drop);
	free(s.qkv); free(s.out); free(s.probs); free(s.r); free(dq);
}

/* ---- grouped conv2d ---- */
struct cv { int R, Hh, Ww, Ci, Co, k, G; float *in, *w, *b, *out, *col, *r; };
static double
cv_loss(void *c)
{
	struct cv *s = c;

	o->conv2d_forward(s->out, s->col, s->in, s->w, s->b, s->R, s->Hh, s->Ww,
	    s->Ci, s->Co, s->k, s->G);
	return t_dot(s->out, s->r, (size_t)s->R * s->Hh * s->Ww * s->Co);
}

static void
test_conv2d(void)
{
	struct cv s = {.R = 2, .Hh = 4, .Ww = 3, .Ci = 8, .Co = 6, .k = 3, .G = 2};
	size_t nin = 2 * 12 * 8, nw = 6 * 4 * 9, nout = 2 * 12 * 6;
	float *din = zeros(nin), *dw = zeros(nw), *db = zeros(6);
	size_t ncol = d2v_conv_scratch(2, 4, 3, 8, 6, 3, 3, 2);
	float *dcol = zeros(ncol);
	double direct = 0;

	s.in = rnd(nin, 1); s.w = rnd(nw, 1); s.b = rnd(6, 1);
	s.out = zeros(nout); s.col = zeros(ncol); s.r = rnd(nout, 1);
	cv_loss(&s);
	/* one output by the definition: image 1, pixel (2,1), channel 4 (group 1) */
	direct = s.b[4];
	for (int ci = 0; ci < 4; ci++)
		for (int ky = 0; ky < 3; ky++)
			for (int kx = 0; kx < 3; kx++) {
				int y = 2 + ky - 1, x = 1 + kx - 1;

				if (y < 0 || y >= 4 || x < 0 || x >= 3)
					continue;
				direct += s.w[((4 * 4 + ci) * 3 + ky) * 3 + kx] *
				    s.in[((1 * 4 + y) * 3 + x) * 8 + 4 + ci];
			}
	T_OK(fabs(direct - s.out[((1 * 4 + 2) * 3 + 1) * 6 + 4]) < 1e-4,
	    "grouped conv2d matches the definition at one output");
	o->conv2d_backward(din, dw, db, s.col, dcol, s.r, s.in, s.w, 2, 4, 3, 8,
	    6, 3, 2);
	T_OK(fd_check(cv_loss, &s, s.in, din, nin, 1e-2) < 1e-3, "conv2d d(in)");
	T_OK(fd_check(cv_loss, &s, s.w, dw, nw, 1e-2) < 1e-3, "conv2d d(w)");
	T_OK(fd_check(cv_loss, &s, s.b, db, 6, 1e-2) < 1e-3, "conv2d d(b)");
	free(s.in); free(s.w); free(s.b); free(s.out); free(s.col); free(s.r);
	free(din); free(dw); free(db); free(dcol);
}

/* ---- grouped, strided, padded conv1d ---- */
struct c1 { int R, Ti, Ci, Co, k, st, pad, G; float *in, *w, *b, *out, *col, *r; };
static int
c1_len(const struct c1 *s)
{
	return (s->Ti + 2 * s->pad - s->k) / s->st + 1;
}

static double
c1_loss(void *c)
{
	struct c1 *s = c;

	o->conv1d_forward(s->out, s->col, s->in, s->w, s->b, s->R, s->Ti, s->Ci,
	    s->Co, s->k, s->st, s->pad, s->G);
	return t_dot(s->out, s->r, (size_t)s->R * c1_len(s) * s->Co);
}

static void
conv1d_case(int Ti, int Ci, int Co, int k, int st, int pad, int G, int bias,
    const char *what)
{
	struct c1 s = {.R = 2, .Ti = Ti, .Ci = Ci, .Co = Co, .k = k, .st = st,
	    .pad = pad, .G = G};
	int To = c1_len(&s), Cg = Ci / G;
	size_t nin = 2 * (size_t)Ti * Ci, nw = (size_t)Co * Cg * k;
	size_t nout = 2 * (size_t)To * Co, ncol = 2 * (size_t)To * Cg * k;
	size_t nd = d2v_conv_scratch(2, 1, Ti, Ci, Co, 1, k, G);
	float *din = zeros(nin), *dw = zeros(nw), *db = zeros(Co);
	float *dcol;
	double direct;
	int r = 1, t = To - 1, co = Co - 1, g = co / (Co / G);

	ncol = ncol > nd ? ncol : nd;
	dcol = zeros(ncol);

	s.in = rnd(nin, 1); s.w = rnd(nw, 1); s.b = bias ? rnd(Co, 1) : NULL;
	s.out = zeros(nout); s.col = zeros(ncol); s.r = rnd(nout, 1);
	c1_loss(&s);
	/* the last output of sequence 1 by the definition */
	direct = bias ? s.b[co] : 0;
	for (int ci = 0; ci < Cg; ci++)
		for (int kk = 0; kk < k; kk++) {
			int x = t * st + kk - pad;

			if (x >= 0 && x < Ti)
				direct += s.w[((size_t)co * Cg + ci) * k + kk] *
				    s.in[((size_t)r * Ti + x) * Ci + g * Cg + ci];
		}
	T_OK(fabs(direct - s.out[((size_t)r * To + t) * Co + co]) < 1e-4,
	    "conv1d %s matches the definition at one output", what);
	o->conv1d_backward(din, dw, bias ? db : NULL, s.col, dcol, s.r, s.in, s.w,
	    2, Ti, Ci, Co, k, st, pad, G);
	T_OK(fd_check(c1_loss, &s, s.in, din, nin, 1e-2) < 1e-3,
	    "conv1d %s d(in)", what);
	T_OK(fd_check(c1_loss, &s, s.w, dw, nw, 1e-2) < 1e-3,
	    "conv1d %s d(w)", what);
	if (bias)
		T_OK(fd_check(c1_loss, &s, s.b, db, Co, 1e-2) < 1e-3,
		    "conv1d %s d(b)", what);
	free(s.in); free(s.w); free(s.b); free(s.out); free(s.col); free(s.r);
	free(din); free(dw); free(db); free(dcol);
}

static void
test_conv1d(void)
{
	/* the feature encoder's first layer: 1 channel, kernel 10, stride 5 */
	conv1d_case(37, 1, 4, 10, 5, 0, 1, 0, "k10 s5 (feature encoder)");
	/* a later layer: kernel 2, stride 2, odd length (the last drops) */
	conv1d_case(9, 6, 6, 2, 2, 0, 1, 0, "k2 s2");
	/* positional / decoder conv: same padding, groups */
	conv1d_case(7, 8, 8, 5, 1, 2, 4, 1, "k5 same, 4 groups");
	conv1d_case(6, 8, 6, 3, 1, 1, 2, 1, "k3 same, 2 groups, 8->6");
}

/* The fast convolutions against their twin, im2col and GEMM: d2v's own
 * (direct for stride-1 'same', taps for the feature encoder's) and
 * oneDNN's where it takes the shape; the output, and the gradients
 * accumulated onto nonzero buffers.  A 2-D case has stride 1 and 'same'
 * padding; a 1-D one takes st and pad. */
static void
conv_twin(int R, int Hh, int Ww, int Ci, int Co, int k, int G, int two_d,
    int st, int pad)
{
	int kh = two_d ? k : 1, Cg = Ci / G;
	int Wo = two_d ? Ww : (Ww + 2 * pad - k) / st + 1;
	size_t nin = (size_t)R * Hh * Ww * Ci, nout = (size_t)R * Hh * Wo * Co;
	size_t nw = (size_t)Co * Cg * kh * k;
	size_t ns = two_d ? d2v_conv_scratch(R, Hh, Ww, Ci, Co, kh, k, G) :
	    d2v_conv1d_scratch(R, Ww, Ci, Co, k, st, pad, G);
	float *in = rnd(nin, 1), *w = rnd(nw, 1), *b = rnd(Co, 1), *dy = rnd(nout, 1);
	float *col = zeros(ns), *dcol = zeros(ns), *out[3], *din[3], *dw[3], *db[3];
	float *seed_in = rnd(nin, 1), *seed_w = rnd(nw, 1), *seed_b = rnd(Co, 1);
	d2v_conv_geom g = {.R = R, .Hi = Hh, .Wi = Ww, .Ho = Hh, .Wo = Wo,
	    .Ci = Ci, .Co = Co, .G = G, .kh = kh, .kw = k, .st = st,
	    .ph = two_d ? k / 2 : 0, .pw = two_d ? k / 2 : pad};
	/* the backend takes oneDNN for stride-1 'same' convolutions only */
	const char *impl = two_d || (st == 1 && 2 * pad + 1 == k) ?
	    d2v_dnnl_conv_impl(&g) : NULL;

	for (int p = 0; p < 3; p++) {
		out[p] = zeros(nout);
		din[p] = malloc(nin * 4); memcpy(din[p], seed_in, nin * 4);
		dw[p] = malloc(nw * 4); memcpy(dw[p], seed_w, nw * 4);
		db[p] = malloc(Co * 4); memcpy(db[p], seed_b, Co * 4);
		d2v_cpu_plain = p == 0;
		d2v_cpu_conv_own = p == 1;
		if (two_d) {
			o->conv2d_forward(out[p], col, in, w, b, R, Hh, Ww, Ci, Co, k, G);
			o->conv2d_backward(din[p], dw[p], db[p], col, dcol, dy, in, w, R,
			    Hh, Ww, Ci, Co, k, G);
		} else {
			o->conv1d_forward(out[p], col, in, w, b, R, Ww, Ci, Co, k, st,
			    pad, G);
			o->conv1d_backward(din[p], dw[p], db[p], col, dcol, dy, in, w, R,
			    Ww, Ci, Co, k, st, pad, G);
		}
	}
	d2v_cpu_plain = 0;
	d2v_cpu_conv_own = 0;
	for (int p = 1; p < 3; p++) {
		double e[4];

		if (p == 2 && impl == NULL)
			break;
		e[0] = t_relerr(out[0], out[p], nout);
		e[1] = t_relerr(din[0], din[p], nin);
		e[2] = t_relerr(dw[0], dw[p], nw);
		e[3] = t_relerr(db[0], db[p], Co);
		T_OK(e[0] < 1e-5 && e[1] < 1e-5 && e[2] < 1e-5 && e[3] < 1e-6,
		    "%s conv%s %dx%d, %d->%d channels, k%d s%d, %d groups equals "
		    "im2col: out %.1e, d(in) %.1e, d(w) %.1e, d(b) %.1e",
		    p == 1 ? "d2v's" : impl, two_d ? "2d" : "1d", Hh, Ww, Ci, Co,
		    k, st, G, e[0], e[1], e[2], e[3]);
	}
	for (int p = 0; p < 3; p++) {
		free(out[p]); free(din[p]); free(dw[p]); free(db[p]);
	}
	free(in); free(w); free(b); free(dy); free(col); free(dcol);
	free(seed_in); free(seed_w); free(seed_b);
}

/* The transposed-key attention against the plain loops: output,
 * probabilities and the gradients, with and without ALiBi and dropout. */
static void
attention_twin(int R, int T, int D, int H, int alibi, int dropout)
{
	size_t nq = (size_t)R * T * 3 * D, no = (size_t)R * T * D;
	size_t np = (size_t)R * H * T * T;
	float *qkv = rnd(nq, 1), *dy = rnd(no, 1), *drop = NULL, *slope = NULL;
	float *out[2], *pr[2], *dq[2], *ds[2];
	int *pos = NULL;
	double e[4];

	if (dropout) {
		drop = zeros(np);
		for (size_t i = 0; i < np; i++)
			drop[i] = d2v_rng_uniform(&rng) < 0.2 ? 0.0f : 1.25f;
	}
	if (alibi) {
		slope = rnd(H, 0.3);
		pos = malloc(sizeof(int) * (size_t)R * T);
		for (int i = 0; i < R * T; i++)
			pos[i] = (i % T) * 2 + (int)d2v_rng_below(&rng, 2);
	}
	for (int p = 0; p < 2; p++) {
		out[p] = zeros(no); pr[p] = zeros(np); dq[p] = rnd(nq, 1);
		ds[p] = zeros((size_t)H);
		d2v_rng_seed(&rng, 77, 0, 0);
		for (size_t i = 0; i < nq; i++)
			dq[p][i] = (float)d2v_rng_normal(&rng); /* the same start */
		d2v_cpu_plain = p;
		o->attention_forward(out[p], pr[p], qkv, drop, slope, pos, R, T, D, H);
		o->attention_backward(dq[p], ds[p], dy, qkv, pr[p], drop, pos, R, T,
		    D, H);
	}
	d2v_cpu_plain = 0;
	e[0] = t_relerr(out[0], out[1], no);
	e[1] = t_relerr(pr[0], pr[1], np);
	e[2] = t_relerr(dq[0], dq[1], nq);
	e[3] = alibi ? t_relerr(ds[0], ds[1], (size_t)H) : 0;
	T_OK(e[0] < 1e-5 && e[1] < 1e-5 && e[2] < 1e-5 && e[3] < 1e-4,
	    "attention R%d T%d D%d H%d%s%s equals the plain loops: out %.1e, "
	    "probs %.1e, d(qkv) %.1e, d(slope) %.1e", R, T, D, H,
	    alibi ? " ALiBi" : "", dropout ? " dropout" : "", e[0], e[1], e[2],
	    e[3]);
	for (int p = 0; p < 2; p++) {
		free(out[p]); free(pr[p]); free(dq[p]); free(ds[p]);
	}
	free(qkv); free(dy); free(drop); free(slope); free(pos);
}

/* The row-order bias gradient against the column walk, N over a block. */
static void
test_bias_twin(void)
{
	int M = 301, N = 150;
	float *dy = rnd((size_t)M * N, 1), *db[2];

	for (int p = 0; p < 2; p++) {
		db[p] = zeros((size_t)N);
		db[p][N - 1] = 0.5f; /* accumulates */
		d2v_cpu_plain = p;
		o->matmul_backward(NULL, NULL, db[p], dy, NULL, NULL, M, 1, N);
	}
	d2v_cpu_plain = 0;
	T_OK(t_relerr(db[0], db[1], (size_t)N) < 1e-6 && db[0][N - 1] != 0,
	    "bias gradient by rows equals the column sums (M %d, N %d): %.1e",
	    M, N, t_relerr(db[0], db[1], (size_t)N));
	{
		/* the LayerNorm weight and bias gradients alike */
		float *x = rnd((size_t)M * N, 2), *w = rnd(N, 1), *b = rnd(N, 1);
		float *y = zeros((size_t)M * N), *mu = zeros(M), *rs = zeros(M);
		float *gw[2], *gb[2];

		o->layernorm_forward(y, mu, rs, x, w, b, M, N, 1e-5f);
		for (int p = 0; p < 2; p++) {
			gw[p] = zeros(N);
			gb[p] = zeros(N);
			d2v_cpu_plain = p;
			o->layernorm_backward(NULL, gw[p], gb[p], dy, x, mu, rs, w, M, N);
		}
		d2v_cpu_plain = 0;
		T_OK(t_relerr(gw[0], gw[1], N) < 1e-6 && t_relerr(gb[0], gb[1], N) < 1e-6,
		    "LayerNorm weight and bias gradients by rows equal the column "
		    "walk: %.1e, %.1e", t_relerr(gw[0], gw[1], N), t_relerr(gb[0], gb[1], N));
		free(x); free(w); free(b); free(y); free(mu); free(rs);
		for (int p = 0; p < 2; p++) {
			free(gw[p]);
			free(gb[p]);
		}
	}
	free(dy); free(db[0]); free(db[1]);
	/* the LayerNorm forward and input gradient with their sums in vector
	 * lanes, with and without the affine, against the plain loops; the
	 * rows offset by 100 so that the mean matters */
	for (int affine = 0; affine < 2; affine++) {
		int C = 197;
		float *x = rnd((size_t)M * C, 2), *w = rnd(C, 1), *b = rnd(C, 1);
		float *g = rnd((size_t)M * C, 1), *y[2], *mu[2], *rs[2], *dx[2];
		double e[4];

		for (size_t i = 0; i < (size_t)M * C; i++)
			x[i] += 100.0f;
		for (int p = 0; p < 2; p++) {
			y[p] = zeros((size_t)M * C); mu[p] = zeros(M); rs[p] = zeros(M);
			dx[p] = zeros((size_t)M * C);
			dx[p][7] = 0.25f; /* accumulates */
			d2v_cpu_plain = p;
			o->layernorm_forward(y[p], mu[p], rs[p], x, affine ? w : NULL,
			    affine ? b : NULL, M, C, 1e-5f);
			o->layernorm_backward(dx[p], NULL, NULL, g, x, mu[0], rs[0],
			    affine ? w : NULL, M, C);
		}
		d2v_cpu_plain = 0;
		e[0] = t_relerr(y[0], y[1], (size_t)M * C);
		e[1] = t_relerr(mu[0], mu[1], M);
		e[2] = t_relerr(rs[0], rs[1], M);
		e[3] = t_relerr(dx[0], dx[1], (size_t)M * C);
		T_OK(e[0] < 1e-6 && e[1] < 1e-7 && e[2] < 1e-5 && e[3] < 1e-5,
		    "LayerNorm (affine %d) with vector sums equals the plain loops: "
		    "out %.1e, mean %.1e, rstd %.1e, d(in) %.1e", affine, e[0], e[1],
		    e[2], e[3]);
		free(x); free(w); free(b); free(g);
		for (int p = 0; p < 2; p++) {
			free(y[p]); free(mu[p]); free(rs[p]); free(dx[p]);
		}
	}
}

/* The vectorised GELU (its own exp and erfc) against libm's erff and
 * expf, its plain twin, on a fine grid of [-12, 12] and a few extremes. */
static void
test_gelu_twin(void)
{
	size_t n = 24001 + 6;
	float *x = malloc(n * 4), *y[2], *d[2], *one = malloc(n * 4);
	double ef = 0, eb = 0;

	for (size_t i = 0; i < 24001; i++)
		x[i] = -12.0f + 1e-3f * (float)i;
	x[24001] = -100; x[24002] = 100; x[24003] = -1e-30f; x[24004] = 1e-30f;
	x[24005] = 87.5f; x[24006] = -87.5f;
	for (size_t i = 0; i < n; i++)
		one[i] = 1;
	for (int p = 0; p < 2; p++) {
		y[p] = zeros(n);
		d[p] = zeros(n);
		d2v_cpu_plain = p;
		o->gelu_forward(y[p], x, n);
		o->gelu_backward(d[p], x, one, n);
	}
	d2v_cpu_plain = 0;
	for (size_t i = 0; i < n; i++) {
		ef = fmax(ef, fabs(y[0][i] - y[1][i]) / fmax(1, fabs(x[i])));
		eb = fmax(eb, fabs(d[0][i] - d[1][i]));
	}
	T_OK(ef < 1e-6 && eb < 1e-6, "vectorised GELU equals the erff one: "
	    "forward %.1e (relative to max(1, |x|)), backward %.1e", ef, eb);
	for (int p = 0; p < 2; p++) {
		free(y[p]);
		free(d[p]);
	}
	free(x);
	free(one);
}

/* The tap GEMMs of ungrouped strided 1-D convolutions (the feature
 * encoder) against im2col. */
static void
taps_twin(int R, int Ti, int Ci, int Co, int k, int st)
{
	int To = (Ti - k) / st + 1;
	size_t nin = (size_t)R * Ti * Ci, nout = (size_t)R * To * Co;
	size_t nw = (size_t)Co * Ci * k;
	size_t ns = d2v_conv1d_scratch(R, Ti, Ci, Co, k, st, 0, 1);
	size_t ni = (size_t)R * To * Ci * k;
	float *in = rnd(nin, 1), *w = rnd(nw, 1), *dy = rnd(nout, 1);
	float *seed_in = rnd(nin, 1), *seed_w = rnd(nw, 1);
	float *col, *dcol, *out[2], *din[2], *dw[2];
	double e[3];

	ns = ns > ni ? ns : ni;
	col = zeros(ns);
	dcol = zeros(ns);
	for (int p = 0; p < 2; p++) {
		out[p] = zeros(nout);
		din[p] = malloc(nin * 4); memcpy(din[p], seed_in, nin * 4);
		dw[p] = malloc(nw * 4); memcpy(dw[p], seed_w, nw * 4);
		d2v_cpu_plain = p;
		o->conv1d_forward(out[p], col, in, w, NULL, R, Ti, Ci, Co, k, st, 0, 1);
		o->conv1d_backward(din[p], dw[p], NULL, col, dcol, dy, in, w, R, Ti,
		    Ci, Co, k, st, 0, 1);
	}
	d2v_cpu_plain = 0;
	e[0] = t_relerr(out[0], out[1], nout);
	e[1] = t_relerr(din[0], din[1], nin);
	e[2] = t_relerr(dw[0], dw[1], nw);
	T_OK(e[0] < 1e-5 && e[1] < 1e-5 && e[2] < 1e-5 && ns < ni * 2,
	    "conv1d by taps, %d samples of %d channels, k%d s%d -> %d, equals "
	    "im2col: out %.1e, d(in) %.1e, d(w) %.1e", Ti, Ci, k, st, Co, e[0],
	    e[1], e[2]);
	for (int p = 0; p < 2; p++) {
		free(out[p]); free(din[p]); free(dw[p]);
	}
	free(in); free(w); free(dy); free(seed_in); free(seed_w); free(col);
	free(dcol);
}

static void
test_conv_twins(void)
{
	taps_twin(2, 41, 32, 48, 3, 2);  /* the feature encoder's middle */
	taps_twin(3, 20, 40, 40, 2, 2);  /* its last layers */
	taps_twin(2, 63, 32, 16, 10, 5); /* overlapping windows, stride 5 */
	conv_twin(3, 5, 7, 24, 20, 3, 4, 1, 1, 1); /* 6 -> 5 per group, W < 8 */
	conv_twin(2, 14, 14, 48, 48, 3, 16, 1, 1, 1); /* the image decoder's */
	conv_twin(2, 14, 14, 192, 192, 3, 16, 1, 1, 1); /* B1's decoder */
	conv_twin(2, 9, 10, 16, 40, 5, 2, 1, 1, 2); /* 20 outputs: 3 blocks of 8 */
	conv_twin(3, 1, 37, 16, 16, 19, 4, 0, 1, 9); /* audio position encoder */
	conv_twin(2, 1, 13, 32, 16, 7, 1, 0, 1, 3); /* audio decoder, 32 -> 16 */
	conv_twin(2, 1, 5, 8, 8, 9, 1, 0, 1, 4); /* kernel longer than the text */
	conv_twin(2, 1, 400, 1, 32, 10, 1, 0, 5, 0); /* feature encoder's first */
	conv_twin(2, 1, 79, 32, 32, 3, 1, 0, 2, 0); /* its strided taps */
	conv_twin(2, 1, 40, 32, 32, 2, 1, 0, 2, 0); /* its last, k2 s2 */
}

static void
test_instancenorm(void)
{
	float *x = rnd(2 * 6 * 3, 3), *y = zeros(36);
	double m = 0, v = 0;

	o->instancenorm_forward(y, x, 2, 6, 3, 1e-5f, 0, 1);
	for (int t = 0; t < 6; t++)
		m += y[(6 + t) * 3 + 1];
	m /= 6;
	for (int t = 0; t < 6; t++)
		v += (y[(6 + t) * 3 + 1] - m) * (y[(6 + t) * 3 + 1] - m);
	v /= 6;
	T_OK(fabs(m) < 1e-5 && fabs(v - 1) < 1e-3,
	    "instance norm: zero mean, unit variance over time per channel");
	free(x); free(y);
}

/* ---- bf16 linear layers: the fp32 op on operands rounded to bf16 ---- */
static void
bf16_case(const d2v_ops *bo, int M, int K, int N, const char *what)
{
	size_t nk = (size_t)M * K, nw = (size_t)N * K, nd = (size_t)M * N;
	float *in = rnd(nk, 2), *w = rnd(nw, 1), *b = rnd(N, 1), *d = rnd(nd, 1);
	float *ri = zeros(nk), *rw = zeros(nw), *rd = zeros(nd);
	float *y[2] = {zeros(nd), zeros(nd)}, *gi[2], *gw[2], *gb[2];
	float *y32 = zeros(nd);

	for (int i = 0; i < 2; i++) {
		gi[i] = rnd(nk, 1); /* backward accumulates: start from the same */
		gw[i] = rnd(nw, 1);
		gb[i] = rnd(N, 1);
	}
	memcpy(gi[1], gi[0], nk * 4);
	memcpy(gw[1], gw[0], nw * 4);
	memcpy(gb[1], gb[0], (size_t)N * 4);
	d2v_bf16_round(ri, in, nk);
	d2v_bf16_round(rw, w, nw);
	d2v_bf16_round(rd, d, nd);
	bo->matmul_forward(y[0], in, w, b, M, K, N);
	o->matmul_forward(y[1], ri, rw, b, M, K, N);
	o->matmul_forward(y32, in, w, b, M, K, N);
	bo->matmul_backward(gi[0], gw[0], gb[0], d, in, w, M, K, N);
	o->matmul_backward(gi[1], gw[1], NULL, rd, ri, rw, M, K, N);
	o->matmul_backward(NULL, NULL, gb[1], d, NULL, NULL, M, K, N);
	T_OK(t_relerr(y[0], y[1], nd) < 1e-6 && t_relerr(gi[0], gi[1], nk) < 1e-6 &&
	    t_relerr(gw[0], gw[1], nw) < 1e-6 && t_relerr(gb[0], gb[1], N) < 1e-7,
	    "bf16 linear (%s, %s, %dx%dx%d) is the fp32 one on rounded operands: "
	    "%.1e %.1e %.1e %.1e", bo->name, what, M, K, N,
	    t_relerr(y[0], y[1], nd), t_relerr(gi[0], gi[1], nk),
	    t_relerr(gw[0], gw[1], nw), t_relerr(gb[0], gb[1], N));
	/* and it is not the fp32 product: bf16 keeps 8 bits of mantissa */
	T_OK(t_relerr(y[0], y32, nd) > 1e-4 && t_relerr(y[0], y32, nd) < 1e-2,
	    "bf16 linear differs from fp32 by bf16's rounding: %.1e",
	    t_relerr(y[0], y32, nd));
	free(in); free(w); free(b); free(d); free(ri); free(rw); free(rd);
	free(y32);
	for (int i = 0; i < 2; i++) {
		free(y[i]); free(gi[i]); free(gw[i]); free(gb[i]);
	}
}

static void
test_bf16(void)
{
	const char *why;
	const d2v_ops *bo = d2v_backend_cpu_bf16(&why);
	/* ties to the even neighbour (down, then up), just above a tie, a
	 * subnormal bf16 keeps, one below half its spacing, -0, inf, the
	 * largest floats and NaN */
	float x[] = {1.0f, 1.00390625f, 1.01171875f, 1.0f + 0x1p-8f + 0x1p-20f,
	    -1.00390625f, 0x1p-130f, 0x1p-140f, -0.0f, INFINITY, 3.0e38f, NAN};
	float want[] = {1.0f, 1.0f, 1.015625f, 1.0078125f, -1.0f, 0x1p-130f,
	    0.0f, -0.0f, INFINITY, 3.00405527e38f, NAN}, r[11];

	printf("# bf16 engine: %s\n", why);
	T_OK(strcmp(bo->name, "cpu-bf16") == 0 && bo->layernorm_forward ==
	    o->layernorm_forward && bo->attention_forward == o->attention_forward,
	    "the bf16 table is the CPU table but for its linear layers");
	int same = 1;

	d2v_bf16_round(r, x, 11);
	for (int i = 0; i < 10; i++)
		same &= r[i] == want[i];
	T_OK(same && signbit(r[7]) && isnan(r[10]),
	    "bf16 rounding: nearest, ties to even, specials kept");
	bf16_case(bo, 37, 53, 29, d2v_bf16_onednn() ? "onednn" : "emulated");
	bf16_case(bo, 196, 192, 576, d2v_bf16_onednn() ? "onednn" : "emulated");
	if (d2v_bf16_onednn())
		T_OK(1, "oneDNN ran the bf16 products above (%s)", why);
}

/* gather_tokens and scatter_tokens against the index arithmetic written
 * out, and the scatter as the gather's adjoint: <gather(x), y> equals
 * <x, scatter(y)> (and the first token's part). */
static void
test_tokens(int R, int M, int N, int V, int E, int D)
{
	size_t T = (size_t)E + V, no = (size_t)R * T * D, ns = (size_t)(R / M) *
	    N * D;
	float *src = rnd(ns, 1), *first = rnd(D, 1), *out = zeros(no);
	float *y = rnd(no, 1), *ds = zeros(ns), *df = zeros(D);
	int *idx = malloc((size_t)R * V * sizeof *idx), bad = 0;
	double lhs, rhs;

	for (int r = 0; r < R; r++) {
		int j = 0;

		for (int n = 0; n < N && j < V; n++)
			if ((int)d2v_rng_below(&rng, (uint64_t)(N - n)) < V - j)
				idx[(size_t)r * V + j++] = n;
	}
	o->gather_tokens(out, src, idx, E ? first : NULL, R, M, N, V, E, D);
	for (int r = 0; r < R; r++)
		for (size_t t = 0; t < T; t++)
			for (int d = 0; d < D; d++) {
				float want = (int)t < E ? first[d] : src[((size_t)(r /
				    M) * N + idx[(size_t)r * V + t - E]) * D + d];

				bad += out[((size_t)r * T + t) * D + d] != want;
			}
	T_OK(bad == 0, "gather_tokens R %d M %d N %d V %d E %d: every row "
	    "from its sequence's kept token (%d wrong)", R, M, N, V, E, bad);
	o->scatter_tokens(ds, E ? df : NULL, y, idx, R, M, N, V, E, D);
	lhs = t_dot(out, y, no);
	rhs = t_dot(src, ds, ns) + (E ? t_dot(first, df, D) : 0);
	T_OK(fabs(lhs - rhs) <= 1e-4 * fabs(lhs), "scatter_tokens is the "
	    "gather's adjoint: %.9g against %.9g", rhs, lhs);
	free(src); free(first); free(out); free(y); free(ds); free(df);
	free(idx);
}

int
main(void)
{
	d2v_rng_seed(&rng, 42, 0, 0);
	o = d2v_backend_cpu();
	test_matmul();
	test_layernorm();
	test_gelu();
	test_attention();
	test_conv2d();
	test_conv1d();
	test_conv_twins();
	test_gelu_twin();
	test_bias_twin();
	attention_twin(3, 5, 8, 2, 0, 0);
	attention_twin(2, 40, 192, 3, 0, 1);   /* B1's student rows */
	attention_twin(2, 197, 96, 2, 1, 0);   /* long rows, ALiBi */
	attention_twin(2, 17, 48, 3, 1, 1);
	test_instancenorm();
	test_bf16();
	test_tokens(6, 3, 7, 2, 1, 5);
	test_tokens(32, 8, 196, 39, 1, 24);
	test_tokens(4, 1, 49, 10, 0, 16);
	return T_DONE();
}
