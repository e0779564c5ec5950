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
 *
 * The decoder's side: place (the encoder's rows back at their positions,
 * times an optional scale) and its backward pick; mask_tokens (the
 * masked rows replaced by a fill) and its backward unmask_tokens.
 * place, pick, mask: one block row per token row, threads over D.
 * unmask: one thread per (sequence, token, dim) walks the M copies in
 * order, as the scatter; dfill: one thread per dim walks all R N rows in
 * order (a float sum in the CPU's order cannot be split).  pick rounds
 * the product before the sum (no FMA), as the CPU backend does.
 *
 * Rows of a table by index (token embeddings): gather_rows, one block row
 * per output row, threads over D.  scatter_rows: thread (g, d) owns
 * column d of the table rows whose id & (G-1) == g, G a power of two (at
 * most n, G G D <= 2^21): it walks all n ids in order and adds the rows
 * it owns, so each element gets its additions in increasing i, with no
 * atomics and no scratch.  G = 1 would be the plain column walk; the
 * skipped ids cost a (warp-broadcast) load each.
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

/* row idx[r,j] of out (R,N,D) = row E+j of in (R,E+V,D) (times row j of
 * scale (R,V,D)) */
static __global__ void
place_kernel(float *out, const float *in, const int *idx, const float *scale,
    int R, int N, int V, int E, int D)
{
	size_t rows = (size_t)R * V;

	for (size_t t = blockIdx.x; t < rows; t += gridDim.x) {
		size_t r = t / V, j = t % V;
		const float *s = in + (r * (E + V) + E + j) * D;
		float *o = out + (r * N + idx[t]) * D;

		if (scale == NULL)
			for (int d = threadIdx.x; d < D; d += blockDim.x)
				o[d] = s[d];
		else {
			const float *c = scale + t * D;

			for (int d = threadIdx.x; d < D; d += blockDim.x)
				o[d] = s[d] * c[d];
		}
	}
}

/* row E+j of dout (R,E+V,D) += row idx[r,j] of din (R,N,D) (times row j
 * of scale (R,V,D)) */
static __global__ void
pick_kernel(float *dout, const float *din, const int *idx, const float *scale,
    int R, int N, int V, int E, int D)
{
	size_t rows = (size_t)R * V;

	for (size_t t = blockIdx.x; t < rows; t += gridDim.x) {
		size_t r = t / V, j = t % V;
		const float *s = din + (r * N + idx[t]) * D;
		float *o = dout + (r * (E + V) + E + j) * D;

		if (scale == NULL)
			for (int d = threadIdx.x; d < D; d += blockDim.x)
				o[d] += s[d];
		else {
			const float *c = scale + t * D;

			/* the product rounded, then the sum: no FMA */
			for (int d = threadIdx.x; d < D; d += blockDim.x)
				o[d] = __fadd_rn(o[d], __fmul_rn(s[d], c[d]));
		}
	}
}

/* row (r,n) of out (R,N,D) = fill (or 0) where masked, else row (r/M, n)
 * of src (R/M,N,D) */
static __global__ void
mask_kernel(float *out, const float *src, const unsigned char *mask,
    const float *fill, int R, int M, int N, int D)
{
	size_t rows = (size_t)R * N;

	for (size_t t = blockIdx.x; t < rows; t += gridDim.x) {
		size_t r = t / N, n = t % N;
		float *o = out + t * D;

		if (mask[t]) {
			if (fill == NULL)
				for (int d = threadIdx.x; d < D; d += blockDim.x)
					o[d] = 0;
			else
				for (int d = threadIdx.x; d < D; d += blockDim.x)
					o[d] = fill[d];
		} else {
			const float *s = src + ((r / M) * N + n) * D;

			for (int d = threadIdx.x; d < D; d += blockDim.x)
				o[d] = s[d];
		}
	}
}

/* dsrc (R/M,N,D) += the unmasked rows of din (R,N,D), copies in order */
static __global__ void
unmask_kernel(float *dsrc, const float *din, const unsigned char *mask,
    int R, int M, int N, int D)
{
	size_t n_all = (size_t)(R / M) * N * D;
	size_t stride = (size_t)gridDim.x * blockDim.x;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	    i < n_all; i += stride) {
		size_t d = i % D, n = i / D % N, b = i / D / N;
		float acc = dsrc[i];

		for (size_t r = b * M; r < (b + 1) * M; r++)
			if (!mask[r * N + n])
				acc += din[(r * N + n) * D + d];
		dsrc[i] = acc;
	}
}

