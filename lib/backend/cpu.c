/* cpu.c - the CPU backend (see ops.h).  GEMMs go to OpenBLAS and are never
 * called inside an OpenMP region, so the cores are not oversubscribed. */
#include "ops.h"
#include "rows.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conv_dnnl.h"
#include "gemm.h"

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_max_threads(void) { return 1; }
static int omp_get_thread_num(void) { return 0; }
#endif

int d2v_cpu_plain;
int d2v_cpu_conv_own;

/* 8 floats, one AVX register (two SSE ones without AVX); v8_load reads
 * one at any float's alignment */
typedef float v8f __attribute__((vector_size(32)));
typedef float v8fu __attribute__((vector_size(32), aligned(4)));
#define v8_load(p) (*(const v8fu *)(const void *)(p))

/* out (M,N) += b (N) on every row */
static void
add_bias(float *out, const float *b, int M, int N)
{
#pragma omp parallel for schedule(static)
	for (int i = 0; i < M; i++)
		for (int j = 0; j < N; j++)
			out[(size_t)i * N + j] += b[j];
}

/* db (N) += the column sums of dout (M,N): blocks of 64 columns, the rows
 * read in order (the plain twin walks each column down the rows) */
static void
bias_backward(float *db, const float *dout, int M, int N)
{
	if (d2v_cpu_plain) {
#pragma omp parallel for schedule(static)
		for (int j = 0; j < N; j++) {
			double s = 0;

			for (int i = 0; i < M; i++)
				s += dout[(size_t)i * N + j];
			db[j] += (float)s;
		}
		return;
	}
#pragma omp parallel for schedule(static)
	for (int j0 = 0; j0 < N; j0 += 64) {
		double acc[64] = {0};
		int n = N - j0 < 64 ? N - j0 : 64;

		for (int i = 0; i < M; i++) {
			const float *row = dout + (size_t)i * N + j0;

#pragma omp simd
			for (int j = 0; j < n; j++)
				acc[j] += row[j];
		}
		for (int j = 0; j < n; j++)
			db[j0 + j] += (float)acc[j];
	}
}

static void
matmul_forward(float *out, const float *in, const float *w, const float *b,
    int M, int K, int N)
{
	d2v_sgemm('N', 'T', M, N, K, 1.0f,
	    in, K, w, K, 0.0f, out, N);
	if (b != NULL)
		add_bias(out, b, M, N);
}

static void
matmul_backward(float *din, float *dw, float *db, const float *dout,
    const float *in, const float *w, int M, int K, int N)
{
	if (din != NULL)
		d2v_sgemm('N', 'N', M, K, N,
		    1.0f, dout, N, w, K, 1.0f, din, K);
	if (dw != NULL)
		d2v_sgemm('T', 'N', N, K, M,
		    1.0f, dout, N, in, K, 1.0f, dw, K);
	if (db != NULL)
		bias_backward(db, dout, M, N);
}

/* LayerNorm with the sums over a row in vector lanes of double (the plain
 * twin below adds them one by one): the same arithmetic in another
 * order. */
static void
layernorm_forward_simd(float *out, float *mean, float *rstd, const float *in,
    const float *w, const float *b, int rows, int C, float eps)
{
#pragma omp parallel for schedule(static)
	for (int i = 0; i < rows; i++) {
		const float *x = in + (size_t)i * C;
		float *y = out + (size_t)i * C;
		double m = 0, v = 0;
		float rs;

#pragma omp simd reduction(+:m)
		for (int c = 0; c < C; c++)
			m += x[c];
		m /= C;
#pragma omp simd reduction(+:v)
		for (int c = 0; c < C; c++)
			v += (x[c] - m) * (x[c] - m);
		v /= C;
		rs = (float)(1.0 / sqrt(v + eps));
		if (w) {
#pragma omp simd
			for (int c = 0; c < C; c++)
				y[c] = (float)(x[c] - m) * rs * w[c] + b[c];
		} else {
#pragma omp simd
			for (int c = 0; c < C; c++)
				y[c] = (float)(x[c] - m) * rs;
		}
		if (mean)
			mean[i] = (float)m;
		if (rstd)
			rstd[i] = rs;
	}
}

/* din of LayerNorm's backward, the row sums in vector lanes */
static void
layernorm_din_simd(float *din, const float *dout, const float *in,
    const float *mean, const float *rstd, const float *w, int rows, int C)
{
#pragma omp parallel for schedule(static)
	for (int i = 0; i < rows; i++) {
		const float *x = in + (size_t)i * C, *dy = dout + (size_t)i * C;
		float *dx = din + (size_t)i * C, mi = mean[i], ri = rstd[i];
		double a = 0, bsum = 0;
		float af, bf;

#pragma omp simd reduction(+:a, bsum)
		for (int c = 0; c < C; c++) {
			float xh = (x[c] - mi) * ri;
			float g = w ? dy[c] * w[c] : dy[c];

			a += g;
			bsum += g * xh;
		}
		af = (float)(a / C);
		bf = (float)(bsum / C);
#pragma omp simd
		for (int c = 0; c < C; c++) {
			float xh = (x[c] - mi) * ri;
			float g = w ? dy[c] * w[c] : dy[c];

			dx[c] += ri * (g - af - xh * bf);
		}
	}
}

static void
layernorm_forward(float *out, float *mean, float *rstd, const float *in,
    const float *w, const float *b, int rows, int C, float eps)
{
	if (!d2v_cpu_plain) {
		layernorm_forward_simd(out, mean, rstd, in, w, b, rows, C, eps);
		return;
	}
#pragma omp parallel for schedule(static)
	for (int i = 0; i < rows; i++) {
		const float *x = in + (size_t)i * C;
		float *y = out + (size_t)i * C;
		double m = 0, v = 0;
		float rs;

		for (int c = 0; c < C; c++)
			m += x[c];
		m /= C;
		for (int c = 0; c < C; c++)
			v += (x[c] - m) * (x[c] - m);
		v /= C;
		rs = (float)(1.0 / sqrt(v + eps));
		for (int c = 0; c < C; c++) {
			float n = (float)(x[c] - m) * rs;

			y[c] = w ? n * w[c] + b[c] : n;
		}
		if (mean)
			mean[i] = (float)m;
		if (rstd)
			rstd[i] = rs;
	}
}

