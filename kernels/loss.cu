/*
 * loss.cu - the masked regression loss and its gradient, the masked
 * per-dim standard deviation (the targets' collapse statistic) and the
 * mean over the tokens, all accumulated in double and deterministic.
 *
 * masked_loss: a block of 128 threads per row (r,t) of (R,T), grid-stride
 * over the rows: it writes the row of dp (the gradient, or zeros), and
 * for the rows t in [off, off+N) it sums w l(e) over D (each thread a
 * fixed stride of dims, then a fixed tree in shared memory) into
 * scratch[r N + n] (0 when the row is not selected).  Then one block adds
 * the R N partials in a fixed order (strided per thread, then the tree)
 * into *out.
 * masked_std: the R N rows are cut into nchunk chunks (a function of R N
 * only, at most LS_MAXCHUNK); a block of 32 x 8 threads sums 32 dims of
 * one chunk's selected rows (x and x^2, 8 row lanes, then the lanes in
 * order) into scratch: s (nchunk, D) and then s2 (nchunk, D).  One block
 * then counts the selected rows, adds each dim's chunks in order, and
 * sums the dims' standard deviations in a fixed tree into *out.
 * mean_tokens: one thread per (b,d), the N tokens in order.
 */
#include "kernels.h"

#define LS_THREADS 128		/* masked_loss row blocks */
#define LS_FINAL 256		/* the one-block final sums */
#define LS_COLS 32		/* dims per block of the std partials */
#define LS_LANES 8		/* row lanes per block of the std partials */
#define LS_MAXCHUNK 256		/* most row chunks of the std */
#define LS_MAXGRID 65535

/* the sum of the n values of sh (n a power of two, the block's threads)
 * in a fixed tree, into sh[0]; every thread of the block calls it after
 * writing its sh[threadIdx.x]; it ends with a barrier */
static __device__ void
tree_sum(double *sh, int n)
{
	__syncthreads();
	for (int k = n / 2; k > 0; k >>= 1) {
		if ((int)threadIdx.x < k)
			sh[threadIdx.x] += sh[threadIdx.x + k];
		__syncthreads();
	}
}

/* dp (R,T,D) and part (R N): see the top */
static __global__ void
loss_rows(double *part, float *dp, const float *pred, const float *y,
    const unsigned char *mask, int R, int M, int N, int T, int off, int D,
    double w, double beta, double norm)
{
	__shared__ double sh[LS_THREADS];
	size_t rows = (size_t)R * T;

	for (size_t t = blockIdx.x; t < rows; t += gridDim.x) {
		int r = (int)(t / T), n = (int)(t % T) - off;
		int in = n >= 0 && n < N;
		int sel = in && (mask == NULL || mask[(size_t)r * N + n]);
		double acc = 0;

		if (sel) {
			const float *p = pred + t * D;
			const float *q = y + ((size_t)(r / M) * N + n) * D;

			for (int d = threadIdx.x; d < D; d += LS_THREADS) {
				double e = (double)p[d] - q[d], l, g;

				if (beta == 0) {
					l = e * e;
					g = 2 * e;
				} else if (fabs(e) < beta) {
					l = 0.5 * e * e / beta;
					g = e / beta;
				} else {
					l = fabs(e) - 0.5 * beta;
					g = (e > 0) - (e < 0);
				}
				acc += w * l;
				if (dp != NULL)
					dp[t * D + d] = (float)(w * g / norm);
			}
		} else if (dp != NULL)
			for (int d = threadIdx.x; d < D; d += LS_THREADS)
				dp[t * D + d] = 0;
		if (in) {	/* the same for the whole block */
			sh[threadIdx.x] = acc;
			tree_sum(sh, LS_THREADS);
			if (threadIdx.x == 0)
				part[(size_t)r * N + n] = sh[0];
		}
	}
}