/* dfill (D) += the masked rows of din (rows, D), in row order; the loads
 * go ahead of the (ordered) adds in groups of 8 */
static __global__ void
fill_grad_kernel(float *dfill, const float *din, const unsigned char *mask,
    size_t rows, int D)
{
	int d = blockIdx.x * blockDim.x + threadIdx.x;
	size_t k = 0;
	float acc;

	if (d >= D)
		return;
	acc = dfill[d];
	for (; k + 8 <= rows; k += 8) {
		float v[8];
		unsigned char m[8];

		for (int j = 0; j < 8; j++) {
			m[j] = mask[k + j];
			v[j] = din[(k + j) * D + d];
		}
		for (int j = 0; j < 8; j++)
			if (m[j])
				acc += v[j];
	}
	for (; k < rows; k++)
		if (mask[k])
			acc += din[k * D + d];
	dfill[d] = acc;
}

extern "C" void
d2v_k_place_tokens(float *out, const float *in, const int *idx,
    const float *scale, int R, int N, int V, int E, int D, cudaStream_t st)
{
	size_t rows = (size_t)R * V;

	if (R <= 0 || V <= 0 || D <= 0)
		return;
	place_kernel<<<(unsigned)(rows < TOK_MAXGRID ? rows : TOK_MAXGRID),
	    TOK_THREADS, 0, st>>>(out, in, idx, scale, R, N, V, E, D);
}

extern "C" void
d2v_k_pick_tokens(float *dout, const float *din, const int *idx,
    const float *scale, int R, int N, int V, int E, int D, cudaStream_t st)
{
	size_t rows = (size_t)R * V;

	if (dout == NULL || R <= 0 || V <= 0 || D <= 0)
		return;
	pick_kernel<<<(unsigned)(rows < TOK_MAXGRID ? rows : TOK_MAXGRID),
	    TOK_THREADS, 0, st>>>(dout, din, idx, scale, R, N, V, E, D);
}

extern "C" void
d2v_k_mask_tokens(float *out, const float *src, const unsigned char *mask,
    const float *fill, int R, int M, int N, int D, cudaStream_t st)
{
	size_t rows = (size_t)R * N;

	if (R <= 0 || N <= 0 || D <= 0)
		return;
	mask_kernel<<<(unsigned)(rows < TOK_MAXGRID ? rows : TOK_MAXGRID),
	    TOK_THREADS, 0, st>>>(out, src, mask, fill, R, M, N, D);
}

extern "C" void
d2v_k_unmask_tokens(float *dsrc, float *dfill, const float *din,
    const unsigned char *mask, int R, int M, int N, int D, cudaStream_t st)
{
	size_t n, grid;

	if (R <= 0 || M <= 0 || N <= 0 || D <= 0)
		return;
	n = (size_t)(R / M) * N * D;
	grid = (n + 255) / 256;
	if (grid > 8192)
		grid = 8192;
	if (dsrc != NULL && n > 0)
		unmask_kernel<<<(unsigned)grid, 256, 0, st>>>(dsrc, din, mask, R,
		    M, N, D);
	if (dfill != NULL)
		fill_grad_kernel<<<(D + 127) / 128, 128, 0, st>>>(dfill, din,
		    mask, (size_t)R * N, D);
}

/* row i of out (n,D) = row ids[i] of table (rows,D) */
static __global__ void
gather_rows_kernel(float *out, const float *table, const int *ids, int n,
    int D)
{
	for (size_t i = blockIdx.x; i < (size_t)n; i += gridDim.x) {
		const float *s = table + (size_t)ids[i] * D;
		float *o = out + i * D;

		for (int d = threadIdx.x; d < D; d += blockDim.x)
			o[d] = s[d];
	}
}