static void
layernorm_backward(float *din, float *dw, float *db, const float *dout,
    const float *in, const float *mean, const float *rstd, const float *w,
    int rows, int C)
{
	if (din != NULL && !d2v_cpu_plain) {
		layernorm_din_simd(din, dout, in, mean, rstd, w, rows, C);
	} else if (din != NULL) {
#pragma omp parallel for schedule(static)
		for (int i = 0; i < rows; i++) {
			const float *x = in + (size_t)i * C, *dy = dout + (size_t)i * C;
			float *dx = din + (size_t)i * C;
			double a = 0, bsum = 0;

			for (int c = 0; c < C; c++) {
				float xh = (x[c] - mean[i]) * rstd[i];
				float g = w ? dy[c] * w[c] : dy[c];

				a += g;
				bsum += g * xh;
			}
			a /= C;
			bsum /= C;
			for (int c = 0; c < C; c++) {
				float xh = (x[c] - mean[i]) * rstd[i];
				float g = w ? dy[c] * w[c] : dy[c];

				dx[c] += rstd[i] * (g - (float)a - xh * (float)bsum);
			}
		}
	}
	if ((dw != NULL || db != NULL) && d2v_cpu_plain) {
#pragma omp parallel for schedule(static)
		for (int c = 0; c < C; c++) {
			double sw = 0, sb = 0;

			for (int i = 0; i < rows; i++) {
				float dy = dout[(size_t)i * C + c];

				sw += dy * (in[(size_t)i * C + c] - mean[i]) * rstd[i];
				sb += dy;
			}
			if (dw)
				dw[c] += (float)sw;
			if (db)
				db[c] += (float)sb;
		}
	} else if (dw != NULL || db != NULL) {
		/* blocks of 64 channels, the rows read in order */
#pragma omp parallel for schedule(static)
		for (int c0 = 0; c0 < C; c0 += 64) {
			double sw[64] = {0}, sb[64] = {0};
			int n = C - c0 < 64 ? C - c0 : 64;

			for (int i = 0; i < rows; i++) {
				const float *dy = dout + (size_t)i * C + c0;
				const float *x = in + (size_t)i * C + c0;
				float m = mean[i], rs = rstd[i];

#pragma omp simd
				for (int c = 0; c < n; c++) {
					sw[c] += dy[c] * ((x[c] - m) * rs);
					sb[c] += dy[c];
				}
			}
			for (int c = 0; c < n; c++) {
				if (dw)
					dw[c0 + c] += (float)sw[c];
				if (db)
					db[c0 + c] += (float)sb[c];
			}
		}
	}
}

/*
 * exp and the normal CDF in plain arithmetic, so that the GELU loops
 * vectorise (libm's erff and expf are scalar calls): exp by Cephes' expf
 * (range reduction by ln 2 in two parts, a degree-5 polynomial, the
 * exponent set by bits; relative error about 1e-7), erfc by the Chebyshev
 * fit of Numerical Recipes' erfcc (fractional error below 1.2e-7).  Their
 * plain twins are libm's, used under d2v_cpu_plain; test_ops compares
 * the two over [-12, 12].
 */
static inline float
vexpf(float x)
{
	float fx, z, y;
	int32_t n;
	union { int32_t i; float f; } u;

	x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
	fx = floorf(x * 1.44269504088896341f + 0.5f);
	x -= fx * 0.693359375f;
	x -= fx * -2.12194440e-4f;
	z = x * x;
	y = 1.9875691500e-4f;
	y = y * x + 1.3981999507e-3f;
	y = y * x + 8.3334519073e-3f;
	y = y * x + 4.1665795894e-2f;
	y = y * x + 1.6666665459e-1f;
	y = y * x + 5.0000001201e-1f;
	y = y * z + x + 1.0f;
	n = (int32_t)fx;
	u.i = (n + 127) << 23;
	return y * u.f;
}

/* 0.5 (1 + erf(x / sqrt 2)), and the normal density at x in *pdf */
static inline float
vcdf(float x, float *pdf)
{
	float z = fabsf(x) * (float)M_SQRT1_2, t = 1.0f / (1.0f + 0.5f * z);
	float p = -1.26551223f + t * (1.00002368f + t * (0.37409196f +
	    t * (0.09678418f + t * (-0.18628806f + t * (0.27886807f +
	    t * (-1.13520398f + t * (1.48851587f + t * (-0.82215223f +
	    t * 0.17087277f))))))));
	float ez = vexpf(-z * z);
	float half_erfc = 0.5f * t * ez * vexpf(p);

	*pdf = 0.3989422804014327f * ez;
	return x >= 0 ? 1.0f - half_erfc : half_erfc;
}

/* vcdf without the density: erfc's two exponentials in one */
static inline float
vcdf1(float x)
{
	float z = fabsf(x) * (float)M_SQRT1_2, t = 1.0f / (1.0f + 0.5f * z);
	float p = -1.26551223f + t * (1.00002368f + t * (0.37409196f +
	    t * (0.09678418f + t * (-0.18628806f + t * (0.27886807f +
	    t * (-1.13520398f + t * (1.48851587f + t * (-0.82215223f +
	    t * 0.17087277f))))))));
	float half_erfc = 0.5f * t * vexpf(p - z * z);

	return x >= 0 ? 1.0f - half_erfc : half_erfc;
}

static void
gelu_forward(float *out, const float *in, size_t n)
{
	if (d2v_cpu_plain) {
#pragma omp parallel for schedule(static)
		for (size_t i = 0; i < n; i++)
			out[i] = 0.5f * in[i] * (1.0f + erff(in[i] * (float)M_SQRT1_2));
		return;
	}
#pragma omp parallel for simd schedule(static)
	for (size_t i = 0; i < n; i++)
		out[i] = in[i] * vcdf1(in[i]);
}

static void
gelu_backward(float *din, const float *in, const float *dout, size_t n)
{
	const float k = (float)(1.0 / sqrt(2.0 * M_PI));

	if (d2v_cpu_plain) {
#pragma omp parallel for schedule(static)
		for (size_t i = 0; i < n; i++) {
			float x = in[i];
			float cdf = 0.5f * (1.0f + erff(x * (float)M_SQRT1_2));

			din[i] += dout[i] * (cdf + x * k * expf(-0.5f * x * x));
		}
		return;
	}
#pragma omp parallel for simd schedule(static)
	for (size_t i = 0; i < n; i++) {
		float pdf, cdf = vcdf(in[i], &pdf);

		din[i] += dout[i] * (cdf + in[i] * pdf);
	}
}

static void
attention_forward_plain(float *out, float *probs, const float *qkv,
    const float *drop, const float *slope, const int *pos, int R, int T,
    int D, int H)
{
	int hd = D / H;
	float scale = 1.0f / sqrtf((float)hd);

#pragma omp parallel for collapse(2) schedule(static)
	for (int r = 0; r < R; r++) {
		for (int h = 0; h < H; h++) {
			const float *base = qkv + (size_t)r * T * 3 * D;
			float *P = probs + ((size_t)r * H + h) * T * T;

			for (int i = 0; i < T; i++) {
				const float *q = base + (size_t)i * 3 * D + h * hd;
				float *p = P + (size_t)i * T, mx = -INFINITY, s = 0;
				float *o = out + ((size_t)r * T + i) * D + h * hd;
				const float *dm = drop ? drop + ((size_t)r * H + h) * T * T +
				    (size_t)i * T : NULL;
				const int *ps = slope ? pos + (size_t)r * T : NULL;

				for (int j = 0; j < T; j++) {
					const float *k = base + (size_t)j * 3 * D + D + h * hd;
					float d = 0;

#pragma omp simd reduction(+:d)
					for (int e = 0; e < hd; e++)
						d += q[e] * k[e];
					p[j] = d * scale;
					if (ps)
						p[j] -= slope[h] * (float)abs(ps[i] - ps[j]);
					mx = p[j] > mx ? p[j] : mx;
				}
				for (int j = 0; j < T; j++) {
					p[j] = expf(p[j] - mx);
					s += p[j];
				}
				for (int j = 0; j < T; j++)
					p[j] /= s;
				memset(o, 0, sizeof(float) * (size_t)hd);
				for (int j = 0; j < T; j++) {
					const float *v = base + (size_t)j * 3 * D + 2 * D + h * hd;
					float pj = dm ? p[j] * dm[j] : p[j];

#pragma omp simd
					for (int e = 0; e < hd; e++)
						o[e] += pj * v[e];
				}
			}
		}
	}
}

