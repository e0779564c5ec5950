/*
 * rows.c - the CPU backend's row operations: the decoder's input, the
 * masked positions, the random fills, the losses and the statistics (the
 * contracts are in ops.h).  Every sum is in a fixed order whatever the
 * number of threads: per row (or per column) in a thread of its own, then
 * the rows in order.
 */
#include "rows.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

#define TEN(x) ((size_t)(x))

void
d2v_cpu_copy(void *dst, const void *src, size_t bytes)
{
	if (bytes > 0 && dst != src)
		memmove(dst, src, bytes);
}

void
d2v_cpu_zero(void *p, size_t bytes)
{
	if (bytes > 0)
		memset(p, 0, bytes);
}

void
d2v_cpu_add_bcast(float *a, const float *b, int B, size_t n)
{
#pragma omp parallel for schedule(static)
	for (int r = 0; r < B; r++) {
		float *row = a + TEN(r) * n;

		for (size_t i = 0; i < n; i++)
			row[i] += b[i];
	}
}

void
d2v_cpu_gather_rows(float *out, const float *table, const int32_t *ids, int n,
    int D)
{
#pragma omp parallel for schedule(static)
	for (int i = 0; i < n; i++)
		memcpy(out + TEN(i) * D, table + TEN(ids[i]) * D,
		    TEN(D) * sizeof(float));
}

void
d2v_cpu_scatter_rows(float *dtable, const float *din, const int32_t *ids,
    int n, int D)
{
	/* rows repeat: the columns split among the threads in blocks of 16
	 * (a cache line), each walking the rows in order */
#pragma omp parallel for schedule(static)
	for (int d0 = 0; d0 < D; d0 += 16) {
		int d1 = d0 + 16 < D ? d0 + 16 : D;

		for (int i = 0; i < n; i++) {
			float *dst = dtable + TEN(ids[i]) * D;
			const float *src = din + TEN(i) * D;

			for (int d = d0; d < d1; d++)
				dst[d] += src[d];
		}
	}
}

void
d2v_cpu_place_tokens(float *out, const float *in, const int *idx,
    const float *scale, int R, int N, int V, int E, int D)
{
#pragma omp parallel for schedule(static)
	for (int r = 0; r < R; r++)
		for (int j = 0; j < V; j++) {
			float *dst = out + (TEN(r) * N + idx[TEN(r) * V + j]) * D;
			const float *src = in + (TEN(r) * (E + V) + E + j) * D;
			const float *s = scale ? scale + (TEN(r) * V + j) * D : NULL;

			if (s == NULL) {
				memcpy(dst, src, TEN(D) * sizeof(float));
				continue;
			}
			for (int d = 0; d < D; d++)
				dst[d] = src[d] * s[d];
		}
}

void
d2v_cpu_pick_tokens(float *dout, const float *din, const int *idx,
    const float *scale, int R, int N, int V, int E, int D)
{
#pragma omp parallel for schedule(static)
	for (int r = 0; r < R; r++)
		for (int j = 0; j < V; j++) {
			float *dst = dout + (TEN(r) * (E + V) + E + j) * D;
			const float *src = din + (TEN(r) * N + idx[TEN(r) * V + j]) * D;
			const float *s = scale ? scale + (TEN(r) * V + j) * D : NULL;

			for (int d = 0; d < D; d++)
				dst[d] += s ? src[d] * s[d] : src[d];
		}
}

void
d2v_cpu_mask_tokens(float *out, const float *src, const uint8_t *mask,
    const float *fill, int R, int M, int N, int D)
{
#pragma omp parallel for schedule(static)
	for (int r = 0; r < R; r++)
		for (int n = 0; n < N; n++) {
			float *dst = out + (TEN(r) * N + n) * D;

			if (!mask[TEN(r) * N + n])
				memcpy(dst, src + (TEN(r / M) * N + n) * D,
				    TEN(D) * sizeof(float));
			else if (fill != NULL)
				memcpy(dst, fill, TEN(D) * sizeof(float));
			else
				memset(dst, 0, TEN(D) * sizeof(float));
		}
}

