/*
 * test_rows.c - the CPU backend's row operations (ops.h): the decoder's
 * input, the masked positions, the random fills, the losses and the
 * statistics.  Each backward is checked as the adjoint of its forward or
 * by finite differences, each statistic against a plain two-pass formula,
 * and the random fills against their keying: a part of the rows filled
 * with its row offset equals the same rows of the whole.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/ops.h"
#include "rng.h"
#include "t.h"

static d2v_rng rng;
static const d2v_ops *o;

static float *
rnd(size_t n, double scale)
{
	float *p = malloc((n ? n : 1) * sizeof *p);

	for (size_t i = 0; i < n; i++)
		p[i] = (float)(scale * d2v_rng_normal(&rng));
	return p;
}

static float *
filled(size_t n, float v)
{
	float *p = malloc((n ? n : 1) * sizeof *p);

	for (size_t i = 0; i < n; i++)
		p[i] = v;
	return p;
}

/* mask (R,N) with k set per row at random places */
static uint8_t *
mk_mask(int R, int N, int k)
{
	uint8_t *m = calloc((size_t)R * N, 1);
	int *perm = malloc(sizeof(int) * (size_t)N);

	for (int r = 0; r < R; r++) {
		for (int n = 0; n < N; n++)
			perm[n] = n;
		d2v_rng_shuffle_int(&rng, perm, N);
		for (int j = 0; j < k; j++)
			m[(size_t)r * N + perm[j]] = 1;
	}
	free(perm);
	return m;
}

/* idx (R,V): the unmasked positions of mask, ascending */
static int *
kept(const uint8_t *mask, int R, int N, int V)
{
	int *idx = malloc(sizeof(int) * (size_t)R * (V ? V : 1));

	for (int r = 0; r < R; r++)
		for (int n = 0, j = 0; n < N; n++)
			if (!mask[(size_t)r * N + n])
				idx[(size_t)r * V + j++] = n;
	return idx;
}

static void
test_place_pick(int R, int N, int V, int E, int D, int scaled)
{
	size_t nin = (size_t)R * (E + V) * D, nout = (size_t)R * N * D;
	uint8_t *mask = mk_mask(R, N, N - V);
	int *idx = kept(mask, R, N, V);
	float *in = rnd(nin, 1), *s = scaled ? rnd((size_t)R * V * D, 1) : NULL;
	float *out = filled(nout, 7.0f), *y = rnd(nout, 1);
	float *back = filled(nin, 0.0f);
	int exact = 1, untouched = 1;
	double lhs, rhs, mag;

	o->place_tokens(out, in, idx, s, R, N, V, E, D);
	for (int r = 0; r < R; r++)
		for (int n = 0; n < N; n++)
			for (int d = 0; d < D; d++) {
				float v = out[((size_t)r * N + n) * D + d];

				if (mask[(size_t)r * N + n])
					untouched &= v == 7.0f;
			}
	for (int r = 0; r < R; r++)
		for (int j = 0; j < V; j++)
			for (int d = 0; d < D; d++) {
				size_t at = ((size_t)r * N + idx[(size_t)r * V + j]) * D + d;
				size_t from = ((size_t)r * (E + V) + E + j) * D + d;
				float want = s ? in[from] * s[((size_t)r * V + j) * D + d] :
				    in[from];

				exact &= out[at] == want;
			}
	T_OK(exact && untouched, "place_tokens R%d N%d V%d E%d%s: the kept rows "
	    "placed, the others untouched", R, N, V, E, scaled ? " scaled" : "");
	/* pick is place's adjoint: <place(x), y> over the placed rows */
	for (size_t i = 0; i < nout; i++)
		if (mask[i / D])
			out[i] = 0;
	lhs = mag = 0;
	for (size_t i = 0; i < nout; i++)
		if (!mask[i / D]) {
			lhs += (double)out[i] * y[i];
			mag += fabs((double)out[i] * y[i]);
		}
	o->pick_tokens(back, y, idx, s, R, N, V, E, D);
	rhs = t_dot(back, in, nin);
	/* each term rounded once to float on either side */
	T_OK(fabs(lhs - rhs) <= 2.5e-7 * mag &&
	    (E == 0 || back[0] == 0.0f), "pick_tokens is place's adjoint: "
	    "%.9g against %.9g; the first token untouched", rhs, lhs);
	free(mask); free(idx); free(in); free(s); free(out); free(y); free(back);
}