/* *out = the sum of part (n), one block of LS_FINAL threads */
static __global__ void
sum_final(double *out, const double *part, size_t n)
{
	__shared__ double sh[LS_FINAL];
	double acc = 0;

	for (size_t k = threadIdx.x; k < n; k += LS_FINAL)
		acc += part[k];
	sh[threadIdx.x] = acc;
	tree_sum(sh, LS_FINAL);
	if (threadIdx.x == 0)
		*out = sh[0];
}

/* part: s (nchunk, D) then s2 (nchunk, D) over the selected rows of
 * chunk blockIdx.y (rows [y rpc, y rpc + rpc) of the R N).  Grid
 * (ceil(D/32), nchunk), block (32, 8). */
static __global__ void
std_partial(double *part, const float *x, const unsigned char *mask,
    size_t rn, int N, int T, int off, int D, size_t rpc, int nchunk)
{
	__shared__ double sh[LS_LANES][LS_COLS], sh2[LS_LANES][LS_COLS];
	int tx = threadIdx.x, ty = threadIdx.y;
	int d = blockIdx.x * LS_COLS + tx;
	size_t k0 = blockIdx.y * rpc, k1 = k0 + rpc < rn ? k0 + rpc : rn;
	double s = 0, s2 = 0;

	if (d < D)
		for (size_t k = k0 + ty; k < k1; k += LS_LANES)
			if (mask == NULL || mask[k]) {
				size_t r = k / N, n = k % N;
				double v = x[(r * T + off + n) * D + d];

				s += v;
				s2 += v * v;
			}
	sh[ty][tx] = s;
	sh2[ty][tx] = s2;
	__syncthreads();
	if (ty == 0 && d < D) {
		s = 0, s2 = 0;
		for (int j = 0; j < LS_LANES; j++) {
			s += sh[j][tx];
			s2 += sh2[j][tx];
		}
		part[(size_t)blockIdx.y * D + d] = s;
		part[((size_t)nchunk + blockIdx.y) * D + d] = s2;
	}
}

/* *out = the mean over d of the sample std from part; one block of
 * LS_FINAL threads */
static __global__ void
std_final(double *out, const double *part, const unsigned char *mask,
    size_t rn, int D, int nchunk)
{
	__shared__ double sh[LS_FINAL];
	double acc = 0, k;

	/* k: the selected rows (an exact integer sum) */
	for (size_t i = threadIdx.x; i < rn; i += LS_FINAL)
		acc += mask == NULL || mask[i];
	sh[threadIdx.x] = acc;
	tree_sum(sh, LS_FINAL);
	k = sh[0];
	__syncthreads();	/* everyone has read sh[0] */
	acc = 0;
	if (k >= 2)
		for (int d = threadIdx.x; d < D; d += LS_FINAL) {
			double s = 0, s2 = 0, m, var;

			for (int c = 0; c < nchunk; c++) {
				s += part[(size_t)c * D + d];
				s2 += part[((size_t)nchunk + c) * D + d];
			}
			m = s / k;
			var = s2 / k - m * m;
			acc += sqrt(fmax(var, 0.0) * k / (k - 1));
		}
	sh[threadIdx.x] = acc;
	tree_sum(sh, LS_FINAL);
	if (threadIdx.x == 0)
		*out = k < 2 ? 0 : sh[0] / D;
}

/* out (B,D) = the mean of in (B,N,D) over N, in double */
static __global__ void
mean_kernel(float *out, const float *in, int B, int N, int D)
{
	size_t all = (size_t)B * D;
	size_t stride = (size_t)gridDim.x * blockDim.x;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < all;
	    i += stride) {
		size_t b = i / D, d = i % D;
		const float *p = in + b * N * D + d;
		double s = 0;

		for (int n = 0; n < N; n++)
			s += p[(size_t)n * D];
		out[i] = (float)(s / N);
	}
}

/* The row chunks of the std over rn rows: nchunk chunks of rpc rows, at
 * most LS_MAXCHUNK, about 64 rows each for small rn. */
