/*
 * instancenorm.cu - instance norm over T per sequence r and channel c, no
 * affine, biased variance: y = (x - mean) / sqrt(var + eps), in (R,T,C),
 * out = y or out += scale y.
 *
 * A block of 32 x 16 threads normalises 32 channels of one sequence:
 * threadIdx.x the channel (reads coalesced along C), threadIdx.y strides
 * over T.  Sums in double: each column's sum is the 16 T-lane partials
 * added in order from shared memory (every thread of the column adds them
 * itself, so all get the same bits).  Two passes (mean, then squared
 * deviations), then the write pass, with x - mean taken in double before
 * it is rounded, as the CPU backend does; each element is read and written by one thread, after
 * both reductions, so out may be in.  Blocks grid-stride over the (r,
 * channel tile) pairs.
 */
#include "kernels.h"

#define IN_COLS 32		/* channels per block */
#define IN_LANES 16		/* T lanes per block */
#define IN_MAXGRID 65535

/* out (R,T,C) = y or += scale y, from in (R,T,C); ctiles = ceil(C/32) */
static __global__ void
instancenorm_kernel(float *out, const float *in, int R, int T, int C,
    float eps, int acc, float scale, int ctiles)
{
	__shared__ double sh[IN_LANES][IN_COLS];
	int tx = threadIdx.x, ty = threadIdx.y;
	size_t nblk = (size_t)R * ctiles;

	for (size_t blk = blockIdx.x; blk < nblk; blk += gridDim.x) {
		size_t r = blk / ctiles;
		int c = (int)(blk % ctiles) * IN_COLS + tx;
		const float *x = in + r * T * C + c;
		float *y = out + r * T * C + c;
		double s = 0, v = 0, m;
		float rs;

		if (c < C)
			for (int t = ty; t < T; t += IN_LANES)
				s += x[(size_t)t * C];
		sh[ty][tx] = s;
		__syncthreads();
		s = 0;
		for (int k = 0; k < IN_LANES; k++)
			s += sh[k][tx];
		m = s / T;
		__syncthreads();	/* all have read sh */
		if (c < C)
			for (int t = ty; t < T; t += IN_LANES) {
				double d = x[(size_t)t * C] - m;

				v += d * d;
			}
		sh[ty][tx] = v;
		__syncthreads();
		v = 0;
		for (int k = 0; k < IN_LANES; k++)
			v += sh[k][tx];
		v /= T;
		rs = (float)(1.0 / sqrt(v + eps));
		if (c < C)
			for (int t = ty; t < T; t += IN_LANES) {
				size_t k = (size_t)t * C;
				float n = (float)(x[k] - m) * rs;

				if (acc)
					y[k] += scale * n;
				else
					y[k] = n;
			}
		__syncthreads();	/* sh is reused by the next pair */
	}
}

extern "C" void
d2v_k_instancenorm_forward(float *out, const float *in, int R, int T,
    int C, float eps, int acc, float scale, cudaStream_t st)
{
	int ctiles;
	size_t nblk;
	dim3 block(IN_COLS, IN_LANES);

	if (R <= 0 || T <= 0 || C <= 0)
		return;
	ctiles = (C + IN_COLS - 1) / IN_COLS;
	nblk = (size_t)R * ctiles;
	instancenorm_kernel<<<(unsigned)(nblk < IN_MAXGRID ? nblk : IN_MAXGRID),
	    block, 0, st>>>(out, in, R, T, C, eps, acc, scale, ctiles);
}

#ifdef D2V_KERNEL_LAB
#include "lab.h"

#define NAME "instancenorm"

/* The CPU reference in double: y (R,T,C) from in (R,T,C). */
static void
ref_norm(double *y, const float *in, int R, int T, int C, double eps)
{
	for (int r = 0; r < R; r++)
		for (int c = 0; c < C; c++) {
			const float *x = in + (size_t)r * T * C + c;
			double m = 0, v = 0, rs;

			for (int t = 0; t < T; t++)
				m += x[(size_t)t * C];
			m /= T;
			for (int t = 0; t < T; t++)
				v += (x[(size_t)t * C] - m) * (x[(size_t)t * C] - m);
			v /= T;
			rs = 1.0 / sqrt(v + eps);
			for (int t = 0; t < T; t++)
				y[(size_t)r * T * C + (size_t)t * C + c] =
				    (x[(size_t)t * C] - m) * rs;
		}
}