static void
attention_backward_plain(float *dqkv, float *dslope, const float *dout,
    const float *qkv, const float *probs, const float *drop, const int *pos,
    int R, int T, int D, int H)
{
	int hd = D / H;
	float scale = 1.0f / sqrtf((float)hd);

#pragma omp parallel
	{
		float *dp = malloc(sizeof(float) * (size_t)T);

#pragma omp for collapse(2) schedule(static)
		for (int r = 0; r < R; r++) {
			for (int h = 0; h < H; h++) {
				const float *base = qkv + (size_t)r * T * 3 * D;
				float *dbase = dqkv + (size_t)r * T * 3 * D;
				const float *P = probs + ((size_t)r * H + h) * T * T;
				const int *ps = pos ? pos + (size_t)r * T : NULL;
				double gs = 0;

				for (int i = 0; i < T; i++) {
					const float *p = P + (size_t)i * T;
					const float *dm = drop ? drop + ((size_t)r * H + h) *
					    T * T + (size_t)i * T : NULL;
					const float *go = dout + ((size_t)r * T + i) * D + h * hd;
					const float *q = base + (size_t)i * 3 * D + h * hd;
					float *dq = dbase + (size_t)i * 3 * D + h * hd;
					float dot = 0;

					for (int j = 0; j < T; j++) {
						const float *v = base + (size_t)j * 3 * D + 2 * D + h * hd;
						float *dv = dbase + (size_t)j * 3 * D + 2 * D + h * hd;
						float d = 0, pj = dm ? p[j] * dm[j] : p[j];

#pragma omp simd reduction(+:d)
						for (int e = 0; e < hd; e++) {
							d += go[e] * v[e];
							dv[e] += pj * go[e];
						}
						if (dm)
							d *= dm[j];
						dp[j] = d;
						dot += p[j] * d;
					}
					for (int j = 0; j < T; j++) {
						const float *k = base + (size_t)j * 3 * D + D + h * hd;
						float *dk = dbase + (size_t)j * 3 * D + D + h * hd;
						float dl = p[j] * (dp[j] - dot);
						float ds = dl * scale;

						if (ps)
							gs -= (double)dl * abs(ps[i] - ps[j]);
#pragma omp simd
						for (int e = 0; e < hd; e++) {
							dq[e] += ds * k[e];
							dk[e] += ds * q[e];
						}
					}
				}
				if (ps && dslope) {
#pragma omp atomic
					dslope[h] += (float)gs;
				}
			}
		}
		free(dp);
	}
}

/*
 * The attention kernels above are the plain twins.  These compute the
 * same thing as four GEMMs per head (scores, mix; backward: the
 * probabilities' and the values' gradients, then those of the queries and
 * keys), each on one thread, the heads of all sequences shared among the
 * threads; the queries, keys and values are read in place from qkv (a
 * leading dimension of 3D).  The softmax between them is row by row with
 * the vectorised exp.  Where the GEMM engine cannot run inside a parallel
 * region (gemm.h) the plain loops run instead.
 */
static void
softmax_rows(float *P, const float *slope, const int *ps, int h, int T)
{
	for (int i = 0; i < T; i++) {
		float *p = P + (size_t)i * T, mx = -INFINITY, sum = 0;

		if (ps) {
			float sl = slope[h];
			int pi = ps[i];

#pragma omp simd
			for (int j = 0; j < T; j++)
				p[j] -= sl * (float)abs(pi - ps[j]);
		}
#pragma omp simd reduction(max:mx)
		for (int j = 0; j < T; j++)
			mx = p[j] > mx ? p[j] : mx;
#pragma omp simd reduction(+:sum)
		for (int j = 0; j < T; j++) {
			p[j] = vexpf(p[j] - mx);
			sum += p[j];
		}
		sum = 1.0f / sum;
#pragma omp simd
		for (int j = 0; j < T; j++)
			p[j] *= sum;
	}
}

static void
attention_forward(float *out, float *probs, const float *qkv,
    const float *drop, const float *slope, const int *pos, int R, int T,
    int D, int H)
{
	int hd = D / H, ld = 3 * D, nt = omp_get_max_threads();
	float scale = 1.0f / sqrtf((float)hd);
	float *buf = NULL; /* per thread: the probabilities after dropout */

	if (!d2v_cpu_plain && d2v_sgemm_nests() && drop)
		buf = malloc(sizeof(float) * (size_t)nt * T * T);
	if (d2v_cpu_plain || !d2v_sgemm_nests() || (drop && buf == NULL)) {
		attention_forward_plain(out, probs, qkv, drop, slope, pos, R, T, D, H);
		return;
	}
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
	for (int r = 0; r < R; r++) {
		for (int h = 0; h < H; h++) {
			const float *base = qkv + (size_t)r * T * ld + h * hd;
			float *P = probs + ((size_t)r * H + h) * T * T;
			const float *Pm = P;

			/* P (T,T) = scale q k^T */
			d2v_sgemm('N', 'T', T, T, hd, scale, base, ld, base + D, ld,
			    0.0f, P, T);
			softmax_rows(P, slope, slope ? pos + (size_t)r * T : NULL, h, T);
			if (drop) {
				const float *dm = drop + ((size_t)r * H + h) * T * T;
				float *pd = buf + (size_t)omp_get_thread_num() * T * T;

#pragma omp simd
				for (size_t j = 0; j < (size_t)T * T; j++)
					pd[j] = P[j] * dm[j];
				Pm = pd;
			}
			/* out (T,hd) = Pm v */
			d2v_sgemm('N', 'N', T, hd, T, 1.0f, Pm, T, base + 2 * D, ld,
			    0.0f, out + (size_t)r * T * D + h * hd, D);
		}
	}
	free(buf);
}