static void
std_chunks(size_t rn, int *nchunk, size_t *rpc)
{
	size_t n = (rn + 63) / 64, r;

	if (n > LS_MAXCHUNK)
		n = LS_MAXCHUNK;
	if (n < 1)
		n = 1;
	r = (rn + n - 1) / n;
	if (r < 1)
		r = 1;
	*rpc = r;
	n = (rn + r - 1) / r;
	*nchunk = (int)(n < 1 ? 1 : n);
}

extern "C" size_t
d2v_k_loss_scratch(int R, int N, int D)
{
	size_t rn = (size_t)(R > 0 ? R : 0) * (N > 0 ? N : 0), rpc, s;
	int nchunk;

	/* masked_loss: R N row sums; masked_std: s and s2 (nchunk, D) */
	std_chunks(rn, &nchunk, &rpc);
	s = 2 * (size_t)nchunk * (size_t)(D > 0 ? D : 0);
	if (s < rn)
		s = rn;
	return s > 0 ? s : 1;
}

extern "C" void
d2v_k_masked_loss(double *out, float *dp, const float *pred,
    const float *y, const unsigned char *mask, int R, int M, int N, int T,
    int off, int D, double w, double beta, double norm, double *scratch,
    cudaStream_t st)
{
	size_t rows = (size_t)(R > 0 ? R : 0) * (T > 0 ? T : 0);
	size_t rn = (size_t)(R > 0 ? R : 0) * (N > 0 ? N : 0);

	if (rows > 0 && D > 0)
		loss_rows<<<(unsigned)(rows < LS_MAXGRID ? rows : LS_MAXGRID),
		    LS_THREADS, 0, st>>>(scratch, dp, pred, y, mask, R, M, N, T,
		    off, D, w, beta, norm);
	else
		rn = 0;	/* nothing selected */
	sum_final<<<1, LS_FINAL, 0, st>>>(out, scratch, rn);
}

extern "C" void
d2v_k_masked_std(double *out, const float *x, const unsigned char *mask,
    int R, int N, int T, int off, int D, double *scratch, cudaStream_t st)
{
	size_t rn = (size_t)(R > 0 ? R : 0) * (N > 0 ? N : 0), rpc;
	int nchunk;

	std_chunks(rn, &nchunk, &rpc);
	if (rn > 0 && D > 0)
		std_partial<<<dim3((D + LS_COLS - 1) / LS_COLS, nchunk),
		    dim3(LS_COLS, LS_LANES), 0, st>>>(scratch, x, mask, rn, N, T,
		    off, D, rpc, nchunk);
	else
		D = 0;	/* no dims to sum: *out = 0 */
	std_final<<<1, LS_FINAL, 0, st>>>(out, scratch, mask, D > 0 ? rn : 0,
	    D, nchunk);
}

extern "C" void
d2v_k_mean_tokens(float *out, const float *in, int B, int N, int D,
    cudaStream_t st)
{
	size_t all = (size_t)(B > 0 ? B : 0) * (D > 0 ? D : 0), grid;

	if (all == 0)
		return;
	grid = (all + 255) / 256;
	if (grid > 8192)
		grid = 8192;
	mean_kernel<<<(unsigned)grid, 256, 0, st>>>(out, in, B, N, D);
}

#ifdef D2V_KERNEL_LAB
#include "lab.h"

#define NAME "loss"

/* |got - ref| / max(|ref|, 1e-300) for one double */
static double
rel1(double got, double ref)
{
	double e = fabs(got - ref) / fmax(fabs(ref), 1e-300);

	return e == e ? e : INFINITY;
}

/* the largest distance in float ulps between got and want (their bits
 * as ordered integers); n of them */
static int64_t
max_ulps(const float *got, const float *want, size_t n)
{
	int64_t worst = 0;

	for (size_t i = 0; i < n; i++) {
		int32_t a, b;
		int64_t e;

		memcpy(&a, &got[i], 4);
		memcpy(&b, &want[i], 4);
		if (a < 0)
			a = INT32_MIN - a;
		if (b < 0)
			b = INT32_MIN - b;
		e = (int64_t)a - b;
		if (e < 0)
			e = -e;
		if (isnan(got[i]) != isnan(want[i]))
			e = INT64_MAX;
		if (e > worst)
			worst = e;
	}
	return worst;
}