/* row ids[i] of dtable (rows,D) += row i of din (n,D), i in order; thread
 * t: column d = t % D of the rows whose id & (G-1) == g = t / D */
static __global__ void
scatter_rows_kernel(float *dtable, const float *din, const int *ids, int n,
    int D, unsigned G)
{
	size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	unsigned g;
	int d;

	if (t >= (size_t)G * D)
		return;
	d = (int)(t % D);
	g = (unsigned)(t / D);
	for (int i = 0; i < n; i++) {
		unsigned id = (unsigned)ids[i];

		if ((id & (G - 1)) == g) {
			float *o = dtable + (size_t)id * D + d;

			*o = *o + din[(size_t)i * D + d];
		}
	}
}

extern "C" void
d2v_k_gather_rows(float *out, const float *table, const int *ids, int n,
    int D, cudaStream_t st)
{
	if (n <= 0 || D <= 0)
		return;
	gather_rows_kernel<<<(unsigned)(n < TOK_MAXGRID ? n : TOK_MAXGRID),
	    TOK_THREADS, 0, st>>>(out, table, ids, n, D);
}

extern "C" void
d2v_k_scatter_rows(float *dtable, const float *din, const int *ids, int n,
    int D, cudaStream_t st)
{
	unsigned G = 1;
	size_t threads;

	if (dtable == NULL || n <= 0 || D <= 0)
		return;
	/* the groups: a power of two, G <= n.  A thread's chain of adds is
	 * about n / G long and the ids scanned are n G D in all: G G D <=
	 * 2^21 balances the two (a guess, to be tuned on a GPU): G 32 at D
	 * 768, 256 at D 31, 1024 at D 1. */
	while (G * 2 <= (unsigned)n && (size_t)G * 2 * G * 2 * D <= (1u << 21))
		G *= 2;
	threads = (size_t)G * D;
	scatter_rows_kernel<<<(unsigned)((threads + TOK_THREADS - 1) /
	    TOK_THREADS), TOK_THREADS, 0, st>>>(dtable, din, ids, n, D, G);
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

/* one shape: place, pick, mask_tokens and unmask_tokens against the
 * plain loops in float (each output is one rounding, or float sums in
 * the documented order: the same bits are expected); sc: with a scale,
 * fi: with a fill and dfill; failures */
static int
check_dec(int R, int M, int N, int V, int E, int D, int sc, int fi,
    lab_rng *rng, cudaStream_t st)
{
	int B = R / M, T = E + V;
	size_t nin = (size_t)R * T * D, nout = (size_t)R * N * D;
	size_t ns = (size_t)B * N * D, nsc = (size_t)R * V * D;
	float *in = (float *)lab_halloc(nin * sizeof(float));
	float *out0 = (float *)lab_halloc(nout * sizeof(float));
	float *scale = (float *)lab_halloc(nsc * sizeof(float));
	float *src = (float *)lab_halloc(ns * sizeof(float));
	float *fill = (float *)lab_halloc(D * sizeof(float));
	float *ref = (float *)lab_halloc((nout > nin ? nout : nin) *
	    sizeof(float));
	float *got = (float *)lab_halloc((nout > nin ? nout : nin) *
	    sizeof(float));
	float *df = (float *)lab_halloc(D * sizeof(float));
	int *idx = (int *)lab_halloc((size_t)R * V * sizeof(int));
	unsigned char *mask = (unsigned char *)lab_halloc((size_t)R * N);
	float *d_in, *d_out, *d_sc, *d_src, *d_fill, *d_df;
	unsigned char *d_mask;
	int *d_idx, fails = 0;
	char what[96];

	lab_fill(in, nin, -1, 1, rng);
	lab_fill(out0, nout, -1, 1, rng);
	lab_fill(scale, nsc, 0, 2, rng);
	lab_fill(src, ns, -1, 1, rng);
	lab_fill(fill, D, -1, 1, rng);
	lab_fill(df, D, -1, 1, rng);
	for (int r = 0; r < R; r++) { /* V of the N tokens, ascending */
		int j = 0;

		for (int n = 0; n < N && j < V; n++)
			if ((int)(lab_uniform(rng, 0, 1) * (N - n)) < V - j)
				idx[(size_t)r * V + j++] = n;
	}
	for (size_t k = 0; k < (size_t)R * N; k++)
		mask[k] = lab_uniform(rng, 0, 1) < 0.6f ?
		    (unsigned char)(1 + (lab_next(rng) & 0xfe)) : 0;
	LAB_CK(cudaMalloc((void **)&d_idx, (size_t)R * V * sizeof(int)));
	LAB_CK(cudaMemcpy(d_idx, idx, (size_t)R * V * sizeof(int),
	    cudaMemcpyHostToDevice));
	LAB_CK(cudaMalloc((void **)&d_mask, (size_t)R * N));
	LAB_CK(cudaMemcpy(d_mask, mask, (size_t)R * N, cudaMemcpyHostToDevice));
	d_in = lab_dup(in, nin);
	d_out = lab_dup(out0, nout);
	d_sc = lab_dup(scale, nsc);
	d_src = lab_dup(src, ns);
	d_fill = lab_dup(fill, D);
	d_df = lab_dup(df, D);

	/* place: the other rows of out keep their values */
	memcpy(ref, out0, nout * sizeof(float));
	for (int r = 0; r < R; r++)
		for (int j = 0; j < V; j++)
			for (int d = 0; d < D; d++) {
				size_t t = (size_t)r * V + j;
				float v = in[((size_t)r * T + E + j) * D + d];

				ref[((size_t)r * N + idx[t]) * D + d] = sc ?
				    v * scale[t * D + d] : v;
			}
	d2v_k_place_tokens(d_out, d_in, d_idx, sc ? d_sc : NULL, R, N, V, E, D,
	    st);
	lab_sync(st);
	lab_get(got, d_out, nout);
	snprintf(what, sizeof what, "place R %d N %d V %d E %d D %d%s", R, N, V,
	    E, D, sc ? " scale" : "");
	fails += lab_report_bits(NAME, what, lab_bits_differ(got, ref, nout));

	/* pick (+=): din is out0 (R,N,D), dout is in (R,E+V,D) */
	LAB_CK(cudaMemcpy(d_out, out0, nout * sizeof(float),
	    cudaMemcpyHostToDevice));
	memcpy(ref, in, nin * sizeof(float));
	for (int r = 0; r < R; r++)
		for (int j = 0; j < V; j++)
			for (int d = 0; d < D; d++) {
				size_t t = (size_t)r * V + j;
				float v = out0[((size_t)r * N + idx[t]) * D + d];

				if (sc)
					v *= scale[t * D + d];
				ref[((size_t)r * T + E + j) * D + d] += v;
			}
	d2v_k_pick_tokens(d_in, d_out, d_idx, sc ? d_sc : NULL, R, N, V, E, D,
	    st);
	lab_sync(st);
	lab_get(got, d_in, nin);
	snprintf(what, sizeof what, "pick (+=) R %d N %d V %d E %d D %d%s", R,
	    N, V, E, D, sc ? " scale" : "");
	fails += lab_report_bits(NAME, what, lab_bits_differ(got, ref, nin));

	/* mask_tokens: every row of out written */
	for (int r = 0; r < R; r++)
		for (int n = 0; n < N; n++)
			for (int d = 0; d < D; d++)
				ref[((size_t)r * N + n) * D + d] = mask[(size_t)r *
				    N + n] ? (fi ? fill[d] : 0) : src[((size_t)(r /
				    M) * N + n) * D + d];
	d2v_k_mask_tokens(d_out, d_src, d_mask, fi ? d_fill : NULL, R, M, N, D,
	    st);
	lab_sync(st);
	lab_get(got, d_out, nout);
	snprintf(what, sizeof what, "mask R %d M %d N %d D %d%s", R, M, N, D,
	    fi ? " fill" : "");
	fails += lab_report_bits(NAME, what, lab_bits_differ(got, ref, nout));

	/* unmask_tokens (+=): din is out0; dsrc starts as src, dfill as df;
	 * the sums in float, in the documented order */
	LAB_CK(cudaMemcpy(d_out, out0, nout * sizeof(float),
	    cudaMemcpyHostToDevice));
	memcpy(ref, src, ns * sizeof(float));
	for (int r = 0; r < R; r++)
		for (int n = 0; n < N; n++)
			if (!mask[(size_t)r * N + n])
				for (int d = 0; d < D; d++)
					ref[((size_t)(r / M) * N + n) * D + d] +=
					    out0[((size_t)r * N + n) * D + d];
	d2v_k_unmask_tokens(d_src, fi ? d_df : NULL, d_out, d_mask, R, M, N, D,
	    st);
	lab_sync(st);
	lab_get(got, d_src, ns);
	snprintf(what, sizeof what, "unmask (+=) R %d M %d N %d D %d", R, M, N,
	    D);
	fails += lab_report_bits(NAME, what, lab_bits_differ(got, ref, ns));
	if (fi) {
		memcpy(ref, df, D * sizeof(float));
		for (size_t k = 0; k < (size_t)R * N; k++)
			if (mask[k])
				for (int d = 0; d < D; d++)
					ref[d] += out0[k * D + d];
		lab_get(got, d_df, D);
		fails += lab_report_bits(NAME, "unmask dfill (+=), in row order",
		    lab_bits_differ(got, ref, D));
	}
	free(in), free(out0), free(scale), free(src), free(fill), free(ref);
	free(got), free(df), free(idx), free(mask);
	cudaFree(d_in), cudaFree(d_out), cudaFree(d_sc), cudaFree(d_src);
	cudaFree(d_fill), cudaFree(d_df), cudaFree(d_mask), cudaFree(d_idx);
	return fails;
}

/* one shape of the table rows: gather_rows and scatter_rows against the
 * plain loops in float, table (rows,D), n ids: rep, drawn from a few hot
 * rows spread over the table (many repeats); else n distinct rows (n <=
 * rows).  The gather is a copy and the scatter adds in float in
 * increasing i, as the contract says: the same bits are expected;
 * failures */
static int
check_rows(int n, int D, int rows, int rep, lab_rng *rng, cudaStream_t st)
{
	size_t nt = (size_t)rows * D, ni = (size_t)n * D;
	float *table = (float *)lab_halloc(nt * sizeof(float));
	float *din = (float *)lab_halloc(ni * sizeof(float));
	float *ref = (float *)lab_halloc((nt > ni ? nt : ni) * sizeof(float));
	float *got = (float *)lab_halloc((nt > ni ? nt : ni) * sizeof(float));
	int *ids = (int *)lab_halloc((size_t)n * sizeof(int));
	int *d_ids, fails = 0;
	float *d_table, *d_din, *d_out;
	char what[96];

	lab_fill(table, nt, -1, 1, rng);
	lab_fill(din, ni, -1, 1, rng);
	if (rep) { /* hot = 1 + n/8 rows (at most rows), spread out */
		int hot = 1 + n / 8 < rows ? 1 + n / 8 : rows;

		for (int i = 0; i < n; i++)
			ids[i] = (int)((long long)(lab_next(rng) % hot) * 7919 % rows);
	} else { /* the first n of a random permutation of the rows */
		int *perm = (int *)lab_halloc((size_t)rows * sizeof(int));

		for (int r = 0; r < rows; r++)
			perm[r] = r;
		for (int i = 0; i < n; i++) {
			int j = i + (int)(lab_next(rng) % (rows - i)), x = perm[i];

			perm[i] = perm[j], perm[j] = x;
			ids[i] = perm[i];
		}
		free(perm);
	}
	LAB_CK(cudaMalloc((void **)&d_ids, (size_t)n * sizeof(int)));
	LAB_CK(cudaMemcpy(d_ids, ids, (size_t)n * sizeof(int),
	    cudaMemcpyHostToDevice));
	d_table = lab_dup(table, nt);
	d_din = lab_dup(din, ni);
	d_out = (float *)lab_dalloc(ni * sizeof(float));

	for (int i = 0; i < n; i++)
		memcpy(ref + (size_t)i * D, table + (size_t)ids[i] * D,
		    D * sizeof(float));
	d2v_k_gather_rows(d_out, d_table, d_ids, n, D, st);
	lab_sync(st);
	lab_get(got, d_out, ni);
	snprintf(what, sizeof what, "gather_rows n %d D %d rows %d%s", n, D,
	    rows, rep ? " repeats" : " distinct");
	fails += lab_report_bits(NAME, what, lab_bits_differ(got, ref, ni));

	/* scatter_rows (+=): dtable starts as table; in float, i in order */
	memcpy(ref, table, nt * sizeof(float));
	for (int i = 0; i < n; i++)
		for (int d = 0; d < D; d++)
			ref[(size_t)ids[i] * D + d] += din[(size_t)i * D + d];
	d2v_k_scatter_rows(d_table, d_din, d_ids, n, D, st);
	lab_sync(st);
	lab_get(got, d_table, nt);
	snprintf(what, sizeof what, "scatter_rows (+=) n %d D %d rows %d%s", n,
	    D, rows, rep ? " repeats" : " distinct");
	fails += lab_report_bits(NAME, what, lab_bits_differ(got, ref, nt));
	free(table), free(din), free(ref), free(got), free(ids);
	cudaFree(d_ids), cudaFree(d_table), cudaFree(d_din), cudaFree(d_out);
	return fails;
}

/* n 0 or D 0 (and a NULL dtable) queue nothing: NULL pointers throughout */
static int
check_rows_empty(cudaStream_t st)
{
	d2v_k_gather_rows(NULL, NULL, NULL, 0, 768, st);
	d2v_k_gather_rows(NULL, NULL, NULL, 7, 0, st);
	d2v_k_scatter_rows(NULL, NULL, NULL, 0, 768, st);
	d2v_k_scatter_rows(NULL, NULL, NULL, 7, 0, st);
	d2v_k_scatter_rows(NULL, NULL, NULL, 7, 31, st);
	lab_sync(st);
	return lab_report_bits(NAME, "gather_rows, scatter_rows: n 0, D 0, NULL", 0);
}

typedef struct rows_arg {
	float *out, *table, *din;
	int *ids;
	int n, D;
} rows_arg;

static void
bench_gather_rows(void *p, cudaStream_t st)
{
	rows_arg *a = (rows_arg *)p;

	d2v_k_gather_rows(a->out, a->table, a->ids, a->n, a->D, st);
}

static void
bench_scatter_rows(void *p, cudaStream_t st)
{
	rows_arg *a = (rows_arg *)p;

	d2v_k_scatter_rows(a->table, a->din, a->ids, a->n, a->D, st);
}

typedef struct bench_arg {
	float *out, *src, *ds, *dec, *df;
	int *idx;
	unsigned char *mask;
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

static void
bench_place(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_place_tokens(a->dec, a->out, a->idx, NULL, a->R, a->N, a->V, 0,
	    a->D, st);
}

static void
bench_mask(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_mask_tokens(a->dec, a->src, a->mask, NULL, a->R, a->M, a->N,
	    a->D, st);
}

static void
bench_unmask(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_unmask_tokens(a->ds, a->df, a->dec, a->mask, a->R, a->M, a->N,
	    a->D, st);
}

int
main(void)
{
	lab_rng rng = {11};
	unsigned char *mask;
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
	fails += check_dec(1, 1, 1, 1, 0, 1, 0, 0, &rng, st);
	fails += check_dec(1, 1, 1, 1, 1, 1, 1, 1, &rng, st);
	fails += check_dec(6, 3, 7, 2, 1, 31, 1, 1, &rng, st);
	fails += check_dec(7, 7, 5, 5, 0, 1, 0, 1, &rng, st);
	fails += check_dec(32, 8, 196, 39, 1, 192, 1, 1, &rng, st);
	fails += check_dec(32, 8, 196, 39, 1, 192, 0, 0, &rng, st);
	fails += check_dec(16, 8, 49, 10, 0, 384, 1, 0, &rng, st);
	fails += check_dec(3, 1, 197, 50, 1, 768, 0, 1, &rng, st);
	{
		static const int ns[] = {1, 7, 4096}, Ds[] = {1, 31, 768};
		static const int rs[] = {5, 30000};

		for (int a = 0; a < 2; a++)
			for (int b = 0; b < 3; b++)
				for (int c = 0; c < 3; c++)
					for (int rep = 1; rep >= 0; rep--)
						if (rep || ns[b] <= rs[a])
							fails += check_rows(ns[b], Ds[c],
							    rs[a], rep, &rng, st);
		fails += check_rows_empty(st);
	}
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

	/* the decoder's side on B1: dec (R,N,D), 39 kept rows placed */
	a.dec = (float *)lab_dalloc((size_t)a.R * a.N * a.D * sizeof(float));
	a.df = (float *)lab_dalloc(a.D * sizeof(float));
	lab_dev_fill(a.dec, (size_t)a.R * a.N * a.D, -1, 1, 3);
	lab_dev_fill(a.df, a.D, -1, 1, 4);
	mask = (unsigned char *)lab_halloc((size_t)a.R * a.N);
	for (size_t k = 0; k < (size_t)a.R * a.N; k++)
		mask[k] = k % 5 != 0;	/* the 39 of 196 kept, as idx */
	LAB_CK(cudaMalloc((void **)&a.mask, (size_t)a.R * a.N));
	LAB_CK(cudaMemcpy(a.mask, mask, (size_t)a.R * a.N,
	    cudaMemcpyHostToDevice));
	/* bytes: read and write each placed row */
	lab_bench(NAME, "place B1", 2.0 * no * sizeof(float),
	    lab_time_ms(bench_place, &a, st));
	/* bytes: write out (R N D), read the unmasked rows of src */
	lab_bench(NAME, "mask B1", (double)a.R * a.N * a.D * sizeof(float) *
	    1.2, lab_time_ms(bench_mask, &a, st));
	/* bytes: din read (R N D), dsrc read and written; dfill small */
	lab_bench(NAME, "unmask B1 (with dfill)", ((double)a.R * a.N * a.D +
	    2.0 * 4 * a.N * a.D) * sizeof(float),
	    lab_time_ms(bench_unmask, &a, st));

	/* the token embeddings: 8 x 512 ids uniform over 30000 rows, D 768 */
	{
		rows_arg ra;
		int rows = 30000, *h, nd = 0;
		unsigned char *seen = (unsigned char *)lab_halloc(rows);

		ra.n = 4096; ra.D = 768;
		h = (int *)lab_halloc((size_t)ra.n * sizeof(int));
		memset(seen, 0, rows);
		for (int i = 0; i < ra.n; i++) {
			h[i] = (int)(lab_next(&rng) % rows);
			nd += !seen[h[i]];
			seen[h[i]] = 1;
		}
		LAB_CK(cudaMalloc((void **)&ra.ids, (size_t)ra.n * sizeof(int)));
		LAB_CK(cudaMemcpy(ra.ids, h, (size_t)ra.n * sizeof(int),
		    cudaMemcpyHostToDevice));
		ra.table = (float *)lab_dalloc((size_t)rows * ra.D *
		    sizeof(float));
		ra.out = (float *)lab_dalloc((size_t)ra.n * ra.D * sizeof(float));
		ra.din = (float *)lab_dalloc((size_t)ra.n * ra.D * sizeof(float));
		lab_dev_fill(ra.table, (size_t)rows * ra.D, -1, 1, 5);
		lab_dev_fill(ra.din, (size_t)ra.n * ra.D, -1, 1, 6);
		/* bytes: read each gathered row, write out */
		lab_bench(NAME, "gather_rows n 4096 D 768", 2.0 * ra.n * ra.D *
		    sizeof(float), lab_time_ms(bench_gather_rows, &ra, st));
		/* bytes: din read, the nd distinct rows touched read and
		 * written (the ids, rescanned by every thread, not counted) */
		lab_bench(NAME, "scatter_rows n 4096 D 768", ((double)ra.n +
		    2.0 * nd) * ra.D * sizeof(float),
		    lab_time_ms(bench_scatter_rows, &ra, st));
		free(h), free(seen);
	}
	return 0;
}
#endif