static void
test_mask_unmask(int R, int M, int N, int D, int with_fill)
{
	size_t nsrc = (size_t)(R / M) * N * D, nout = (size_t)R * N * D;
	uint8_t *mask = mk_mask(R, N, N / 3);
	float *src = rnd(nsrc, 1), *fill = with_fill ? rnd(D, 1) : NULL;
	float *out = filled(nout, 7.0f), *y = rnd(nout, 1);
	float *dsrc = filled(nsrc, 0.0f), *dfill = filled(D, 0.0f);
	int exact = 1;
	double lhs, rhs, mag = 0;

	o->mask_tokens(out, src, mask, fill, R, M, N, D);
	for (int r = 0; r < R; r++)
		for (int n = 0; n < N; n++)
			for (int d = 0; d < D; d++) {
				size_t at = ((size_t)r * N + n) * D + d;
				float want = !mask[(size_t)r * N + n] ?
				    src[((size_t)(r / M) * N + n) * D + d] :
				    fill ? fill[d] : 0.0f;

				exact &= out[at] == want;
			}
	T_OK(exact, "mask_tokens R%d M%d N%d D%d %s", R, M, N, D,
	    fill ? "with a fill" : "zeroed");
	lhs = t_dot(out, y, nout);
	for (size_t i = 0; i < nout; i++)
		mag += fabs((double)out[i] * y[i]);
	o->unmask_tokens(dsrc, fill ? dfill : NULL, y, mask, R, M, N, D);
	rhs = t_dot(dsrc, src, nsrc) + (fill ? t_dot(dfill, fill, D) : 0);
	/* the sums of up to M (or R N) float gradients, each rounded */
	T_OK(fabs(lhs - rhs) <= 1e-6 * mag, "unmask_tokens is "
	    "mask_tokens' adjoint: %.9g against %.9g", rhs, lhs);
	free(mask); free(src); free(fill); free(out); free(y); free(dsrc);
	free(dfill);
}

/* masked_loss / norm as a function of pred, for the differences */
struct ml {
	float *dp, *pred, *y;
	uint8_t *mask;
	int R, M, N, T, off, D;
	double w, beta, norm;
};

static double
ml_loss(struct ml *c)
{
	return o->masked_loss(c->dp, c->pred, c->y, c->mask, c->R, c->M, c->N,
	    c->T, c->off, c->D, c->w, c->beta, c->norm) / c->norm;
}

static void
test_masked_loss(int R, int M, int N, int off, int D, double beta,
    int all)
{
	struct ml c = { .R = R, .M = M, .N = N, .T = N + off, .off = off,
	    .D = D, .w = 0.7, .beta = beta, .norm = 13 };
	size_t np = (size_t)R * c.T * D;
	float *g;
	double naive = 0, worst = 0, loss;
	int zero_else = 1;
	size_t step;

	c.pred = rnd(np, 1);
	c.y = rnd((size_t)(R / M) * N * D, 1);
	c.dp = filled(np, 5.0f);
	c.mask = all ? NULL : mk_mask(R, N, N / 2);
	loss = ml_loss(&c);
	for (int r = 0; r < R; r++)
		for (int n = 0; n < N; n++) {
			if (c.mask && !c.mask[(size_t)r * N + n])
				continue;
			for (int d = 0; d < D; d++) {
				double e = (double)c.pred[((size_t)r * c.T + off + n) *
				    D + d] - c.y[((size_t)(r / M) * N + n) * D + d];
				double a = fabs(e);

				naive += c.w * (beta == 0 ? e * e : a < beta ?
				    0.5 * e * e / beta : a - 0.5 * beta);
			}
		}
	for (int r = 0; r < R; r++)
		for (int t = 0; t < c.T; t++) {
			int n = t - off, sel = n >= 0 &&
			    (c.mask == NULL || c.mask[(size_t)r * N + n]);

			for (int d = 0; !sel && d < D; d++)
				zero_else &= c.dp[((size_t)r * c.T + t) * D + d] == 0;
		}
	T_OK(fabs(loss - naive / c.norm) <= 1e-12 * fabs(naive) &&
	    zero_else, "masked_loss R%d M%d N%d off%d beta %g%s: %.12g against "
	    "the plain sum %.12g; dp 0 at the other rows", R, M, N, off, beta,
	    all ? " all rows" : "", loss, naive / c.norm);
	g = malloc(np * sizeof *g);
	memcpy(g, c.dp, np * sizeof *g);
	step = np > 60 ? np / 60 : 1;
	for (size_t i = (size_t)d2v_rng_below(&rng, step); i < np; i += step) {
		float save = c.pred[i];
		double h = 1e-3, lp, lm, num, e;

		c.pred[i] = save + (float)h;
		lp = ml_loss(&c);
		c.pred[i] = save - (float)h;
		lm = ml_loss(&c);
		c.pred[i] = save;
		num = (lp - lm) / (2 * h);
		e = fabs(num - g[i]) / (fabs(num) + fabs(g[i]) + 0.05);
		if (e > worst)
			worst = e;
	}
	T_OK(worst < 1e-2, "masked_loss's dp against finite differences: worst "
	    "%.1e", worst);
	free(g); free(c.pred); free(c.y); free(c.dp); free(c.mask);
}

