/* cpu.c - the CPU backend (see ops.h).  GEMMs go to OpenBLAS and are never
 * called inside an OpenMP region, so the cores are not oversubscribed. */
#include "ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

static void
matmul_forward(float *out, const float *in, const float *w, const float *b,
    int M, int K, int N)
{
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f,
	    in, K, w, K, 0.0f, out, N);
	if (b != NULL) {
#pragma omp parallel for schedule(static)
		for (int i = 0; i < M; i++)
			for (int j = 0; j < N; j++)
				out[(size_t)i * N + j] += b[j];
	}
}

static void
matmul_backward(float *din, float *dw, float *db, const float *dout,
    const float *in, const float *w, int M, int K, int N)
{
	if (din != NULL)
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N,
		    1.0f, dout, N, w, K, 1.0f, din, K);
	if (dw != NULL)
		cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, M,
		    1.0f, dout, N, in, K, 1.0f, dw, K);
	if (db != NULL) {
#pragma omp parallel for schedule(static)
		for (int j = 0; j < N; j++) {
			double s = 0;

			for (int i = 0; i < M; i++)
				s += dout[(size_t)i * N + j];
			db[j] += (float)s;
		}
	}
}

static void
layernorm_forward(float *out, float *mean, float *rstd, const float *in,
    const float *w, const float *b, int rows, int C, float eps)
{
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
	if (din != NULL) {
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
	if (dw != NULL || db != NULL) {
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
	}
}

static void
gelu_forward(float *out, const float *in, size_t n)
{
#pragma omp parallel for schedule(static)
	for (size_t i = 0; i < n; i++)
		out[i] = 0.5f * in[i] * (1.0f + erff(in[i] * (float)M_SQRT1_2));
}

static void
gelu_backward(float *din, const float *in, const float *dout, size_t n)
{
	const float k = (float)(1.0 / sqrt(2.0 * M_PI));

#pragma omp parallel for schedule(static)
	for (size_t i = 0; i < n; i++) {
		float x = in[i];
		float cdf = 0.5f * (1.0f + erff(x * (float)M_SQRT1_2));

		din[i] += dout[i] * (cdf + x * k * expf(-0.5f * x * x));
	}
}

static void
attention_forward(float *out, float *probs, const float *qkv,
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
attention_backward(float *dqkv, float *dslope, const float *dout,
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

/* col ((R*Hh*Ww), Cg*k*k) for group g of in (R, Hh*Ww, Ci). */
static void
im2col(float *col, const float *in, int R, int Hh, int Ww, int Ci, int k,
    int Cg, int g)
{
	int pad = k / 2, Kc = Cg * k * k;

#pragma omp parallel for collapse(2) schedule(static)
	for (int r = 0; r < R; r++) {
		for (int y = 0; y < Hh; y++) {
			for (int x = 0; x < Ww; x++) {
				float *c = col + (((size_t)r * Hh + y) * Ww + x) * Kc;

				for (int ci = 0; ci < Cg; ci++) {
					for (int ky = 0; ky < k; ky++) {
						int sy = y + ky - pad;

						for (int kx = 0; kx < k; kx++) {
							int sx = x + kx - pad;

							*c++ = (sy < 0 || sy >= Hh || sx < 0 || sx >= Ww) ? 0.0f :
							    in[(((size_t)r * Hh + sy) * Ww + sx) * Ci + g * Cg + ci];
						}
					}
				}
			}
		}
	}
}

static void
col2im_add(float *din, const float *col, int R, int Hh, int Ww, int Ci, int k,
    int Cg, int g)
{
	int pad = k / 2, Kc = Cg * k * k;

#pragma omp parallel for schedule(static)
	for (int r = 0; r < R; r++) {
		for (int y = 0; y < Hh; y++) {
			for (int x = 0; x < Ww; x++) {
				const float *c = col + (((size_t)r * Hh + y) * Ww + x) * Kc;

				for (int ci = 0; ci < Cg; ci++) {
					for (int ky = 0; ky < k; ky++) {
						int sy = y + ky - pad;

						for (int kx = 0; kx < k; kx++, c++) {
							int sx = x + kx - pad;

							if (sy >= 0 && sy < Hh && sx >= 0 && sx < Ww)
								din[(((size_t)r * Hh + sy) * Ww + sx) * Ci + g * Cg + ci] += *c;
						}
					}
				}
			}
		}
	}
}

static void
conv2d_forward(float *out, float *col, const float *in, const float *w,
    const float *b, int R, int Hh, int Ww, int Ci, int Co, int k, int G)
{
	int Cig = Ci / G, Cog = Co / G, Kc = Cig * k * k, M = R * Hh * Ww;

	for (int g = 0; g < G; g++) {
		im2col(col, in, R, Hh, Ww, Ci, k, Cig, g);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, Cog, Kc,
		    1.0f, col, Kc, w + (size_t)g * Cog * Kc, Kc, 0.0f,
		    out + g * Cog, Co);
	}
	if (b != NULL) {
#pragma omp parallel for schedule(static)
		for (int i = 0; i < M; i++)
			for (int c = 0; c < Co; c++)
				out[(size_t)i * Co + c] += b[c];
	}
}

static void
conv2d_backward(float *din, float *dw, float *db, float *col, float *dcol,
    const float *dout, const float *in, const float *w, int R, int Hh,
    int Ww, int Ci, int Co, int k, int G)
{
	int Cig = Ci / G, Cog = Co / G, Kc = Cig * k * k, M = R * Hh * Ww;

	for (int g = 0; g < G; g++) {
		if (dw != NULL) {
			im2col(col, in, R, Hh, Ww, Ci, k, Cig, g);
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Cog, Kc,
			    M, 1.0f, dout + g * Cog, Co, col, Kc, 1.0f,
			    dw + (size_t)g * Cog * Kc, Kc);
		}
		if (din != NULL) {
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, Kc,
			    Cog, 1.0f, dout + g * Cog, Co, w + (size_t)g * Cog * Kc,
			    Kc, 0.0f, dcol, Kc);
			col2im_add(din, dcol, R, Hh, Ww, Ci, k, Cig, g);
		}
	}
	if (db != NULL) {
#pragma omp parallel for schedule(static)
		for (int c = 0; c < Co; c++) {
			double s = 0;

			for (int i = 0; i < M; i++)
				s += dout[(size_t)i * Co + c];
			db[c] += (float)s;
		}
	}
}

