/*
 * sumsq.cu - the sum of squares of x (n), in double (the gradient norm of
 * the optimiser's clipping).
 *
 * Deterministic in two kernels.  The first has nb blocks of 256 threads
 * (nb a function of n only, at most SS_MAXBLOCKS): each thread adds
 * (double) x^2 over a fixed grid-stride set of elements, a fixed tree in
 * shared memory sums the block, and the block's sum goes to scratch[b].
 * The second, one block, adds the nb partials the same way and writes
 * *out.  n = 0 gives 0.
 */
#include "kernels.h"

#define SS_THREADS 256
#define SS_MAXBLOCKS 1024
#define SS_PER_BLOCK 4096	/* elements a block, below the cap */

/* sum of the SS_THREADS values of sh, in a fixed tree; all threads of
 * the block must call it; the result is in sh[0] */
static __device__ void
block_sum(double *sh)
{
	for (int k = SS_THREADS / 2; k > 0; k >>= 1) {
		if ((int)threadIdx.x < k)
			sh[threadIdx.x] += sh[threadIdx.x + k];
		__syncthreads();
	}
}

/* part (gridDim.x) = per block sum of x (n) squared */
static __global__ void
sumsq_partial(double *part, const float *x, size_t n)
{
	__shared__ double sh[SS_THREADS];
	size_t stride = (size_t)gridDim.x * SS_THREADS;
	double acc = 0;

	for (size_t i = (size_t)blockIdx.x * SS_THREADS + threadIdx.x; i < n;
	    i += stride) {
		double v = x[i];

		acc += v * v;
	}
	sh[threadIdx.x] = acc;
	__syncthreads();
	block_sum(sh);
	if (threadIdx.x == 0)
		part[blockIdx.x] = sh[0];
}

/* *out = sum of part (nb); one block */
static __global__ void
sumsq_final(double *out, const double *part, int nb)
{
	__shared__ double sh[SS_THREADS];
	double acc = 0;

	for (int k = threadIdx.x; k < nb; k += SS_THREADS)
		acc += part[k];
	sh[threadIdx.x] = acc;
	__syncthreads();
	block_sum(sh);
	if (threadIdx.x == 0)
		*out = sh[0];
}

/* blocks of the first kernel: about SS_PER_BLOCK elements each, at least
 * 1, at most SS_MAXBLOCKS */
static int
sumsq_blocks(size_t n)
{
	size_t b = (n + SS_PER_BLOCK - 1) / SS_PER_BLOCK;

	if (b < 1)
		b = 1;
	return (int)(b < SS_MAXBLOCKS ? b : SS_MAXBLOCKS);
}

extern "C" size_t
d2v_k_sumsq_scratch(size_t n)
{
	return (size_t)sumsq_blocks(n);
}

extern "C" void
d2v_k_sumsq(double *out, const float *x, size_t n, double *scratch,
    cudaStream_t st)
{
	int nb = sumsq_blocks(n);

	sumsq_partial<<<nb, SS_THREADS, 0, st>>>(scratch, x, n);
	sumsq_final<<<1, SS_THREADS, 0, st>>>(out, scratch, nb);
}

#ifdef D2V_KERNEL_LAB
#include "lab.h"

#define NAME "sumsq"

/* one sum over n values, twice (the same bits both times); failures */
static int
check(size_t n, lab_rng *rng, cudaStream_t st)
{
	float *x = (float *)lab_halloc(n * sizeof(float));
	long double lref = 0;	/* 64-bit mantissa: exact enough here */
	double ref, got = -1, again = -2, err;
	double *d_out, *d_scr;
	float *d_x;
	char what[96];
	int fails;

	lab_fill(x, n, -3, 3, rng);
	for (size_t i = 0; i < n; i++)
		lref += (double)x[i] * x[i];
	ref = (double)lref;
	d_x = lab_dup(x, n);
	d_out = (double *)lab_dalloc(sizeof(double));
	d_scr = (double *)lab_dalloc(d2v_k_sumsq_scratch(n) * sizeof(double));
	d2v_k_sumsq(d_out, d_x, n, d_scr, st);
	lab_sync(st);
	LAB_CK(cudaMemcpy(&got, d_out, sizeof(double), cudaMemcpyDeviceToHost));
	d2v_k_sumsq(d_out, d_x, n, d_scr, st);
	lab_sync(st);
	LAB_CK(cudaMemcpy(&again, d_out, sizeof(double),
	    cudaMemcpyDeviceToHost));
	/* relative, absolute below 1e-30; a second run must match bit for
	 * bit (determinism) */
	err = fabs(got - ref) / fmax(fabs(ref), 1e-30);
	if (memcmp(&got, &again, sizeof(double)) != 0)
		err = INFINITY;
	snprintf(what, sizeof(what), "n %zu (and repeatable)", n);
	fails = lab_report(NAME, what, err, 1e-12);
	free(x);
	cudaFree(d_x), cudaFree(d_out), cudaFree(d_scr);
	return fails;
}

typedef struct bench_arg {
	double *out, *scr;
	float *x;
	size_t n;
} bench_arg;

static void
bench_run(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_sumsq(a->out, a->x, a->n, a->scr, st);
}

int
main(void)
{
	static const size_t ns[] = {0, 1, 7, 31, 4097, 1000003,
	    ((size_t)1 << 25) + 1};
	lab_rng rng = {19};
	cudaStream_t st;
	bench_arg a;
	int fails = 0;
	double ms;
	char what[96];

	lab_need_gpu(NAME);
	LAB_CK(cudaStreamCreate(&st));
	for (int i = 0; i < 7; i++)
		fails += check(ns[i], &rng, st);
	lab_verdict(NAME, fails);

	a.n = (size_t)1 << 26;
	a.x = (float *)lab_dalloc(a.n * sizeof(float));
	a.out = (double *)lab_dalloc(sizeof(double));
	a.scr = (double *)lab_dalloc(d2v_k_sumsq_scratch(a.n) * sizeof(double));
	lab_dev_fill(a.x, a.n, -1, 1, 1);
	snprintf(what, sizeof(what), "n %zu", a.n);
	ms = lab_time_ms(bench_run, &a, st);
	/* bytes: read x (n floats); the partials are small */
	lab_bench(NAME, what, 4.0 * a.n, ms);
	return 0;
}
#endif