static void
test_stats(int R, int N, int off, int D)
{
	int T = N + off;
	float *x = rnd((size_t)R * T * D, 2), *mt = malloc(sizeof(float) *
	    (size_t)R * D);
	uint8_t *mask = mk_mask(R, N, N / 2 + 1);
	double want = 0, got, worst = 0;
	long k = 0;

	for (size_t i = 0; i < (size_t)R * N; i++)
		k += mask[i];
	for (int d = 0; d < D; d++) { /* two passes: mean, then deviations */
		double mean = 0, ss = 0;

		for (int r = 0; r < R; r++)
			for (int n = 0; n < N; n++)
				if (mask[(size_t)r * N + n])
					mean += x[((size_t)r * T + off + n) * D + d];
		mean /= k;
		for (int r = 0; r < R; r++)
			for (int n = 0; n < N; n++)
				if (mask[(size_t)r * N + n]) {
					double e = x[((size_t)r * T + off + n) * D +
					    d] - mean;

					ss += e * e;
				}
		want += sqrt(ss / (k - 1));
	}
	want /= D;
	got = o->masked_std(x, mask, R, N, T, off, D);
	T_OK(fabs(got - want) <= 1e-9 * want, "masked_std R%d N%d off%d: %.12g "
	    "against two passes %.12g", R, N, off, got, want);
	T_OK(o->masked_std(x, NULL, 1, 1, 1, 0, D) == 0, "masked_std of one row "
	    "is 0");
	o->mean_tokens(mt, x, R, T, D);
	for (int r = 0; r < R; r++)
		for (int d = 0; d < D; d++) {
			double s = 0;

			for (int t = 0; t < T; t++)
				s += x[((size_t)r * T + t) * D + d];
			s = fabs(mt[(size_t)r * D + d] - s / T);
			if (s > worst)
				worst = s;
		}
	T_OK(worst <= 1e-6, "mean_tokens: worst difference %.1e", worst);
	free(x); free(mt); free(mask);
}

static void
test_noise(int R, int N, int D)
{
	size_t n = (size_t)R * N * D;
	uint8_t *mask = mk_mask(R, N, N / 2);
	float *all = filled(n, 7.0f), *part = filled(n, 7.0f);
	int k = R / 3, same = 1, untouched = 1;
	double s = 0, s2 = 0, cnt = 0, sd;

	o->noise_fill(all, mask, R, N, D, 0.5f, 99, 40);
	/* rows k.. as a part of their own: its row offset keeps the draws */
	o->noise_fill(part + (size_t)k * N * D, mask + (size_t)k * N, R - k, N,
	    D, 0.5f, 99, 40 + k);
	for (size_t i = (size_t)k * N * D; i < n; i++)
		same &= all[i] == part[i];
	for (size_t i = 0; i < n; i++) {
		if (!mask[i / D]) {
			untouched &= all[i] == 7.0f;
			continue;
		}
		s += all[i];
		s2 += (double)all[i] * all[i];
		cnt++;
	}
	s /= cnt;
	sd = sqrt(s2 / cnt - s * s);
	T_OK(same && untouched, "noise_fill R%d N%d D%d: a part's rows equal the "
	    "whole's; unmasked rows untouched", R, N, D);
	/* 4.5 standard errors: a false alarm about once in 10^5 runs */
	T_OK(fabs(s) < 4.5 * 0.5 / sqrt(cnt) && fabs(sd - 0.5) < 4.5 * 0.5 /
	    sqrt(2 * cnt), "noise_fill: mean %.4f, std %.4f of %.0f draws (std "
	    "0.5)", s, sd, cnt);
	o->noise_fill(part, mask, R, N, D, 0.5f, 100, 40);
	T_OK(memcmp(part, all, n * sizeof *all) != 0, "noise_fill: another seed, "
	    "other noise");
	free(mask); free(all); free(part);
}