/* the mask over R N rows: set with probability q (0: none, 1: all), or
 * exactly row one when q < 0 */
static void
make_mask(unsigned char *m, size_t rn, double q, lab_rng *rng)
{
	for (size_t k = 0; k < rn; k++)
		m[k] = q < 0 ? k == 1 % rn : lab_uniform(rng, 0, 1) < q ?
		    (unsigned char)(1 + (lab_next(rng) & 0xfe)) : 0;
}

/* masked_loss and masked_std on one shape; q the mask's density (mask
 * NULL when nomask); failures */
static int
check(int R, int M, int N, int T, int off, int D, double q, int nomask,
    double beta, lab_rng *rng, cudaStream_t st)
{
	size_t rn = (size_t)R * N, nx = (size_t)R * T * D;
	size_t ny = (size_t)(R / M) * N * D;
	float *pred = (float *)lab_halloc(nx * sizeof(float));
	float *y = (float *)lab_halloc(ny * sizeof(float));
	float *want = (float *)lab_halloc(nx * sizeof(float));
	float *got = (float *)lab_halloc(nx * sizeof(float));
	unsigned char *mask = (unsigned char *)lab_halloc(rn);
	double w = 1.3, norm = 37, lref = 0, sref = 0, out[2], again[2];
	double *d_out, *d_scr;
	float *d_pred, *d_y, *d_dp;
	unsigned char *d_mask;
	int64_t ulps;
	long k = 0;
	char what[128];
	int fails = 0;

	lab_fill(pred, nx, -2, 2, rng);
	lab_fill(y, ny, -2, 2, rng);
	make_mask(mask, rn, q, rng);
	if (nomask)
		memset(mask, 1, rn);

	/* the reference: dp rounded from double; the loss and the std in
	 * long double */
	memset(want, 0, nx * sizeof(float));
	{
		long double ls = 0;

		for (int r = 0; r < R; r++)
			for (int n = 0; n < N; n++) {
				size_t row = (size_t)r * T + off + n;

				if (!mask[(size_t)r * N + n])
					continue;
				for (int d = 0; d < D; d++) {
					double e = (double)pred[row * D + d] -
					    y[((size_t)(r / M) * N + n) * D + d];
					double l, g;

					if (beta == 0) {
						l = e * e;
						g = 2 * e;
					} else if (fabs(e) < beta) {
						l = 0.5 * e * e / beta;
						g = e / beta;
					} else {
						l = fabs(e) - 0.5 * beta;
						g = e > 0 ? 1 : e < 0 ? -1 : 0;
					}
					ls += (long double)w * l;
					want[row * D + d] = (float)(w * g / norm);
				}
			}
		lref = (double)ls;
	}
	for (size_t i = 0; i < rn; i++)
		k += mask[i] != 0;
	if (k >= 2) {
		long double sum = 0;

		for (int d = 0; d < D; d++) {
			long double s = 0, s2 = 0, var;

			for (int r = 0; r < R; r++)
				for (int n = 0; n < N; n++) {
					long double v;

					if (!mask[(size_t)r * N + n])
						continue;
					v = pred[((size_t)r * T + off + n) * D + d];
					s += v;
					s2 += v * v;
				}
			var = s2 / k - (s / k) * (s / k);
			sum += sqrtl((var > 0 ? var : 0) * k / (k - 1));
		}
		sref = (double)(sum / D);
	}

	d_pred = lab_dup(pred, nx);
	d_y = lab_dup(y, ny);
	lab_fill(got, nx, -1, 1, rng);
	d_dp = lab_dup(got, nx);	/* every element must be written */
	LAB_CK(cudaMalloc((void **)&d_mask, rn > 0 ? rn : 1));
	LAB_CK(cudaMemcpy(d_mask, mask, rn, cudaMemcpyHostToDevice));
	d_out = (double *)lab_dalloc(2 * sizeof(double));
	d_scr = (double *)lab_dalloc(d2v_k_loss_scratch(R, N, D) *
	    sizeof(double));
	for (int rep = 0; rep < 2; rep++) {
		double *o = rep == 0 ? out : again;

		d2v_k_masked_loss(d_out, d_dp, d_pred, d_y, nomask ? NULL : d_mask,
		    R, M, N, T, off, D, w, beta, norm, d_scr, st);
		d2v_k_masked_std(d_out + 1, d_pred, nomask ? NULL : d_mask, R, N, T,
		    off, D, d_scr, st);
		lab_sync(st);
		LAB_CK(cudaMemcpy(o, d_out, 2 * sizeof(double),
		    cudaMemcpyDeviceToHost));
	}
	lab_get(got, d_dp, nx);
	ulps = max_ulps(got, want, nx);
	snprintf(what, sizeof what, "R %d M %d N %d T %d off %d D %d%s beta %g",
	    R, M, N, T, off, D, nomask ? " nomask" : "", beta);
	printf("%s: %s (%ld selected)\n", NAME, what, k);
	fails += lab_report(NAME, "  masked_loss sum (and repeatable)",
	    memcmp(&out[0], &again[0], 8) ? INFINITY : rel1(out[0], lref),
	    1e-12);
	printf("%s: %-44s max %lld ulp (tol 1) %s\n", NAME, "  masked_loss dp",
	    (long long)ulps, ulps <= 1 ? "PASS" : "FAIL");
	fails += ulps > 1;
	fails += lab_report(NAME, "  masked_std (and repeatable)",
	    memcmp(&out[1], &again[1], 8) ? INFINITY : k < 2 ? (out[1] == 0 ?
	    0 : INFINITY) : rel1(out[1], sref), 1e-12);
	free(pred), free(y), free(want), free(got), free(mask);
	cudaFree(d_pred), cudaFree(d_y), cudaFree(d_dp), cudaFree(d_mask);
	cudaFree(d_out), cudaFree(d_scr);
	return fails;
}

