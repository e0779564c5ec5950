/*
 * tokens.cu - the student's visible tokens: the gather of the kept rows
 * (and the CLS) into the encoder's input, and its backward, the scatter of
 * their gradients back to the sequences.
 *
 * gather: one block row per output token, threads over D.
 * scatter: one thread per (sequence, token, dim): it walks the M copies
 * of its sequence in order and finds its token in each copy's ascending
 * idx by binary search, so every sum has a fixed order and no atomics.
 * dfirst: one thread per dim, the rows in order.
 */
#include "kernels.h"

#define TOK_THREADS 128
#define TOK_MAXGRID 65535

/* out (R, E+V, D) from src (R/M, N, D), idx (R,V), first (D) */
static __global__ void
gather_kernel(float *out, const float *src, const int *idx,
    const float *first, int R, int M, int N, int V, int E, int D)
{
	size_t T = (size_t)E + V, rows = (size_t)R * T;

	for (size_t t = blockIdx.x; t < rows; t += gridDim.x) {
		int r = (int)(t / T), j = (int)(t % T) - E;
		const float *s = j < 0 ? first : src + ((size_t)(r / M) * N +
		    idx[(size_t)r * V + j]) * D;
		float *o = out + t * D;

		for (int d = threadIdx.x; d < D; d += blockDim.x)
			o[d] = s[d];
	}
}

/* dsrc (R/M, N, D) += din (R, E+V, D) at idx (R,V) */
static __global__ void
scatter_kernel(float *dsrc, const float *din, const int *idx, int R, int M,
    int N, int V, int E, int D)
{
	size_t n_all = (size_t)(R / M) * N * D;
	size_t stride = (size_t)gridDim.x * blockDim.x;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	    i < n_all; i += stride) {
		int d = (int)(i % D), n = (int)(i / D % N), b = (int)(i / D / N);
		float acc = dsrc[i];

		for (int r = b * M; r < (b + 1) * M; r++) {
			const int *k = idx + (size_t)r * V;
			int lo = 0, hi = V - 1;

			while (lo <= hi) { /* k ascending: find n */
				int mid = (lo + hi) / 2;

				if (k[mid] < n)
					lo = mid + 1;
				else if (k[mid] > n)
					hi = mid - 1;
				else {
					acc += din[((size_t)r * (E + V) + E + mid) *
					    D + d];
					break;
				}
			}
		}
		dsrc[i] = acc;
	}
}

/* dfirst (D) += the first token of each row of din (R, E+V, D) */
static __global__ void
first_kernel(float *dfirst, const float *din, int R, int T, int D)
{
	int d = blockIdx.x * blockDim.x + threadIdx.x;
	float acc;

	if (d >= D)
		return;
	acc = dfirst[d];
	for (int r = 0; r < R; r++)
		acc += din[(size_t)r * T * D + d];
	dfirst[d] = acc;
}

extern "C" void
d2v_k_gather_tokens(float *out, const float *src, const int *idx,
    const float *first, int R, int M, int N, int V, int E, int D,
    cudaStream_t st)
{
	size_t rows = (size_t)R * (E + V);

	if (rows == 0 || D <= 0)
		return;
	gather_kernel<<<(unsigned)(rows < TOK_MAXGRID ? rows : TOK_MAXGRID),
	    TOK_THREADS, 0, st>>>(out, src, idx, first, R, M, N, V, E, D);
}

extern "C" void
d2v_k_scatter_tokens(float *dsrc, float *dfirst, const float *din,
    const int *idx, int R, int M, int N, int V, int E, int D,
    cudaStream_t st)
{
	size_t n = (size_t)(R / M) * N * D, grid = (n + 255) / 256;

	if (n == 0)
		return;
	if (grid > 8192)
		grid = 8192;
	scatter_kernel<<<(unsigned)grid, 256, 0, st>>>(dsrc, din, idx, R, M, N,
	    V, E, D);
	if (dfirst != NULL && E)
		first_kernel<<<(D + 127) / 128, 128, 0, st>>>(dfirst, din, R,
		    E + V, D);
}

#ifdef D2V_KERNEL_LAB
#include "lab.h"

#define NAME "tokens"