static void
test_drop(int rows, size_t per, double p, double dp)
{
	size_t n = (size_t)rows * per;
	float *all = filled(n, -1), *part = filled(n, -1);
	float keep = p > 0 ? (float)(1 / (1 - p)) : 1.0f;
	float kp = dp > 0 ? (float)(1 / (1 - dp)) : 1.0f;
	int k = rows / 2, same = 1, valid = 1, rows_off = 0, differ = 0;
	double zeros = 0, live = 0;

	o->drop_fill(all, rows, per, p, dp, 5, 0xd0001, 100);
	o->drop_fill(part + (size_t)k * per, rows - k, per, p, dp, 5, 0xd0001,
	    100 + k);
	for (size_t i = (size_t)k * per; i < n; i++)
		same &= all[i] == part[i];
	for (int r = 0; r < rows; r++) {
		const float *row = all + (size_t)r * per;
		int off = 1;

		for (size_t i = 0; i < per; i++)
			off &= row[i] == 0;
		rows_off += off && per > 64;
		for (size_t i = 0; i < per; i++) {
			valid &= row[i] == 0 || row[i] == keep * kp ||
			    (p == 0 && dp == 0 && row[i] == 1);
			if (off && per > 64)
				continue;
			zeros += row[i] == 0;
			live++;
		}
		/* the second 4096-element chunk is not the first again */
		if (per >= 8192)
			differ += memcmp(row, row + 4096, 4096 * sizeof *row) != 0;
	}
	T_OK(same && valid, "drop_fill %d rows of %zu, p %g, drop path %g: "
	    "values 0 or %g; a part's rows equal the whole's", rows, per, p, dp,
	    (double)(keep * kp));
	T_OK(fabs(zeros / live - p) < 4.5 * sqrt(p * (1 - p) / live) + 1e-12,
	    "drop_fill: %.4f of the elements of live rows dropped (p %g)",
	    zeros / live, p);
	if (dp > 0)
		T_OK(fabs((double)rows_off / rows - dp) < 4.5 * sqrt(dp * (1 - dp) /
		    rows), "drop_fill: %d of %d rows dropped (drop path %g)",
		    rows_off, rows, dp);
	if (per >= 8192 && p > 0)
		T_OK(differ == rows, "drop_fill: each 4096-element chunk has its "
		    "own draws (%d of %d rows)", differ, rows);
	free(all); free(part);
}

/* gather_rows and scatter_rows: the rows by id, and the adjoint with
 * repeated ids added in order */
static void
test_rows_by_id(int n, int rows, int D)
{
	float *table = rnd((size_t)rows * D, 1), *out = rnd((size_t)n * D, 1);
	float *y = rnd((size_t)n * D, 1), *dt = filled((size_t)rows * D, 0);
	float *want = filled((size_t)rows * D, 0);
	int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
	int exact = 1, same = 1;

	for (int i = 0; i < n; i++)
		ids[i] = (int32_t)d2v_rng_below(&rng, (uint64_t)rows);
	o->gather_rows(out, table, ids, n, D);
	for (int i = 0; i < n; i++)
		exact &= memcmp(out + (size_t)i * D, table + (size_t)ids[i] * D,
		    sizeof(float) * (size_t)D) == 0;
	o->scatter_rows(dt, y, ids, n, D);
	for (int i = 0; i < n; i++) /* the order the contract fixes */
		for (int d = 0; d < D; d++)
			want[(size_t)ids[i] * D + d] += y[(size_t)i * D + d];
	same = memcmp(dt, want, sizeof(float) * (size_t)rows * D) == 0;
	T_OK(exact && same, "gather_rows %d of %d rows, D%d; scatter_rows adds "
	    "the repeated rows in order, bit for bit", n, rows, D);
	free(table); free(out); free(y); free(dt); free(want); free(ids);
}