/* mean_tokens on (B,N,D); failures */
static int
check_mean(int B, int N, int D, lab_rng *rng, cudaStream_t st)
{
	size_t n = (size_t)B * N * D, no = (size_t)B * D;
	float *in = (float *)lab_halloc(n * sizeof(float));
	float *got = (float *)lab_halloc(no * sizeof(float));
	double *ref = (double *)lab_halloc(no * sizeof(double));
	float *d_in, *d_out;
	char what[96];
	int fails;

	lab_fill(in, n, -1, 1, rng);
	for (int b = 0; b < B; b++)
		for (int d = 0; d < D; d++) {
			long double s = 0;

			for (int t = 0; t < N; t++)
				s += in[((size_t)b * N + t) * D + d];
			ref[(size_t)b * D + d] = (double)(s / N);
		}
	d_in = lab_dup(in, n);
	d_out = (float *)lab_dalloc(no * sizeof(float));
	d2v_k_mean_tokens(d_out, d_in, B, N, D, st);
	lab_sync(st);
	lab_get(got, d_out, no);
	/* one float rounding of a double mean: 2^-24 relative, a little
	 * more (floor 1e-30, i.e. none) */
	snprintf(what, sizeof what, "mean_tokens B %d N %d D %d", B, N, D);
	fails = lab_report(NAME, what, lab_max_rel_err(got, ref, no, 1e-30),
	    1e-7);
	free(in), free(got), free(ref);
	cudaFree(d_in), cudaFree(d_out);
	return fails;
}

typedef struct bench_arg {
	double *out, *scr;
	float *dp, *pred, *y;
	unsigned char *mask;
	int R, M, N, T, D;
} bench_arg;

static void
bench_loss(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_masked_loss(a->out, a->dp, a->pred, a->y, a->mask, a->R, a->M,
	    a->N, a->T, 1, a->D, 1, 0, 1000, a->scr, st);
}

static void
bench_std(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_masked_std(a->out, a->pred, a->mask, a->R, a->N, a->T, 1, a->D,
	    a->scr, st);
}