void
d2v_cpu_unmask_tokens(float *dsrc, float *dfill, const float *din,
    const uint8_t *mask, int R, int M, int N, int D)
{
	/* one sequence per thread: its M copies added in order */
#pragma omp parallel for schedule(static)
	for (int b = 0; b < R / M; b++)
		for (int r = b * M; r < (b + 1) * M; r++)
			for (int n = 0; n < N; n++) {
				float *dst = dsrc + (TEN(b) * N + n) * D;
				const float *g = din + (TEN(r) * N + n) * D;

				if (mask[TEN(r) * N + n])
					continue;
				for (int d = 0; d < D; d++)
					dst[d] += g[d];
			}
	for (size_t i = 0; dfill != NULL && i < TEN(R) * N; i++) {
		const float *g = din + i * D;

		if (!mask[i])
			continue;
		for (int d = 0; d < D; d++)
			dfill[d] += g[d];
	}
}

void
d2v_cpu_noise_fill(float *out, const uint8_t *mask, int R, int N, int D,
    float std, uint64_t seed, uint64_t row0)
{
#pragma omp parallel for schedule(static)
	for (int r = 0; r < R; r++)
		for (int n = 0; n < N; n++) {
			float *dst = out + (TEN(r) * N + n) * D;
			d2v_rng g;

			if (!mask[TEN(r) * N + n])
				continue;
			d2v_rng_seed(&g, seed, 0xdec0,
			    (row0 + (uint64_t)r) * (uint64_t)N + (uint64_t)n);
			for (int d = 0; d < D; d += 2) {
				double a, b;

				d2v_rng_normal2(&g, &a, &b);
				dst[d] = (float)(std * a);
				if (d + 1 < D)
					dst[d + 1] = (float)(std * b);
			}
		}
}

void
d2v_cpu_drop_fill(float *buf, int rows, size_t per, double p, double dp,
    uint64_t seed, uint64_t kind, uint64_t first)
{
	float keep = p > 0 ? (float)(1.0 / (1.0 - p)) : 1.0f;
	float kpath = dp > 0 ? (float)(1.0 / (1.0 - dp)) : 1.0f;
	size_t chunks = (per + D2V_DROP_CHUNK - 1) / D2V_DROP_CHUNK;

#pragma omp parallel for schedule(static)
	for (int r = 0; r < rows; r++) {
		float *row = buf + TEN(r) * per;
		float s = kpath, ks;
		d2v_rng g;

		if (dp > 0) {
			d2v_rng_seed(&g, seed, kind, first + (uint64_t)r);
			if (d2v_rng_uniform(&g) < dp)
				s = 0.0f;
		}
		ks = keep * s;
		for (size_t q = 0; q < chunks; q++) {
			size_t lo = q * D2V_DROP_CHUNK, hi = lo + D2V_DROP_CHUNK;

			if (hi > per)
				hi = per;
			if (!(p > 0)) {
				for (size_t i = lo; i < hi; i++)
					row[i] = ks;
				continue;
			}
			d2v_rng_seed(&g, seed, kind + ((uint64_t)(q + 1) << 40),
			    first + (uint64_t)r);
			for (size_t i = lo; i < hi; i++)
				row[i] = d2v_rng_uniform(&g) < p ? 0.0f : ks;
		}
	}
}

void
d2v_cpu_layerscale_forward(float *out, const float *g, const float *x,
    const float *s, int rows, int D)
{
#pragma omp parallel for schedule(static)
	for (int i = 0; i < rows; i++)
		for (int d = 0; d < D; d++) {
			size_t k = TEN(i) * D + d;

			out[k] += g[d] * (s ? x[k] * s[k] : x[k]);
		}
}

void
d2v_cpu_layerscale_backward(float *dx, float *dg, const float *dy,
    const float *g, const float *x, const float *s, int rows, int D)
{
#pragma omp parallel for schedule(static)
	for (int d = 0; d < D; d++) {
		double acc = 0;

		for (int i = 0; i < rows; i++) {
			size_t k = TEN(i) * D + d;

			acc += (double)dy[k] * (s ? x[k] * s[k] : x[k]);
		}
		dg[d] += (float)acc;
	}
#pragma omp parallel for schedule(static)
	for (int i = 0; i < rows; i++)
		for (int d = 0; d < D; d++) {
			size_t k = TEN(i) * D + d;

			dx[k] = s ? dy[k] * g[d] * s[k] : dy[k] * g[d];
		}
}

