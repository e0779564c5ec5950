/* cpu.c - the CPU backend (see ops.h).  GEMMs go to OpenBLAS and are never
 * called inside an OpenMP region, so the cores are not oversubscribed. */
#include "ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

/* out (M,N) += b (N) on every row */
static void
add_bias(float *out, const float *b, int M, int N)
{
#pragma omp parallel for schedule(static)
	for (int i = 0; i < M; i++)
		for (int j = 0; j < N; j++)
			out[(size_t)i * N + j] += b[j];
}

/* db (N) += the column sums of dout (M,N) */
static void
bias_backward(float *db, const float *dout, int M, int N)
{
#pragma omp parallel for schedule(static)
	for (int j = 0; j < N; j++) {
		double s = 0;

		for (int i = 0; i < M; i++)
			s += dout[(size_t)i * N + j];
		db[j] += (float)s;
	}
}

static void
matmul_forward(float *out, const float *in, const float *w, const float *b,
    int M, int K, int N)
{
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f,
	    in, K, w, K, 0.0f, out, N);
	if (b != NULL)
		add_bias(out, b, M, N);
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
	if (db != NULL)
		bias_backward(db, dout, M, N);
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

/*
 * Grouped convolution by im2col and one GEMM per group, channels-last, for
 * both the 2-D ('same' padding, stride 1) and the 1-D (stride, padding)
 * ops: a 1-D convolution is a 2-D one of height 1 and kernel height 1.
 */
typedef struct conv_geom {
	int R;                /* sequences or images */
	int Hi, Wi, Ho, Wo;   /* input and output grid */
	int Ci, Co, G;        /* channels, groups */
	int kh, kw, st;       /* kernel, stride (both dimensions) */
	int ph, pw;           /* zero padding before each dimension */
} conv_geom;

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

static void
conv_forward(float *out, float *col, const float *in, const float *w,
    const float *b, const conv_geom *c)
{
	int Cog = c->Co / c->G, Kc = c->Ci / c->G * c->kh * c->kw;
	int M = c->R * c->Ho * c->Wo;

	for (int g = 0; g < c->G; g++) {
		im2col(col, in, c, g);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, Cog, Kc,
		    1.0f, col, Kc, w + (size_t)g * Cog * Kc, Kc, 0.0f,
		    out + g * Cog, c->Co);
	}
	if (b != NULL)
		add_bias(out, b, M, c->Co);
}

static void
conv_backward(float *din, float *dw, float *db, float *col, float *dcol,
    const float *dout, const float *in, const float *w, const conv_geom *c)
{
	int Cog = c->Co / c->G, Kc = c->Ci / c->G * c->kh * c->kw;
	int M = c->R * c->Ho * c->Wo;

	for (int g = 0; g < c->G; g++) {
		if (dw != NULL) {
			im2col(col, in, c, g);
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Cog, Kc,
			    M, 1.0f, dout + g * Cog, c->Co, col, Kc, 1.0f,
			    dw + (size_t)g * Cog * Kc, Kc);
		}
		if (din != NULL) {
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, Kc,
			    Cog, 1.0f, dout + g * Cog, c->Co, w + (size_t)g * Cog * Kc,
			    Kc, 0.0f, dcol, Kc);
			col2im_add(din, dcol, c, g);
		}
	}
	if (db != NULL)
		bias_backward(db, dout, M, c->Co);
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