static void
bench_mean(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_mean_tokens(a->dp, a->pred, a->R, a->T, a->D, st);
}

int
main(void)
{
	lab_rng rng = {29};
	cudaStream_t st;
	bench_arg a;
	unsigned char *mask;
	size_t nx, rn;
	int fails = 0;
	char what[96];

	lab_need_gpu(NAME);
	LAB_CK(cudaStreamCreate(&st));
	fails += check(1, 1, 1, 1, 0, 1, 1, 0, 0, &rng, st);
	fails += check(1, 1, 1, 1, 0, 1, 1, 1, 0.5, &rng, st);
	fails += check(6, 3, 7, 9, 1, 31, 0.6, 0, 0, &rng, st);
	fails += check(6, 3, 7, 9, 2, 31, 0.6, 0, 0.5, &rng, st);
	fails += check(7, 7, 5, 5, 0, 1, 0.5, 1, 1.0, &rng, st);
	fails += check(4, 2, 10, 11, 1, 33, 0, 0, 0, &rng, st);
	fails += check(4, 2, 10, 11, 1, 33, -1, 0, 0.5, &rng, st);
	fails += check(32, 8, 196, 197, 1, 192, 0.8, 0, 0, &rng, st);
	fails += check(32, 8, 196, 197, 1, 192, 0.8, 0, 0.25, &rng, st);
	fails += check(16, 8, 49, 50, 1, 768, 0.6, 1, 0, &rng, st);
	fails += check_mean(1, 1, 1, &rng, st);
	fails += check_mean(3, 7, 31, &rng, st);
	fails += check_mean(32, 197, 192, &rng, st);
	fails += check_mean(5, 1, 768, &rng, st);
	lab_verdict(NAME, fails);

	/* 256 rows (32 images, 8 copies) of 197 tokens of 768, 80 % of the
	 * 196 masked */
	a.R = 256; a.M = 8; a.N = 196; a.T = 197; a.D = 768;
	nx = (size_t)a.R * a.T * a.D;
	rn = (size_t)a.R * a.N;
	a.pred = (float *)lab_dalloc(nx * sizeof(float));
	a.dp = (float *)lab_dalloc(nx * sizeof(float));
	a.y = (float *)lab_dalloc((size_t)32 * a.N * a.D * sizeof(float));
	a.out = (double *)lab_dalloc(sizeof(double));
	a.scr = (double *)lab_dalloc(d2v_k_loss_scratch(a.R, a.N, a.D) *
	    sizeof(double));
	lab_dev_fill(a.pred, nx, -1, 1, 1);
	lab_dev_fill(a.y, (size_t)32 * a.N * a.D, -1, 1, 2);
	mask = (unsigned char *)lab_halloc(rn);
	for (size_t i = 0; i < rn; i++)
		mask[i] = i % 5 != 0;
	LAB_CK(cudaMalloc((void **)&a.mask, rn));
	LAB_CK(cudaMemcpy(a.mask, mask, rn, cudaMemcpyHostToDevice));
	snprintf(what, sizeof what, "masked_loss R %d N %d D %d", a.R, a.N,
	    a.D);
	/* bytes: dp written (R T D), pred and y read at the masked rows */
	lab_bench(NAME, what, (nx + 2 * 0.8 * rn * a.D) * sizeof(float),
	    lab_time_ms(bench_loss, &a, st));
	snprintf(what, sizeof what, "masked_std R %d N %d D %d", a.R, a.N,
	    a.D);
	/* bytes: x read at the masked rows */
	lab_bench(NAME, what, 0.8 * rn * a.D * sizeof(float),
	    lab_time_ms(bench_std, &a, st));
	snprintf(what, sizeof what, "mean_tokens B %d N %d D %d", a.R, a.T,
	    a.D);
	/* bytes: in read (B N D); out is small */
	lab_bench(NAME, what, (double)nx * sizeof(float),
	    lab_time_ms(bench_mean, &a, st));
	free(mask);
	return 0;
}
#endif