static void
attention_backward(float *dqkv, float *dslope, const float *dout,
    const float *qkv, const float *probs, const float *drop, const int *pos,
    int R, int T, int D, int H)
{
	int hd = D / H, ld = 3 * D, nt = omp_get_max_threads();
	int per = drop ? 2 : 1;
	float scale = 1.0f / sqrtf((float)hd);
	float *buf = NULL; /* per thread: dS (T,T), and P after dropout */

	if (!d2v_cpu_plain && d2v_sgemm_nests())
		buf = malloc(sizeof(float) * (size_t)nt * per * T * T);
	if (buf == NULL) { /* the plain twin, or out of memory */
		attention_backward_plain(dqkv, dslope, dout, qkv, probs, drop, pos, R,
		    T, D, H);
		return;
	}
#pragma omp parallel num_threads(nt)
	{
		float *dS = buf + (size_t)omp_get_thread_num() * per * T * T;
		float *pd = dS + (size_t)T * T;

#pragma omp for collapse(2) schedule(static)
		for (int r = 0; r < R; r++) {
			for (int h = 0; h < H; h++) {
				const float *base = qkv + (size_t)r * T * ld + h * hd;
				float *dbase = dqkv + (size_t)r * T * ld + h * hd;
				const float *P = probs + ((size_t)r * H + h) * T * T;
				const float *dm = drop ? drop + ((size_t)r * H + h) * T * T :
				    NULL;
				const float *go = dout + (size_t)r * T * D + h * hd;
				const int *ps = pos ? pos + (size_t)r * T : NULL;
				const float *Pm = P;
				double gs = 0;

				if (dm) {
#pragma omp simd
					for (size_t j = 0; j < (size_t)T * T; j++)
						pd[j] = P[j] * dm[j];
					Pm = pd;
				}
				/* dS = dPm = go v^T; dv += Pm^T go */
				d2v_sgemm('N', 'T', T, T, hd, 1.0f, go, D, base + 2 * D, ld,
				    0.0f, dS, T);
				d2v_sgemm('T', 'N', T, hd, T, 1.0f, Pm, T, go, D, 1.0f,
				    dbase + 2 * D, ld);
				for (int i = 0; i < T; i++) {
					const float *p = P + (size_t)i * T;
					float *d = dS + (size_t)i * T, dot = 0;

					if (dm) {
						const float *mi = dm + (size_t)i * T;

#pragma omp simd
						for (int j = 0; j < T; j++)
							d[j] *= mi[j];
					}
#pragma omp simd reduction(+:dot)
					for (int j = 0; j < T; j++)
						dot += p[j] * d[j];
					if (ps) {
						double g = 0;

						for (int j = 0; j < T; j++) {
							float dl = p[j] * (d[j] - dot);

							g += (double)dl * abs(ps[i] - ps[j]);
							d[j] = dl * scale;
						}
						gs -= g;
					} else {
#pragma omp simd
						for (int j = 0; j < T; j++)
							d[j] = p[j] * (d[j] - dot) * scale;
					}
				}
				/* dq += dS k; dk += dS^T q */
				d2v_sgemm('N', 'N', T, hd, T, 1.0f, dS, T, base + D, ld, 1.0f,
				    dbase, ld);
				d2v_sgemm('T', 'N', T, hd, T, 1.0f, dS, T, base, ld, 1.0f,
				    dbase + D, ld);
				if (ps && dslope) {
#pragma omp atomic
					dslope[h] += (float)gs;
				}
			}
		}
	}
	free(buf);
}

/*
 * Grouped convolution by im2col and one GEMM per group, channels-last, for
 * both the 2-D ('same' padding, stride 1) and the 1-D (stride, padding)
 * ops: a 1-D convolution is a 2-D one of height 1 and kernel height 1.
 */
typedef d2v_conv_geom conv_geom; /* conv_dnnl.h */

/* col ((R*Ho*Wo), Cg*kh*kw) for group g of in (R, Hi*Wi, Ci). */
static void
im2col(float *col, const float *in, const conv_geom *c, int g)
{
	int Cg = c->Ci / c->G, Kc = Cg * c->kh * c->kw;

#pragma omp parallel for collapse(2) schedule(static)
	for (int r = 0; r < c->R; r++) {
		for (int y = 0; y < c->Ho; y++) {
			for (int x = 0; x < c->Wo; x++) {
				float *o = col + (((size_t)r * c->Ho + y) * c->Wo + x) * Kc;

				for (int ci = 0; ci < Cg; ci++) {
					for (int ky = 0; ky < c->kh; ky++) {
						int sy = y * c->st + ky - c->ph;

						for (int kx = 0; kx < c->kw; kx++) {
							int sx = x * c->st + kx - c->pw;

							*o++ = (sy < 0 || sy >= c->Hi || sx < 0 ||
							    sx >= c->Wi) ? 0.0f : in[(((size_t)r *
							    c->Hi + sy) * c->Wi + sx) * c->Ci +
							    g * Cg + ci];
						}
					}
				}
			}
		}
	}
}

/* din (R, Hi*Wi, Ci) += the columns of group g scattered back. */
static void
col2im_add(float *din, const float *col, const conv_geom *c, int g)
{
	int Cg = c->Ci / c->G;

	/* one thread per sequence: neighbouring outputs share inputs */
#pragma omp parallel for schedule(static)
	for (int r = 0; r < c->R; r++) {
		const float *o = col + (size_t)r * c->Ho * c->Wo * Cg * c->kh * c->kw;

		for (int y = 0; y < c->Ho; y++) {
			for (int x = 0; x < c->Wo; x++) {
				for (int ci = 0; ci < Cg; ci++) {
					for (int ky = 0; ky < c->kh; ky++) {
						int sy = y * c->st + ky - c->ph;

						for (int kx = 0; kx < c->kw; kx++, o++) {
							int sx = x * c->st + kx - c->pw;

							if (sy >= 0 && sy < c->Hi && sx >= 0 &&
							    sx < c->Wi)
								din[(((size_t)r * c->Hi + sy) * c->Wi +
								    sx) * c->Ci + g * Cg + ci] += *o;
						}
					}
				}
			}
		}
	}
}

/*
 * The direct path, for stride-1 'same' convolutions (the decoders, the
 * audio position encoder): no im2col.  The input is copied channel-first
 * and zero-padded, xp (Ci, R, Hp, Wp) with Hp = Ho + kh - 1 and Wp =
 * round8(Wo) + kw - 1, so that 8 neighbouring outputs of one channel read
 * one contiguous vector per tap; the weights are packed per group in
 * blocks of 8 output channels, and each block's 8 accumulators of 8
 * outputs stay in registers.  The backward of the input is the same
 * kernel over the padded output gradient with the kernel flipped and the
 * channel roles swapped; the weight gradient is dot products of the
 * padded gradient with shifted input rows.  The im2col path above is the
 * plain twin; tests/unit/test_ops.c holds them to each other.
 */
#define OB 8 /* output channels per register block */


static int
direct_ok(const conv_geom *c)
{
	return c->st == 1 && c->Ho == c->Hi && c->Wo == c->Wi &&
	    c->kh == 2 * c->ph + 1 && c->kw == 2 * c->pw + 1;
}

static int
round8(int n)
{
	return (n + 7) / 8 * 8;
}

/* Floats of the padded channel-first copy of C channels. */
static size_t
cf_size(const conv_geom *c, int C)
{
	return (size_t)C * c->R * (c->Ho + c->kh - 1) *
	    (round8(c->Wo) + c->kw - 1);
}

/* Floats of one packed weight set: G groups of ceil(On/8) blocks of
 * (Cn, kh, kw, 8). */
static size_t
pack_size(const conv_geom *c, int On, int Cn)
{
	return (size_t)c->G * ((On + OB - 1) / OB) * OB * Cn * c->kh * c->kw;
}