/* LayerScale: the forward's change with g and x, against the backward */
static void
test_layerscale(int rows, int D, int with_s)
{
	size_t n = (size_t)rows * D;
	float *g = rnd(D, 1), *x = rnd(n, 1), *s = with_s ? rnd(n, 1) : NULL;
	float *dy = rnd(n, 1), *out = filled(n, 0), *dx = filled(n, 9);
	float *dg = filled(D, 0.5f);
	double worst = 0;

	o->layerscale_backward(dx, dg, dy, g, x, s, rows, D);
	for (int d = 0; d < D; d++) /* the loss <out, dy> is linear in g */
		dg[d] -= 0.5f;
	for (int k = 0; k < 2 * D && k < (int)n; k++) {
		/* out = g x s: d<out, dy>/dg[d] and /dx[i] by one unit step */
		int vs_g = k < D;
		size_t i = vs_g ? (size_t)k : (size_t)d2v_rng_below(&rng, n);
		float *p = vs_g ? g + k : x + i, save = *p;
		double lp, lm, num, ana = vs_g ? dg[k] : dx[i];

		memset(out, 0, n * sizeof *out);
		*p = save + 0.5f;
		o->layerscale_forward(out, g, x, s, rows, D);
		lp = t_dot(out, dy, n);
		memset(out, 0, n * sizeof *out);
		*p = save - 0.5f;
		o->layerscale_forward(out, g, x, s, rows, D);
		lm = t_dot(out, dy, n);
		*p = save;
		num = lp - lm;
		if (fabs(num - ana) / (fabs(num) + fabs(ana) + 1e-3) > worst)
			worst = fabs(num - ana) / (fabs(num) + fabs(ana) + 1e-3);
	}
	T_OK(worst < 1e-5, "layerscale %d x %d%s: the backward's dg (added to) "
	    "and dx (set) against the forward's differences: worst %.1e", rows,
	    D, s ? ", scaled" : "", worst);
	free(g); free(x); free(s); free(dy); free(out); free(dx); free(dg);
}

static void
test_bcast(void)
{
	float *a = rnd(3 * 10, 1), *b = rnd(10, 1), *c = malloc(30 * sizeof *c);
	int ok = 1;

	memcpy(c, a, 30 * sizeof *c);
	o->add_bcast(a, b, 3, 10);
	for (int i = 0; i < 30; i++)
		ok &= a[i] == c[i] + b[i % 10];
	T_OK(ok, "add_bcast adds the same row to each");
	free(a); free(b); free(c);
}

int
main(void)
{
	d2v_rng_seed(&rng, 7, 0, 0);
	o = d2v_backend_cpu();
	test_place_pick(6, 13, 5, 1, 8, 0);
	test_place_pick(6, 13, 5, 0, 8, 1);
	test_place_pick(16, 196, 39, 1, 24, 1);
	test_mask_unmask(6, 3, 11, 5, 0);
	test_mask_unmask(4, 1, 11, 5, 1);
	test_mask_unmask(16, 8, 49, 12, 1);
	test_masked_loss(6, 3, 9, 0, 5, 0, 0);
	test_masked_loss(4, 1, 9, 1, 5, 0.5, 0);
	test_masked_loss(4, 2, 1, 0, 7, 0, 1);   /* the CLS loss's shape */
	test_stats(5, 9, 1, 6);
	test_stats(40, 7, 0, 33);
	test_noise(9, 17, 7);
	test_noise(16, 49, 64);
	test_drop(300, 100, 0.1, 0);
	test_drop(400, 96, 0.2, 0.25);
	test_drop(7, 9000, 0.1, 0);
	test_drop(5, 10, 0, 0);
	test_rows_by_id(40, 7, 33);
	test_rows_by_id(500, 300, 20);
	test_layerscale(7, 5, 0);
	test_layerscale(40, 33, 1);
	test_bcast();
	return T_DONE();
}
