/*
 * adamw.cu - one AdamW step over n parameters, fp32 state, the header's
 * formulas in float:
 *
 *     m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *     p -= decay p;  p -= step m / (sqrt(v) + eps)
 *
 * A grid-stride loop with size_t indices, 256 threads a block, at most
 * ADAMW_MAXGRID blocks.
 */
#include "kernels.h"

#define ADAMW_THREADS 256
#define ADAMW_MAXGRID 8192

/* p, m, v (n) updated from g (n); c1 = 1 - b1, c2 = 1 - b2 */
static __global__ void
adamw_kernel(float *p, const float *g, float *m, float *v, size_t n,
    float b1, float c1, float b2, float c2, float step, float eps,
    float decay)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	    i += stride) {
		float gi = g[i];
		float mi = b1 * m[i] + c1 * gi;
		float vi = b2 * v[i] + c2 * (gi * gi);
		float pi = p[i];

		m[i] = mi;
		v[i] = vi;
		pi -= decay * pi;
		pi -= step * mi / (sqrtf(vi) + eps);
		p[i] = pi;
	}
}

extern "C" void
d2v_k_adamw(float *p, const float *g, float *m, float *v, size_t n,
    float b1, float b2, float step, float eps, float decay, cudaStream_t st)
{
	size_t grid = (n + ADAMW_THREADS - 1) / ADAMW_THREADS;

	if (n == 0)
		return;
	if (grid > ADAMW_MAXGRID)
		grid = ADAMW_MAXGRID;
	adamw_kernel<<<(unsigned)grid, ADAMW_THREADS, 0, st>>>(p, g, m, v, n, b1,
	    1.0f - b1, b2, 1.0f - b2, step, eps, decay);
}

#ifdef D2V_KERNEL_LAB
#include "lab.h"

#define NAME "adamw"

/* The CPU reference in double from the float inputs and parameters:
 * rp, rm, rv (n). */
static void
ref_adamw(double *rp, double *rm, double *rv, const float *p, const float *g,
    const float *m, const float *v, size_t n, double b1, double b2,
    double step, double eps, double decay)
{
	for (size_t i = 0; i < n; i++) {
		double mi = b1 * m[i] + (1 - b1) * g[i];
		double vi = b2 * v[i] + (1 - b2) * (double)g[i] * g[i];
		double pi = p[i];

		pi -= decay * pi;
		pi -= step * mi / (sqrt(vi) + eps);
		rp[i] = pi;
		rm[i] = mi;
		rv[i] = vi;
	}
}

/* one step on n parameters with weight decay (or not); failures */
static int
check(size_t n, float decay, lab_rng *rng, cudaStream_t st)
{
	float b1 = 0.9f, b2 = 0.999f, step = 1e-3f, eps = 1e-8f;
	float *p = (float *)lab_halloc(n * sizeof(float));
	float *g = (float *)lab_halloc(n * sizeof(float));
	float *m = (float *)lab_halloc(n * sizeof(float));
	float *v = (float *)lab_halloc(n * sizeof(float));
	float *got = (float *)lab_halloc(n * sizeof(float));
	double *rp = (double *)lab_halloc(n * sizeof(double));
	double *rm = (double *)lab_halloc(n * sizeof(double));
	double *rv = (double *)lab_halloc(n * sizeof(double));
	float *d_p, *d_g, *d_m, *d_v;
	char what[96];
	int fails = 0;

	lab_fill(p, n, -1, 1, rng);
	lab_fill(g, n, -1, 1, rng);
	lab_fill(m, n, -0.1f, 0.1f, rng);
	lab_fill(v, n, 0, 1e-2f, rng);
	/* a few fresh states, as at the first step */
	for (size_t i = 0; i < n; i += 97)
		m[i] = v[i] = 0;
	d_p = lab_dup(p, n);
	d_g = lab_dup(g, n);
	d_m = lab_dup(m, n);
	d_v = lab_dup(v, n);
	ref_adamw(rp, rm, rv, p, g, m, v, n, b1, b2, step, eps, decay);
	d2v_k_adamw(d_p, d_g, d_m, d_v, n, b1, b2, step, eps, decay, st);
	lab_sync(st);
	lab_get(got, d_p, n);
	snprintf(what, sizeof(what), "p n %zu decay %g", n, decay);
	fails += lab_report(NAME, what, lab_max_rel_err(got, rp, n, 1e-3), 1e-5);
	lab_get(got, d_m, n);
	snprintf(what, sizeof(what), "m n %zu decay %g", n, decay);
	fails += lab_report(NAME, what, lab_max_rel_err(got, rm, n, 1e-2), 1e-5);
	lab_get(got, d_v, n);
	snprintf(what, sizeof(what), "v n %zu decay %g", n, decay);
	fails += lab_report(NAME, what, lab_max_rel_err(got, rv, n, 1e-6), 1e-5);

	free(p), free(g), free(m), free(v), free(got);
	free(rp), free(rm), free(rv);
	cudaFree(d_p), cudaFree(d_g), cudaFree(d_m), cudaFree(d_v);
	return fails;
}

typedef struct bench_arg {
	float *p, *g, *m, *v;
	size_t n;
} bench_arg;

static void
bench_run(void *q, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)q;

	d2v_k_adamw(a->p, a->g, a->m, a->v, a->n, 0.9f, 0.999f, 1e-3f, 1e-8f,
	    1e-5f, st);
}

int
main(void)
{
	static const size_t ns[] = {1, 7, 31, 1000003, (size_t)197 * 8 * 3072};
	lab_rng rng = {13};
	cudaStream_t st;
	bench_arg a;
	int fails = 0;
	double ms;
	char what[96];

	lab_need_gpu(NAME);
	LAB_CK(cudaStreamCreate(&st));
	for (int i = 0; i < 5; i++) {
		fails += check(ns[i], 0, &rng, st);
		fails += check(ns[i], 1e-3f * 0.05f, &rng, st);
	}
	lab_verdict(NAME, fails);

	a.n = (size_t)1 << 26;
	a.p = (float *)lab_dalloc(a.n * sizeof(float));
	a.g = (float *)lab_dalloc(a.n * sizeof(float));
	a.m = (float *)lab_dalloc(a.n * sizeof(float));
	a.v = (float *)lab_dalloc(a.n * sizeof(float));
	lab_dev_fill(a.p, a.n, -1, 1, 1);
	lab_dev_fill(a.g, a.n, -1, 1, 2);
	lab_dev_fill(a.m, a.n, -0.1f, 0.1f, 3);
	lab_dev_fill(a.v, a.n, 0, 1e-2f, 4);
	snprintf(what, sizeof(what), "step n %zu", a.n);
	ms = lab_time_ms(bench_run, &a, st);
	/* bytes: read p, g, m, v; write p, m, v (7 floats a parameter) */
	lab_bench(NAME, what, 28.0 * a.n, ms);
	return 0;
}
#endif