size_t
d2v_conv_scratch(int R, int Hh, int Ww, int Ci, int Co, int kh, int kw,
    int G)
{
	conv_geom c = {.R = R, .Hi = Hh, .Wi = Ww, .Ho = Hh, .Wo = Ww, .Ci = Ci,
	    .Co = Co, .G = G, .kh = kh, .kw = kw, .st = 1, .ph = kh / 2,
	    .pw = kw / 2};
	int Cg = Ci / G, Og = Co / G;
	size_t a = cf_size(&c, Ci) + pack_size(&c, Og, Cg);
	size_t b = cf_size(&c, Co) + pack_size(&c, Cg, Og);
	size_t im = (size_t)R * Hh * Ww * Cg * kh * kw;

	a = a > b ? a : b;
	return a > im ? a : im;
}

/* xp (C, R, Hp, Wp) = in (R, Ho, Wo, C) channel-first, zero-padded by
 * (ph, pw) before and up to Hp, Wp after.  16 channels of one input at a
 * time: each input position's 16 floats (a cache line) are read once and
 * go to 16 output rows. */
static void
to_cf(float *xp, const float *in, const conv_geom *c, int C)
{
	int Hp = c->Ho + c->kh - 1, Wp = round8(c->Wo) + c->kw - 1;
	int ncb = (C + 15) / 16;

#pragma omp parallel for collapse(2) schedule(static)
	for (int r = 0; r < c->R; r++) {
		for (int cb = 0; cb < ncb; cb++) {
			int c0 = cb * 16, nk = C - c0 < 16 ? C - c0 : 16;
			float *d[16];

			for (int k = 0; k < nk; k++) {
				d[k] = xp + ((size_t)(c0 + k) * c->R + r) * Hp * Wp;
				memset(d[k], 0, sizeof(float) * (size_t)Hp * Wp);
			}
			for (int y = 0; y < c->Ho; y++)
				for (int x = 0; x < c->Wo; x++) {
					const float *s = in + (((size_t)r * c->Ho + y) *
					    c->Wo + x) * C + c0;
					size_t at = (size_t)(y + c->ph) * Wp + x + c->pw;

					for (int k = 0; k < nk; k++)
						d[k][at] = s[k];
				}
		}
	}
}

/*
 * wt: per group, blocks of 8 "output" channels j of On, each (Cn, kh, kw,
 * 8), zero past On: wt = w[o][ci][t] for the forward (output o of On =
 * Og, input ci of Cn = Cg); for the input gradient (flip) the output is ci
 * (On = Cg), the input o (Cn = Og) and the taps reversed.
 */
static void
pack_w(float *wt, const float *w, const conv_geom *c, int flip)
{
	int Cg = c->Ci / c->G, Og = c->Co / c->G, K2 = c->kh * c->kw;
	int On = flip ? Cg : Og, Cn = flip ? Og : Cg, nb = (On + OB - 1) / OB;

	for (int g = 0; g < c->G; g++)
		for (int bl = 0; bl < nb; bl++)
			for (int i = 0; i < Cn; i++)
				for (int t = 0; t < K2; t++)
					for (int j = 0; j < OB; j++) {
						int on = bl * OB + j;
						float v = 0;

						if (on < On)
							v = flip ? w[((size_t)(g * Og + i) * Cg + on) *
							    K2 + (K2 - 1 - t)] : w[((size_t)(g * Og +
							    on) * Cg + i) * K2 + t];
						wt[((((size_t)g * nb + bl) * Cn + i) * K2 + t) * OB +
						    j] = v;
					}
}

/* ns (1 or 2, a constant where inlined) blocks of 8 neighbouring outputs
 * by 4 output channels: a[s][j] += the taps of Cn input channels, the
 * rows at row (Cn of them, rs floats apart), the weights wk (Cn, K2, OB)
 * from lane j0.  Each input vector serves 4 products, each weight 2. */
static inline __attribute__((always_inline)) void
cf_block(v8f a[2][4], const float *row, size_t rs, const float *wk, int Cn,
    int kh, int kw, int Wp, int ns)
{
	int K2 = kh * kw;

	for (int i = 0; i < Cn; i++) {
		const float *ri = row + (size_t)i * rs;
		const float *wi = wk + (size_t)i * K2 * OB;

		for (int ky = 0; ky < kh; ky++)
			for (int kx = 0; kx < kw; kx++) {
				const float *p = ri + (size_t)ky * Wp + kx;
				const float *w = wi + (ky * kw + kx) * OB;
				v8f v0 = v8_load(p), v1 = ns > 1 ? v8_load(p + 8) : v0;

				for (int j = 0; j < 4; j++) {
					a[0][j] += v0 * w[j];
					if (ns > 1)
						a[1][j] += v1 * w[j];
				}
			}
	}
}

/* out (R, Ho, Wo, G*On) = (or += with acc) b + the convolution of xp
 * (G*Cn, R, Hp, Wp) with wt (pack_w): two blocks of 8 outputs along a row
 * by half a block of output channels at a time (cf_block). */
static void
conv_cf(float *out, const float *xp, const float *wt, const float *b,
    const conv_geom *c, int Cn, int On, int acc)
{
	int G = c->G, H = c->Ho, W = c->Wo, kh = c->kh, kw = c->kw;
	int Hp = H + kh - 1, Wp = round8(W) + kw - 1, K2 = kh * kw;
	int nb = (On + OB - 1) / OB, Wv = round8(W) / 8, Co = G * On;
	size_t rs = (size_t)c->R * Hp * Wp; /* one input channel's floats */

#pragma omp parallel for collapse(3) schedule(static)
	for (int r = 0; r < c->R; r++) {
		for (int y = 0; y < H; y++) {
			for (int g = 0; g < G; g++) {
				for (int bl = 0; bl < nb; bl++) {
					const float *wb = wt + ((size_t)g * nb + bl) * Cn * K2 * OB;
					int o0 = g * On + bl * OB, n = On - bl * OB;

					n = n < OB ? n : OB;
					for (int xb = 0; xb < Wv; xb += 2) {
						int ns = Wv - xb < 2 ? 1 : 2;
						const float *row = xp + (((size_t)g * Cn * c->R + r) *
						    Hp + y) * Wp + xb * 8;

						for (int j0 = 0; j0 < n; j0 += 4) {
							v8f a[2][4];

							for (int j = 0; j < 4; j++) {
								float bj = b != NULL && j0 + j < n ?
								    b[o0 + j0 + j] : 0.0f;

								a[0][j] = a[1][j] = (v8f){bj, bj, bj, bj,
								    bj, bj, bj, bj};
							}
							if (ns == 2)
								cf_block(a, row, rs, wb + j0, Cn, kh, kw,
								    Wp, 2);
							else
								cf_block(a, row, rs, wb + j0, Cn, kh, kw,
								    Wp, 1);
							for (int s = 0; s < ns; s++)
								for (int l = 0; l < 8 &&
								    (xb + s) * 8 + l < W; l++) {
									float *o = out + (((size_t)r * H + y) *
									    W + (xb + s) * 8 + l) * Co + o0 + j0;

									for (int j = 0; j < 4 && j0 + j < n; j++)
										o[j] = acc ? o[j] + a[s][j][l] :
										    a[s][j][l];
								}
						}
					}
				}
			}
		}
	}
}