/* The loss of one error e: e^2 for beta 0, else Smooth-L1 with beta;
 * *g its derivative. */
static double
elem_loss(double e, double beta, double *g)
{
	double ae = fabs(e);

	if (beta > 0 && ae >= beta) {
		*g = e > 0 ? 1 : -1;
		return ae - 0.5 * beta;
	}
	if (beta > 0) {
		*g = e / beta;
		return 0.5 * e * e / beta;
	}
	*g = 2 * e;
	return e * e;
}

double
d2v_cpu_masked_loss(float *dp, const float *pred, const float *y,
    const uint8_t *mask, int R, int M, int N, int T, int off, int D,
    double w, double beta, double norm)
{
	double *part = malloc(TEN(R > 0 ? R : 1) * sizeof(double)); /* (R) */
	double loss = 0;
	int ok = part != NULL;

	memset(dp, 0, TEN(R) * T * D * sizeof(float));
	/* without memory for the parts, one thread adds them as it goes:
	 * the same order, the same sum */
#pragma omp parallel for schedule(static) if (ok)
	for (int r = 0; r < R; r++) {
		const float *yb = y + TEN(r / M) * N * D;
		double acc = 0;

		for (int n = 0; n < N; n++) {
			size_t at = (TEN(r) * T + off + n) * D;

			if (mask != NULL && !mask[TEN(r) * N + n])
				continue;
			for (int d = 0; d < D; d++) {
				double g, e = (double)pred[at + d] - yb[TEN(n) * D + d];

				acc += w * elem_loss(e, beta, &g);
				dp[at + d] = (float)(w * g / norm);
			}
		}
		if (ok)
			part[r] = acc;
		else
			loss += acc;
	}
	for (int r = 0; ok && r < R; r++)
		loss += part[r];
	free(part);
	return loss;
}

/* the sample standard deviation of dim d over masked_std's k rows */
static double
col_std(const float *x, const uint8_t *mask, int R, int N, int T, int off,
    int D, int d, long k)
{
	double s = 0, s2 = 0;

	for (int r = 0; r < R; r++)
		for (int n = 0; n < N; n++) {
			double v;

			if (mask != NULL && !mask[TEN(r) * N + n])
				continue;
			v = x[(TEN(r) * T + off + n) * D + d];
			s += v;
			s2 += v * v;
		}
	s /= k;
	return sqrt(fmax(s2 / k - s * s, 0) * k / (k - 1));
}

double
d2v_cpu_masked_std(const float *x, const uint8_t *mask, int R, int N, int T,
    int off, int D)
{
	double *part, acc = 0; /* part (D) */
	long k = 0;

	for (size_t i = 0; i < TEN(R) * N; i++)
		k += mask == NULL || mask[i];
	if (k < 2 || D < 1)
		return 0;
	part = malloc(TEN(D) * sizeof(double));
	/* without memory for the parts, one thread adds them as it goes */
#pragma omp parallel for schedule(static) if (part != NULL)
	for (int d = 0; d < D; d++) {
		double v = col_std(x, mask, R, N, T, off, D, d, k);

		if (part != NULL)
			part[d] = v;
		else
			acc += v;
	}
	for (int d = 0; part != NULL && d < D; d++)
		acc += part[d];
	free(part);
	return acc / D;
}

void
d2v_cpu_mean_tokens(float *out, const float *in, int B, int N, int D)
{
#pragma omp parallel for schedule(static)
	for (int b = 0; b < B; b++)
		for (int d = 0; d < D; d++) {
			double s = 0;

			for (int t = 0; t < N; t++)
				s += in[(TEN(b) * N + t) * D + d];
			out[TEN(b) * D + d] = (float)(s / N);
		}
}