/* col ((R*To), Cg*k) for group g of in (R, Ti, Ci). */
static void
im2col1d(float *col, const float *in, int R, int Ti, int To, int Ci, int k,
    int st, int pad, int Cg, int g)
{
	int Kc = Cg * k;

#pragma omp parallel for collapse(2) schedule(static)
	for (int r = 0; r < R; r++) {
		for (int t = 0; t < To; t++) {
			float *c = col + ((size_t)r * To + t) * Kc;

			for (int ci = 0; ci < Cg; ci++) {
				const float *src = in + (size_t)r * Ti * Ci + g * Cg + ci;

				for (int kk = 0; kk < k; kk++) {
					int s = t * st + kk - pad;

					*c++ = s < 0 || s >= Ti ? 0.0f : src[(size_t)s * Ci];
				}
			}
		}
	}
}

static void
col2im1d_add(float *din, const float *col, int R, int Ti, int To, int Ci,
    int k, int st, int pad, int Cg, int g)
{
	int Kc = Cg * k;

	/* one thread per sequence: outputs t overlap in the input */
#pragma omp parallel for schedule(static)
	for (int r = 0; r < R; r++) {
		for (int t = 0; t < To; t++) {
			const float *c = col + ((size_t)r * To + t) * Kc;

			for (int ci = 0; ci < Cg; ci++) {
				float *dst = din + (size_t)r * Ti * Ci + g * Cg + ci;

				for (int kk = 0; kk < k; kk++, c++) {
					int s = t * st + kk - pad;

					if (s >= 0 && s < Ti)
						dst[(size_t)s * Ci] += *c;
				}
			}
		}
	}
}

static int
conv1d_len(int Ti, int k, int st, int pad)
{
	return (Ti + 2 * pad - k) / st + 1;
}

static void
conv1d_forward(float *out, float *col, const float *in, const float *w,
    const float *b, int R, int Ti, int Ci, int Co, int k, int st, int pad,
    int G)
{
	int Cig = Ci / G, Cog = Co / G, Kc = Cig * k;
	int To = conv1d_len(Ti, k, st, pad), M = R * To;

	for (int g = 0; g < G; g++) {
		im2col1d(col, in, R, Ti, To, Ci, k, st, pad, Cig, g);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, Cog, Kc,
		    1.0f, col, Kc, w + (size_t)g * Cog * Kc, Kc, 0.0f,
		    out + g * Cog, Co);
	}
	if (b != NULL) {
#pragma omp parallel for schedule(static)
		for (int i = 0; i < M; i++)
			for (int c = 0; c < Co; c++)
				out[(size_t)i * Co + c] += b[c];
	}
}

static void
conv1d_backward(float *din, float *dw, float *db, float *col, float *dcol,
    const float *dout, const float *in, const float *w, int R, int Ti,
    int Ci, int Co, int k, int st, int pad, int G)
{
	int Cig = Ci / G, Cog = Co / G, Kc = Cig * k;
	int To = conv1d_len(Ti, k, st, pad), M = R * To;

	for (int g = 0; g < G; g++) {
		if (dw != NULL) {
			im2col1d(col, in, R, Ti, To, Ci, k, st, pad, Cig, g);
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Cog, Kc,
			    M, 1.0f, dout + g * Cog, Co, col, Kc, 1.0f,
			    dw + (size_t)g * Cog * Kc, Kc);
		}
		if (din != NULL) {
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, Kc,
			    Cog, 1.0f, dout + g * Cog, Co, w + (size_t)g * Cog * Kc,
			    Kc, 0.0f, dcol, Kc);
			col2im1d_add(din, dcol, R, Ti, To, Ci, k, st, pad, Cig, g);
		}
	}
	if (db != NULL) {
#pragma omp parallel for schedule(static)
		for (int c = 0; c < Co; c++) {
			double s = 0;

			for (int i = 0; i < M; i++)
				s += dout[(size_t)i * Co + c];
			db[c] += (float)s;
		}
	}
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

static const d2v_ops cpu_ops = {
	.name = "cpu",
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
};

const d2v_ops *
d2v_backend_cpu(void)
{
	return &cpu_ops;
}