/* Four output channels' gradient rows against three shifted input rows:
 * a[q][j] += d[q] . x shifted by j, for j < nk, over Wv blocks of 8 (nk
 * a constant where this is inlined, so the loop has no branch). */
static inline __attribute__((always_inline)) void
dw_rows(v8f a[4][3], const float *const d[4], const float *x, int Wv,
    int nk)
{
	for (int xb = 0; xb < Wv; xb++) {
		v8f x0 = v8_load(x + xb * 8);
		v8f x1 = nk > 1 ? v8_load(x + xb * 8 + 1) : x0;
		v8f x2 = nk > 2 ? v8_load(x + xb * 8 + 2) : x0;

		for (int q = 0; q < 4; q++) {
			v8f dv = v8_load(d[q] + xb * 8);

			a[q][0] += dv * x0;
			if (nk > 1)
				a[q][1] += dv * x1;
			if (nk > 2)
				a[q][2] += dv * x2;
		}
	}
}

/* dw (Co, Cg, kh, kw) += the gradient: dp (Co, R, Hp, Wp) the padded
 * output gradient (zero past Wo), xp the padded input.  Four output
 * channels of a group by three taps of a kernel row in registers, so that
 * each input vector read serves four products (a group with fewer than
 * four left repeats its last channel and drops the copies). */
static void
conv_cf_dw(float *dw, const float *dp, const float *xp, const conv_geom *c)
{
	int G = c->G, Cg = c->Ci / G, Og = c->Co / G, H = c->Ho;
	int kh = c->kh, kw = c->kw, Hp = H + kh - 1;
	int Wp = round8(c->Wo) + kw - 1, Wv = round8(c->Wo) / 8;
	int nob = (Og + 3) / 4; /* blocks of 4 outputs per group */

#pragma omp parallel for collapse(2) schedule(dynamic, 1)
	for (int gb = 0; gb < G * nob; gb++) {
		for (int ci = 0; ci < Cg; ci++) {
			int g = gb / nob, o0 = g * Og + gb % nob * 4;
			int nq = g * Og + Og - o0 < 4 ? g * Og + Og - o0 : 4;

			for (int ky = 0; ky < kh; ky++) {
				for (int k0 = 0; k0 < kw; k0 += 3) {
					v8f a[4][3] = {{{0}}};
					int nk = kw - k0 < 3 ? kw - k0 : 3;

					for (int r = 0; r < c->R; r++)
						for (int y = 0; y < H; y++) {
							const float *x = xp + (((size_t)(g * Cg + ci) *
							    c->R + r) * Hp + y + ky) * Wp + k0;
							const float *d[4];

							for (int q = 0; q < 4; q++)
								d[q] = dp + (((size_t)(o0 + (q < nq ? q :
								    nq - 1)) * c->R + r) * Hp + y +
								    c->ph) * Wp + c->pw;
							if (nk == 3)
								dw_rows(a, d, x, Wv, 3);
							else if (nk == 2)
								dw_rows(a, d, x, Wv, 2);
							else
								dw_rows(a, d, x, Wv, 1);
						}
					for (int q = 0; q < nq; q++)
						for (int j = 0; j < nk; j++) {
							float s = 0;

							for (int l = 0; l < 8; l++)
								s += a[q][j][l];
							dw[(((size_t)(o0 + q) * Cg + ci) * kh + ky) *
							    kw + k0 + j] += s;
						}
				}
			}
		}
	}
}

static void
direct_forward(float *out, float *col, const float *in, const float *w,
    const float *b, const conv_geom *c)
{
	float *xp = col, *wt = col + cf_size(c, c->Ci);

	to_cf(xp, in, c, c->Ci);
	pack_w(wt, w, c, 0);
	conv_cf(out, xp, wt, b, c, c->Ci / c->G, c->Co / c->G, 0);
}

static void
direct_backward(float *din, float *dw, float *db, float *col, float *dcol,
    const float *dout, const float *in, const float *w, const conv_geom *c)
{
	float *dp = dcol, *wt = dcol + cf_size(c, c->Co);

	to_cf(dp, dout, c, c->Co);
	if (dw != NULL) {
		to_cf(col, in, c, c->Ci);
		conv_cf_dw(dw, dp, col, c);
	}
	if (din != NULL) {
		pack_w(wt, w, c, 1);
		conv_cf(din, dp, wt, NULL, c, c->Co / c->G, c->Ci / c->G, 1);
	}
	if (db != NULL)
		bias_backward(db, dout, c->R * c->Ho * c->Wo, c->Co);
}

/* The im2col path: any stride and padding, and the twin of the direct
 * one. */
static void
im2col_forward(float *out, float *col, const float *in, const float *w,
    const float *b, const conv_geom *c)
{
	int Cog = c->Co / c->G, Kc = c->Ci / c->G * c->kh * c->kw;
	int M = c->R * c->Ho * c->Wo;

	for (int g = 0; g < c->G; g++) {
		im2col(col, in, c, g);
		d2v_sgemm('N', 'T', M, Cog, Kc,
		    1.0f, col, Kc, w + (size_t)g * Cog * Kc, Kc, 0.0f,
		    out + g * Cog, c->Co);
	}
	if (b != NULL)
		add_bias(out, b, M, c->Co);
}

static void
im2col_backward(float *din, float *dw, float *db, float *col, float *dcol,
    const float *dout, const float *in, const float *w, const conv_geom *c)
{
	int Cog = c->Co / c->G, Kc = c->Ci / c->G * c->kh * c->kw;
	int M = c->R * c->Ho * c->Wo;

	for (int g = 0; g < c->G; g++) {
		if (dw != NULL) {
			im2col(col, in, c, g);
			d2v_sgemm('T', 'N', Cog, Kc,
			    M, 1.0f, dout + g * Cog, c->Co, col, Kc, 1.0f,
			    dw + (size_t)g * Cog * Kc, Kc);
		}
		if (din != NULL) {
			d2v_sgemm('N', 'N', M, Kc,
			    Cog, 1.0f, dout + g * Cog, c->Co, w + (size_t)g * Cog * Kc,
			    Kc, 0.0f, dcol, Kc);
			col2im_add(din, dcol, c, g);
		}
	}
	if (db != NULL)
		bias_backward(db, dout, M, c->Co);
}


/*
 * The tap path, for ungrouped unpadded 1-D convolutions of many input
 * channels (the audio feature encoder): channels-last, the inputs of tap
 * kx of all outputs of a sequence are the rows kx, kx + s, kx + 2s...,
 * a matrix with leading dimension s*Ci that BLAS reads in place.  The
 * convolution is k GEMMs per sequence against the weights of one tap,
 * packed (k, Co, Ci) into col; no im2col buffer.
 */
static int
taps_ok(const conv_geom *c)
{
	return c->G == 1 && c->kh == 1 && c->pw == 0 && c->Hi == 1 &&
	    c->Ci >= 32;
}

/* wk (k, Co, Ci) = w (Co, Ci, k) by tap */
static void
pack_taps(float *wk, const float *w, const conv_geom *c)
{
	int k = c->kw, Co = c->Co, Ci = c->Ci;

#pragma omp parallel for schedule(static)
	for (int o = 0; o < Co; o++)
		for (int i = 0; i < Ci; i++)
			for (int t = 0; t < k; t++)
				wk[((size_t)t * Co + o) * Ci + i] = w[((size_t)o * Ci + i) * k + t];
}