/* one shape: acc 0 to a separate out, acc 0 in place, acc 1; failures */
static int
check(int R, int T, int C, lab_rng *rng, cudaStream_t st)
{
	size_t n = (size_t)R * T * C;
	float eps = 1e-5f, scale = 0.7f;
	float *x = (float *)lab_halloc(n * sizeof(float));
	float *o0 = (float *)lab_halloc(n * sizeof(float));
	float *got = (float *)lab_halloc(n * sizeof(float));
	double *y = (double *)lab_halloc(n * sizeof(double));
	double *ref = (double *)lab_halloc(n * sizeof(double));
	float *d_x, *d_o;
	char what[96];
	int fails = 0;

	/* channels with their own offsets and spreads */
	for (int r = 0; r < R; r++)
		for (int c = 0; c < C; c++) {
			float off = lab_uniform(rng, -3, 3);
			float sp = lab_uniform(rng, 0.2f, 2);

			for (int t = 0; t < T; t++)
				x[((size_t)r * T + t) * C + c] = off +
				    sp * lab_uniform(rng, -1, 1);
		}
	lab_fill(o0, n, -1, 1, rng);
	ref_norm(y, x, R, T, C, eps);
	d_x = lab_dup(x, n);
	d_o = lab_dup(o0, n);

	d2v_k_instancenorm_forward(d_o, d_x, R, T, C, eps, 0, scale, st);
	lab_sync(st);
	lab_get(got, d_o, n);
	snprintf(what, sizeof(what), "acc 0 R %d T %d C %d", R, T, C);
	fails += lab_report(NAME, what, lab_max_rel_err(got, y, n, 1e-2), 1e-5);

	for (size_t i = 0; i < n; i++)
		ref[i] = o0[i] + scale * y[i];
	LAB_CK(cudaMemcpy(d_o, o0, n * sizeof(float), cudaMemcpyHostToDevice));
	d2v_k_instancenorm_forward(d_o, d_x, R, T, C, eps, 1, scale, st);
	lab_sync(st);
	lab_get(got, d_o, n);
	snprintf(what, sizeof(what), "acc 1 (+= 0.7 y) R %d T %d C %d", R, T, C);
	fails += lab_report(NAME, what, lab_max_rel_err(got, ref, n, 1e-2),
	    1e-4);

	d2v_k_instancenorm_forward(d_x, d_x, R, T, C, eps, 0, scale, st);
	lab_sync(st);
	lab_get(got, d_x, n);
	snprintf(what, sizeof(what), "acc 0 in place R %d T %d C %d", R, T, C);
	fails += lab_report(NAME, what, lab_max_rel_err(got, y, n, 1e-2), 1e-5);

	free(x), free(o0), free(got), free(y), free(ref);
	cudaFree(d_x), cudaFree(d_o);
	return fails;
}

typedef struct bench_arg {
	float *in, *out;
	int R, T, C, acc;
} bench_arg;

static void
bench_run(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_instancenorm_forward(a->out, a->in, a->R, a->T, a->C, 1e-5f,
	    a->acc, 0.5f, st);
}

int
main(void)
{
	static const int ts[] = {1, 5, 197};
	static const int cs[] = {1, 31, 192, 384, 768};
	lab_rng rng = {5};
	cudaStream_t st;
	bench_arg a;
	size_t n;
	int fails = 0;
	double ms;
	char what[96];

	lab_need_gpu(NAME);
	LAB_CK(cudaStreamCreate(&st));
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < 5; j++)
			fails += check(2, ts[i], cs[j], &rng, st);
	fails += check(1, 1, 1, &rng, st);
	fails += check(8, 197, 768, &rng, st);
	fails += check(3, 1001, 33, &rng, st);
	lab_verdict(NAME, fails);

	a.R = 64;
	a.T = 500;
	a.C = 768;
	n = (size_t)a.R * a.T * a.C;
	a.in = (float *)lab_dalloc(n * sizeof(float));
	a.out = (float *)lab_dalloc(n * sizeof(float));
	lab_dev_fill(a.in, n, -2, 2, 1);
	lab_dev_fill(a.out, n, -1, 1, 2);
	a.acc = 0;
	snprintf(what, sizeof(what), "acc 0 R %d T %d C %d", a.R, a.T, a.C);
	ms = lab_time_ms(bench_run, &a, st);
	/* bytes: read in, write out (R T C floats each); the second and
	 * third reads of in are counted once (L1/L2) */
	lab_bench(NAME, what, 8.0 * n, ms);
	a.acc = 1;
	snprintf(what, sizeof(what), "acc 1 R %d T %d C %d", a.R, a.T, a.C);
	ms = lab_time_ms(bench_run, &a, st);
	/* bytes: read in, read and write out */
	lab_bench(NAME, what, 12.0 * n, ms);
	return 0;
}
#endif