/* one shape: gather and scatter against the plain loops; failures */
static int
check(int R, int M, int N, int V, int E, int D, lab_rng *rng,
    cudaStream_t st)
{
	int B = R / M, T = E + V;
	size_t no = (size_t)R * T * D, ns = (size_t)B * N * D;
	float *src = (float *)lab_halloc(ns * sizeof(float));
	float *first = (float *)lab_halloc(D * sizeof(float));
	float *din = (float *)lab_halloc(no * sizeof(float));
	float *ds0 = (float *)lab_halloc(ns * sizeof(float));
	float *df0 = (float *)lab_halloc(D * sizeof(float));
	float *got = (float *)lab_halloc((no > ns ? no : ns) * sizeof(float));
	double *ref = (double *)lab_halloc((no > ns ? no : ns) * sizeof(double));
	int *idx = (int *)lab_halloc((size_t)R * V * sizeof(int));
	int *d_idx, fails = 0;
	float *d_src, *d_first, *d_out, *d_din, *d_ds, *d_df;
	char what[96];

	lab_fill(src, ns, -1, 1, rng);
	lab_fill(first, D, -1, 1, rng);
	lab_fill(din, no, -1, 1, rng);
	lab_fill(ds0, ns, -1, 1, rng);
	lab_fill(df0, D, -1, 1, rng);
	for (int r = 0; r < R; r++) { /* V of the N tokens, ascending */
		int j = 0;

		for (int n = 0; n < N && j < V; n++)
			if ((int)(lab_uniform(rng, 0, 1) * (N - n)) < V - j)
				idx[(size_t)r * V + j++] = n;
	}
	LAB_CK(cudaMalloc((void **)&d_idx, (size_t)R * V * sizeof(int)));
	LAB_CK(cudaMemcpy(d_idx, idx, (size_t)R * V * sizeof(int),
	    cudaMemcpyHostToDevice));
	d_src = lab_dup(src, ns);
	d_first = lab_dup(first, D);
	d_din = lab_dup(din, no);
	d_ds = lab_dup(ds0, ns);
	d_df = lab_dup(df0, D);
	d_out = (float *)lab_dalloc(no * sizeof(float));

	for (int r = 0; r < R; r++)
		for (int t = 0; t < T; t++)
			for (int d = 0; d < D; d++)
				ref[((size_t)r * T + t) * D + d] = t < E ? first[d] :
				    src[((size_t)(r / M) * N + idx[(size_t)r * V + t -
				    E]) * D + d];
	d2v_k_gather_tokens(d_out, d_src, d_idx, E ? d_first : NULL, R, M, N,
	    V, E, D, st);
	lab_sync(st);
	lab_get(got, d_out, no);
	snprintf(what, sizeof what, "gather R %d M %d N %d V %d E %d D %d", R,
	    M, N, V, E, D);
	fails += lab_report(NAME, what, lab_max_rel_err(got, ref, no, 1e-30),
	    0);

	/* the scatter adds in float in the CPU backend's order (row r
	 * ascending for each destination): the same bits are expected */
	{
		float *f = (float *)lab_halloc(ns * sizeof(float));

		memcpy(f, ds0, ns * sizeof(float));
		for (int r = 0; r < R; r++)
			for (int j = 0; j < V; j++)
				for (int d = 0; d < D; d++)
					f[((size_t)(r / M) * N + idx[(size_t)r * V + j]) *
					    D + d] += din[((size_t)r * T + E + j) * D + d];
		for (size_t i = 0; i < ns; i++)
			ref[i] = f[i];
		free(f);
	}
	d2v_k_scatter_tokens(d_ds, E ? d_df : NULL, d_din, d_idx, R, M, N, V,
	    E, D, st);
	lab_sync(st);
	lab_get(got, d_ds, ns);
	snprintf(what, sizeof what, "scatter (+=) R %d M %d N %d V %d", R, M,
	    N, V);
	fails += lab_report(NAME, what, lab_max_rel_err(got, ref, ns, 1e-30),
	    0);
	if (E) {
		for (int d = 0; d < D; d++) {
			float f = df0[d];

			for (int r = 0; r < R; r++)
				f += din[(size_t)r * T * D + d];
			ref[d] = f;
		}
		lab_get(got, d_df, D);
		fails += lab_report(NAME, "scatter dfirst (+=), in row order",
		    lab_max_rel_err(got, ref, D, 1e-30), 0);
	}
	free(src), free(first), free(din), free(ds0), free(df0), free(got);
	free(ref), free(idx);
	cudaFree(d_idx), cudaFree(d_src), cudaFree(d_first), cudaFree(d_din);
	cudaFree(d_ds), cudaFree(d_df), cudaFree(d_out);
	return fails;
}

typedef struct bench_arg {
	float *out, *src, *ds;
	int *idx;
	int R, M, N, V, D;
} bench_arg;

static void
bench_gather(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_gather_tokens(a->out, a->src, a->idx, NULL, a->R, a->M, a->N,
	    a->V, 0, a->D, st);
}

static void
bench_scatter(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_scatter_tokens(a->ds, NULL, a->out, a->idx, a->R, a->M, a->N,
	    a->V, 0, a->D, st);
}

int
main(void)
{
	lab_rng rng = {11};
	cudaStream_t st;
	bench_arg a;
	int fails = 0, *idx;
	size_t no;

	lab_need_gpu(NAME);
	LAB_CK(cudaStreamCreate(&st));
	fails += check(1, 1, 1, 1, 0, 1, &rng, st);
	fails += check(6, 3, 7, 2, 1, 31, &rng, st);
	fails += check(32, 8, 196, 39, 1, 192, &rng, st);
	fails += check(16, 8, 49, 10, 0, 384, &rng, st);
	lab_verdict(NAME, fails);

	/* B1: 4 images, 8 copies, 39 of 196 tokens kept, width 192 */
	a.R = 32; a.M = 8; a.N = 196; a.V = 39; a.D = 192;
	no = (size_t)a.R * a.V * a.D;
	a.out = (float *)lab_dalloc(no * sizeof(float));
	a.src = (float *)lab_dalloc((size_t)4 * a.N * a.D * sizeof(float));
	a.ds = (float *)lab_dalloc((size_t)4 * a.N * a.D * sizeof(float));
	lab_dev_fill(a.src, (size_t)4 * a.N * a.D, -1, 1, 1);
	lab_dev_fill(a.out, no, -1, 1, 2);
	idx = (int *)lab_halloc((size_t)a.R * a.V * sizeof(int));
	for (int r = 0; r < a.R; r++)
		for (int j = 0; j < a.V; j++)
			idx[(size_t)r * a.V + j] = j * 5;
	LAB_CK(cudaMalloc((void **)&a.idx, (size_t)a.R * a.V * sizeof(int)));
	LAB_CK(cudaMemcpy(a.idx, idx, (size_t)a.R * a.V * sizeof(int),
	    cudaMemcpyHostToDevice));
	/* bytes: read and write each gathered row */
	lab_bench(NAME, "gather B1", 2.0 * no * sizeof(float),
	    lab_time_ms(bench_gather, &a, st));
	/* bytes: dsrc read and written, din read */
	lab_bench(NAME, "scatter B1", (2.0 * 4 * a.N * a.D + no) *
	    sizeof(float), lab_time_ms(bench_scatter, &a, st));
	return 0;
}
#endif