static void
taps_forward(float *out, float *col, const float *in, const float *w,
    const float *b, const conv_geom *c)
{
	int k = c->kw, Co = c->Co, Ci = c->Ci, st = c->st;

	pack_taps(col, w, c);
	for (int r = 0; r < c->R; r++)
		for (int t = 0; t < k; t++)
			d2v_sgemm('N', 'T', c->Wo, Co,
			    Ci, 1.0f, in + ((size_t)r * c->Wi + t) * Ci, st * Ci,
			    col + (size_t)t * Co * Ci, Ci, t ? 1.0f : 0.0f,
			    out + (size_t)r * c->Wo * Co, Co);
	if (b != NULL)
		add_bias(out, b, c->R * c->Wo, Co);
}

static void
taps_backward(float *din, float *dw, float *db, float *col, float *dcol,
    const float *dout, const float *in, const float *w, const conv_geom *c)
{
	int k = c->kw, Co = c->Co, Ci = c->Ci, st = c->st;

	if (dw != NULL) {
		/* dcol (k, Co, Ci): the gradient of each tap's weights */
		memset(dcol, 0, sizeof(float) * (size_t)k * Co * Ci);
		for (int r = 0; r < c->R; r++)
			for (int t = 0; t < k; t++)
				d2v_sgemm('T', 'N', Co, Ci,
				    c->Wo, 1.0f, dout + (size_t)r * c->Wo * Co, Co,
				    in + ((size_t)r * c->Wi + t) * Ci, st * Ci, 1.0f,
				    dcol + (size_t)t * Co * Ci, Ci);
#pragma omp parallel for schedule(static)
		for (int o = 0; o < Co; o++)
			for (int i = 0; i < Ci; i++)
				for (int t = 0; t < k; t++)
					dw[((size_t)o * Ci + i) * k + t] +=
					    dcol[((size_t)t * Co + o) * Ci + i];
	}
	if (din != NULL) {
		/* the taps write overlapping rows one GEMM after another */
		pack_taps(col, w, c);
		for (int r = 0; r < c->R; r++)
			for (int t = 0; t < k; t++)
				d2v_sgemm('N', 'N', c->Wo,
				    Ci, Co, 1.0f, dout + (size_t)r * c->Wo * Co, Co,
				    col + (size_t)t * Co * Ci, Ci, 1.0f,
				    din + ((size_t)r * c->Wi + t) * Ci, st * Ci);
	}
	if (db != NULL)
		bias_backward(db, dout, c->R * c->Wo, Co);
}

/* The stride-1 'same' convolutions (the decoders, the audio position
 * encoder) go to oneDNN where it has a JIT kernel for them: 1.5 to 3 times
 * d2v's direct kernels on B1's and B3's shapes (AVX-512, 2 threads).  The
 * strided ones of the feature encoder stay with the taps, whose backward
 * is twice as fast as oneDNN's there. */
static void
conv_forward(float *out, float *col, const float *in, const float *w,
    const float *b, const conv_geom *c)
{
	if (!d2v_cpu_plain && !d2v_cpu_conv_own && direct_ok(c) &&
	    d2v_dnnl_conv_forward(out, in, w, b, c) == 0)
		return;
	if (d2v_cpu_plain == 0 && direct_ok(c))
		direct_forward(out, col, in, w, b, c);
	else if (d2v_cpu_plain == 0 && taps_ok(c))
		taps_forward(out, col, in, w, b, c);
	else
		im2col_forward(out, col, in, w, b, c);
}

static void
conv_backward(float *din, float *dw, float *db, float *col, float *dcol,
    const float *dout, const float *in, const float *w, const conv_geom *c)
{
	if (!d2v_cpu_plain && !d2v_cpu_conv_own && direct_ok(c) &&
	    d2v_dnnl_conv_backward(din, dw, db, dout, in, w, c) == 0)
		return;
	if (d2v_cpu_plain == 0 && direct_ok(c))
		direct_backward(din, dw, db, col, dcol, dout, in, w, c);
	else if (d2v_cpu_plain == 0 && taps_ok(c))
		taps_backward(din, dw, db, col, dcol, dout, in, w, c);
	else
		im2col_backward(din, dw, db, col, dcol, dout, in, w, c);
}

size_t
d2v_conv1d_scratch(int R, int Ti, int Ci, int Co, int k, int st, int pad,
    int G)
{
	conv_geom c = {.R = R, .Hi = 1, .Wi = Ti, .Ho = 1,
	    .Wo = (Ti + 2 * pad - k) / st + 1, .Ci = Ci, .Co = Co, .G = G,
	    .kh = 1, .kw = k, .st = st, .ph = 0, .pw = pad};
	size_t im = (size_t)R * c.Wo * (Ci / G) * k, taps = (size_t)k * Co * Ci;

	if (direct_ok(&c))
		return d2v_conv_scratch(R, 1, Ti, Ci, Co, 1, k, G);
	return taps_ok(&c) && taps > im ? taps : im;
}

static conv_geom
geom2d(int R, int Hh, int Ww, int Ci, int Co, int k, int G)
{
	return (conv_geom){.R = R, .Hi = Hh, .Wi = Ww, .Ho = Hh, .Wo = Ww,
	    .Ci = Ci, .Co = Co, .G = G, .kh = k, .kw = k, .st = 1,
	    .ph = k / 2, .pw = k / 2};
}

static conv_geom
geom1d(int R, int Ti, int Ci, int Co, int k, int st, int pad, int G)
{
	return (conv_geom){.R = R, .Hi = 1, .Wi = Ti, .Ho = 1,
	    .Wo = (Ti + 2 * pad - k) / st + 1, .Ci = Ci, .Co = Co, .G = G,
	    .kh = 1, .kw = k, .st = st, .ph = 0, .pw = pad};
}

static void
conv2d_forward(float *out, float *col, const float *in, const float *w,
    const float *b, int R, int Hh, int Ww, int Ci, int Co, int k, int G)
{
	conv_geom c = geom2d(R, Hh, Ww, Ci, Co, k, G);

	conv_forward(out, col, in, w, b, &c);
}

static void
conv2d_backward(float *din, float *dw, float *db, float *col, float *dcol,
    const float *dout, const float *in, const float *w, int R, int Hh,
    int Ww, int Ci, int Co, int k, int G)
{
	conv_geom c = geom2d(R, Hh, Ww, Ci, Co, k, G);

	conv_backward(din, dw, db, col, dcol, dout, in, w, &c);
}

static void
conv1d_forward(float *out, float *col, const float *in, const float *w,
    const float *b, int R, int Ti, int Ci, int Co, int k, int st, int pad,
    int G)
{
	conv_geom c = geom1d(R, Ti, Ci, Co, k, st, pad, G);

	conv_forward(out, col, in, w, b, &c);
}

static void
conv1d_backward(float *din, float *dw, float *db, float *col, float *dcol,
    const float *dout, const float *in, const float *w, int R, int Ti,
    int Ci, int Co, int k, int st, int pad, int G)
{
	conv_geom c = geom1d(R, Ti, Ci, Co, k, st, pad, G);

	conv_backward(din, dw, db, col, dcol, dout, in, w, &c);
}

static void
add(float *a, const float *b, size_t n)
{
#pragma omp parallel for schedule(static)
	for (size_t i = 0; i < n; i++)
		a[i] += b[i];
}

static void
mul(float *a, const float *b, size_t n)
{
#pragma omp parallel for schedule(static)
	for (size_t i = 0; i < n; i++)
		a[i] *= b[i];
}

static void
instancenorm_forward(float *out, const float *in, int R, int T, int C,
    float eps, int acc, float scale)
{
#pragma omp parallel for collapse(2) schedule(static)
	for (int r = 0; r < R; r++) {
		for (int c = 0; c < C; c++) {
			const float *x = in + (size_t)r * T * C + c;
			float *y = out + (size_t)r * T * C + c;
			double m = 0, v = 0;
			float rs;

			for (int t = 0; t < T; t++)
				m += x[(size_t)t * C];
			m /= T;
			for (int t = 0; t < T; t++)
				v += (x[(size_t)t * C] - m) * (x[(size_t)t * C] - m);
			v /= T;
			rs = (float)(1.0 / sqrt(v + eps));
			for (int t = 0; t < T; t++) {
				float n = (float)(x[(size_t)t * C] - m) * rs;

				if (acc)
					y[(size_t)t * C] += scale * n;
				else
					y[(size_t)t * C] = n;
			}
		}
	}
}

static void
gather_tokens(float *out, const float *src, const int *idx,
    const float *first, int R, int M, int N, int V, int E, int D)
{
	size_t T = (size_t)E + V;

#pragma omp parallel for schedule(static)
	for (int r = 0; r < R; r++) {
		float *row = out + (size_t)r * T * D;
		const float *seq = src + (size_t)(r / M) * N * D;
		const int *k = idx + (size_t)r * V;

		if (E)
			memcpy(row, first, (size_t)D * sizeof(float));
		for (int j = 0; j < V; j++)
			memcpy(row + ((size_t)E + j) * D, seq + (size_t)k[j] * D,
			    (size_t)D * sizeof(float));
	}
}

static void
scatter_tokens(float *dsrc, float *dfirst, const float *din, const int *idx,
    int R, int M, int N, int V, int E, int D)
{
	size_t T = (size_t)E + V;

	/* one sequence per thread: its M copies added in order */
#pragma omp parallel for schedule(static)
	for (int b = 0; b < R / M; b++) {
		float *seq = dsrc + (size_t)b * N * D;

		for (int r = b * M; r < (b + 1) * M; r++) {
			const float *row = din + (size_t)r * T * D;
			const int *k = idx + (size_t)r * V;

			for (int j = 0; j < V; j++) {
				float *dst = seq + (size_t)k[j] * D;
				const float *g = row + ((size_t)E + j) * D;

				for (int d = 0; d < D; d++)
					dst[d] += g[d];
			}
		}
	}
	for (int r = 0; dfirst && E && r < R; r++)
		for (int d = 0; d < D; d++)
			dfirst[d] += din[(size_t)r * T * D + d];
}

static void *
cpu_alloc(size_t bytes)
{
	return calloc(1, bytes > 0 ? bytes : 1);
}

static void *
cpu_host_alloc(size_t bytes)
{
	return malloc(bytes > 0 ? bytes : 1);
}

static double
cpu_sumsq(const float *x, size_t n)
{
	double s = 0;

#pragma omp parallel for reduction(+:s) schedule(static)
	for (size_t i = 0; i < n; i++)
		s += (double)x[i] * x[i];
	return s;
}

static void
cpu_scale(float *x, size_t n, float c)
{
#pragma omp parallel for schedule(static)
	for (size_t i = 0; i < n; i++)
		x[i] *= c;
}

static void
cpu_adamw(float *p, const float *g, float *m, float *v, size_t n, double b1,
    double b2, double step, double eps, float decay)
{
#pragma omp parallel for schedule(static)
	for (size_t k = 0; k < n; k++) {
		float mk = (float)(b1 * m[k] + (1 - b1) * g[k]);
		float vk = (float)(b2 * v[k] + (1 - b2) * (double)g[k] * g[k]);

		m[k] = mk;
		v[k] = vk;
		p[k] -= decay * p[k];
		p[k] -= (float)(step * mk / (sqrt((double)vk) + eps));
	}
}

static void
cpu_ema(float *t, const float *s, size_t n, double tau)
{
	float a = (float)tau, b = (float)(1 - tau);

#pragma omp parallel for schedule(static)
	for (size_t i = 0; i < n; i++)
		t[i] = a * t[i] + b * s[i];
}

static const d2v_ops cpu_ops = {
	.name = "cpu",
	.alloc = cpu_alloc,
	.release = free,
	.host_alloc = cpu_host_alloc,
	.host_release = free,
	.matmul_forward = matmul_forward,
	.matmul_backward = matmul_backward,
	.layernorm_forward = layernorm_forward,
	.layernorm_backward = layernorm_backward,
	.gelu_forward = gelu_forward,
	.gelu_backward = gelu_backward,
	.attention_forward = attention_forward,
	.attention_backward = attention_backward,
	.conv2d_forward = conv2d_forward,
	.conv2d_backward = conv2d_backward,
	.conv1d_forward = conv1d_forward,
	.conv1d_backward = conv1d_backward,
	.add = add,
	.mul = mul,
	.instancenorm_forward = instancenorm_forward,
	.gather_tokens = gather_tokens,
	.scatter_tokens = scatter_tokens,
	.copy = d2v_cpu_copy,
	.zero = d2v_cpu_zero,
	.add_bcast = d2v_cpu_add_bcast,
	.gather_rows = d2v_cpu_gather_rows,
	.scatter_rows = d2v_cpu_scatter_rows,
	.place_tokens = d2v_cpu_place_tokens,
	.pick_tokens = d2v_cpu_pick_tokens,
	.mask_tokens = d2v_cpu_mask_tokens,
	.unmask_tokens = d2v_cpu_unmask_tokens,
	.noise_fill = d2v_cpu_noise_fill,
	.drop_fill = d2v_cpu_drop_fill,
	.layerscale_forward = d2v_cpu_layerscale_forward,
	.layerscale_backward = d2v_cpu_layerscale_backward,
	.masked_loss = d2v_cpu_masked_loss,
	.masked_std = d2v_cpu_masked_std,
	.mean_tokens = d2v_cpu_mean_tokens,
	.sumsq = cpu_sumsq,
	.scale = cpu_scale,
	.adamw = cpu_adamw,
	.ema = cpu_ema,
};

const d2v_ops *
d2v_backend_cpu(void)
{
	static int once;

	if (!once) {
		const char *e = getenv("D2V_CPU_PLAIN");

		once = 1;
		if (e != NULL && *e == '1')
			d2v_cpu_plain = 1;
		if ((e = getenv("D2V_CONV")) != NULL && strcmp(e, "own") == 0)
			d2v_cpu_conv_own = 1;
	}
	return &cpu_ops;
}
