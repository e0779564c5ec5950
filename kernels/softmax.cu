/*
 * softmax.cu - the attention softmax, in place on s (R,H,T,T), with the
 * optional ALiBi term, and its backward.
 *
 * Both directions: one warp per row of T (8 rows per block of 256
 * threads, rows grid-strided), lanes strided over the row, the row max and
 * sums by an xor butterfly of warp shuffles.  Forward: pass 1 the max of
 * the logits, pass 2 writes exp(logit - max) and sums it, pass 3 divides
 * by the sum (each lane touches the same elements in every pass).
 * Backward: pass 1 dot = sum_j p dp, pass 2 writes scale p (dp - dot); with
 * dslope each row's sum of -|pos_i - pos_j| p (dp - dot) goes to scratch
 * (R,H,T), and a second kernel (a block per head) adds a head's R*T row
 * partials in a fixed order, in double, to dslope[h].
 */
#include "kernels.h"

#define SM_WARPS 8		/* rows per block */
#define SM_MAXGRID 65535	/* most blocks of the row kernels */
#define SM_SLOPE_THREADS 256	/* threads of the dslope kernel */

static __device__ float
warp_sum(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

static __device__ float
warp_max(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

/* s (R,H,T,T) = softmax over j of scale s - slope[h] |pos[r,i] -
 * pos[r,j]|; slope (H) or NULL (then pos is not read), pos (R,T);
 * nrows = R H T. */
static __global__ void
softmax_forward_kernel(float *s, const float *slope, const int *pos, int H,
    int T, size_t nrows, float scale)
{
	int lane = threadIdx.x % 32;

	for (size_t row = (size_t)blockIdx.x * SM_WARPS + threadIdx.x / 32;
	    row < nrows; row += (size_t)gridDim.x * SM_WARPS) {
		float *p = s + row * T;
		size_t rh = row / T;
		int i = (int)(row % T), h = (int)(rh % H);
		const int *ps = slope != NULL ? pos + (rh / H) * T : NULL;
		float sl = slope != NULL ? slope[h] : 0.0f;
		int pi = ps != NULL ? ps[i] : 0;
		float mx = -INFINITY, sum = 0;

		for (int j = lane; j < T; j += 32) {
			float l = scale * p[j];

			if (ps != NULL)
				l -= sl * (float)abs(pi - ps[j]);
			mx = fmaxf(mx, l);
		}
		mx = warp_max(mx);
		for (int j = lane; j < T; j += 32) {
			float l = scale * p[j], e;

			if (ps != NULL)
				l -= sl * (float)abs(pi - ps[j]);
			e = expf(l - mx);
			p[j] = e;
			sum += e;
		}
		sum = warp_sum(sum);
		for (int j = lane; j < T; j += 32)
			p[j] = p[j] / sum;
	}
}

/* dp (R,H,T,T) = scale p (dp - sum_j p dp), p (R,H,T,T); when part is not
 * NULL, part (R,H,T) = per row sum_j -|pos[r,i] - pos[r,j]| p (dp - dot),
 * pos (R,T); nrows = R H T. */
static __global__ void
softmax_backward_kernel(float *dp, float *part, const float *p,
    const int *pos, int H, int T, size_t nrows, float scale)
{
	int lane = threadIdx.x % 32;

	for (size_t row = (size_t)blockIdx.x * SM_WARPS + threadIdx.x / 32;
	    row < nrows; row += (size_t)gridDim.x * SM_WARPS) {
		const float *pr = p + row * T;
		float *d = dp + row * T;
		size_t rh = row / T;
		int i = (int)(row % T);
		const int *ps = part != NULL ? pos + (rh / H) * T : NULL;
		int pi = ps != NULL ? ps[i] : 0;
		float dot = 0, gs = 0;

		for (int j = lane; j < T; j += 32)
			dot += pr[j] * d[j];
		dot = warp_sum(dot);
		for (int j = lane; j < T; j += 32) {
			float dl = pr[j] * (d[j] - dot);

			d[j] = scale * dl;
			if (ps != NULL)
				gs -= dl * (float)abs(pi - ps[j]);
		}
		if (part != NULL) {
			gs = warp_sum(gs);
			if (lane == 0)
				part[row] = gs;
		}
	}
}

/* dslope (H) += sum over r, i of part (R,H,T); one block per head, each
 * thread a fixed set of the entries in double, then a fixed tree over the
 * block, rounded once. */
static __global__ void
softmax_dslope_kernel(float *dslope, const float *part, int R, int H, int T)
{
	__shared__ double sh[SM_SLOPE_THREADS];
	int h = blockIdx.x, tid = threadIdx.x;
	double acc = 0;

	for (int r = 0; r < R; r++) {
		const float *pp = part + ((size_t)r * H + h) * T;

		for (int i = tid; i < T; i += SM_SLOPE_THREADS)
			acc += pp[i];
	}
	sh[tid] = acc;
	__syncthreads();
	for (int k = SM_SLOPE_THREADS / 2; k > 0; k >>= 1) {
		if (tid < k)
			sh[tid] += sh[tid + k];
		__syncthreads();
	}
	if (tid == 0)
		dslope[h] = (float)(dslope[h] + sh[0]);
}

static unsigned
row_grid(size_t nrows)
{
	size_t g = (nrows + SM_WARPS - 1) / SM_WARPS;

	return (unsigned)(g < SM_MAXGRID ? g : SM_MAXGRID);
}

extern "C" void
d2v_k_softmax_forward(float *s, const float *slope, const int *pos, int R,
    int H, int T, float scale, cudaStream_t st)
{
	size_t nrows = (size_t)(R > 0 ? R : 0) * (H > 0 ? H : 0) *
	    (T > 0 ? T : 0);

	if (nrows == 0)
		return;
	softmax_forward_kernel<<<row_grid(nrows), 32 * SM_WARPS, 0, st>>>(s,
	    slope, pos, H, T, nrows, scale);
}

extern "C" size_t
d2v_k_softmax_scratch(int R, int H, int T)
{
	return (size_t)(R > 0 ? R : 0) * (H > 0 ? H : 0) * (T > 0 ? T : 0);
}

/* slope is not needed: the gradient of the logits does not depend on it.
 * dslope is computed when dslope and pos are both set. */
extern "C" void
d2v_k_softmax_backward(float *dp, float *dslope, const float *p,
    const float *slope, const int *pos, int R, int H, int T, float scale,
    float *scratch, cudaStream_t st)
{
	size_t nrows = d2v_k_softmax_scratch(R, H, T);
	float *part = dslope != NULL && pos != NULL ? scratch : NULL;

	(void)slope;
	if (nrows == 0)
		return;
	softmax_backward_kernel<<<row_grid(nrows), 32 * SM_WARPS, 0, st>>>(dp,
	    part, p, pos, H, T, nrows, scale);
	if (part != NULL)
		softmax_dslope_kernel<<<H, SM_SLOPE_THREADS, 0, st>>>(dslope,
		    part, R, H, T);
}

#ifdef D2V_KERNEL_LAB
#include "lab.h"

#define NAME "softmax"

/* The CPU reference of the forward in double: prob (R,H,T,T) from s. */
static void
ref_forward(double *prob, const float *s, const float *slope,
    const int *pos, int R, int H, int T, double scale)
{
	double *l = (double *)lab_halloc(T * sizeof(double));

	for (int r = 0; r < R; r++)
		for (int h = 0; h < H; h++)
			for (int i = 0; i < T; i++) {
				size_t o = (((size_t)r * H + h) * T + i) * T;
				double mx = -INFINITY, sum = 0;

				for (int j = 0; j < T; j++) {
					l[j] = scale * s[o + j];
					if (slope != NULL)
						l[j] -= (double)slope[h] *
						    abs(pos[r * T + i] - pos[r * T + j]);
					mx = fmax(mx, l[j]);
				}
				for (int j = 0; j < T; j++) {
					l[j] = exp(l[j] - mx);
					sum += l[j];
				}
				for (int j = 0; j < T; j++)
					prob[o + j] = l[j] / sum;
			}
	free(l);
}

/* The CPU reference of the backward in double: g (R,H,T,T) from p and dp;
 * dslope (H) holds its initial values and, when pos is set, gets the
 * slope gradients added. */
static void
ref_backward(double *g, double *dslope, const float *p, const float *dp,
    const int *pos, int R, int H, int T, double scale)
{
	for (int r = 0; r < R; r++)
		for (int h = 0; h < H; h++) {
			double gs = 0;

			for (int i = 0; i < T; i++) {
				size_t o = (((size_t)r * H + h) * T + i) * T;
				double dot = 0;

				for (int j = 0; j < T; j++)
					dot += (double)p[o + j] * dp[o + j];
				for (int j = 0; j < T; j++) {
					double dl = p[o + j] * (dp[o + j] - dot);

					g[o + j] = scale * dl;
					if (pos != NULL)
						gs -= dl * abs(pos[r * T + i] -
						    pos[r * T + j]);
				}
			}
			if (pos != NULL)
				dslope[h] += gs;
		}
}

/* floor for lab_max_rel_err: frac of the largest reference magnitude */
static double
floor_of(const double *ref, size_t n, double frac)
{
	return fmax(frac * lab_max_abs(ref, n), 1e-30);
}

/* one shape, without (alibi 0) or with ALiBi and dslope; failures */
static int
check(int R, int H, int T, int alibi, lab_rng *rng, cudaStream_t st)
{
	size_t n = (size_t)R * H * T * T;
	float scale = 0.125f;
	float *s = (float *)lab_halloc(n * sizeof(float));
	float *pf = (float *)lab_halloc(n * sizeof(float));
	float *dp = (float *)lab_halloc(n * sizeof(float));
	float *got = (float *)lab_halloc(n * sizeof(float));
	float *slope = (float *)lab_halloc(H * sizeof(float));
	float *ds0 = (float *)lab_halloc(H * sizeof(float));
	float *dsg = (float *)lab_halloc(H * sizeof(float));
	int *pos = (int *)lab_halloc((size_t)R * T * sizeof(int));
	double *ref = (double *)lab_halloc(n * sizeof(double));
	double *rds = (double *)lab_halloc(H * sizeof(double));
	float *d_s, *d_p, *d_dp, *d_slope = NULL, *d_ds = NULL, *d_scr;
	int *d_pos = NULL;
	char what[96];
	int fails = 0;

	/* q.k unscaled in [-16, 16); slopes in [0.01, 0.5); positions
	 * kept tokens of a longer sequence: increasing, gaps of 1 to 3 */
	lab_fill(s, n, -16, 16, rng);
	lab_fill(dp, n, -1, 1, rng);
	lab_fill(slope, H, 0.01f, 0.5f, rng);
	lab_fill(ds0, H, -1, 1, rng);
	for (int r = 0; r < R; r++) {
		int q = (int)(lab_next(rng) % 5);

		for (int i = 0; i < T; i++) {
			pos[r * T + i] = q;
			q += 1 + (int)(lab_next(rng) % 3);
		}
	}
	d_s = lab_dup(s, n);
	d_p = (float *)lab_dalloc(n * sizeof(float));
	d_dp = lab_dup(dp, n);
	d_scr = (float *)lab_dalloc(d2v_k_softmax_scratch(R, H, T) *
	    sizeof(float));
	if (alibi) {
		d_slope = lab_dup(slope, H);
		d_ds = lab_dup(ds0, H);
		d_pos = (int *)lab_dalloc((size_t)R * T * sizeof(int));
		LAB_CK(cudaMemcpy(d_pos, pos, (size_t)R * T * sizeof(int),
		    cudaMemcpyHostToDevice));
	}

	ref_forward(ref, s, alibi ? slope : NULL, pos, R, H, T, scale);
	d2v_k_softmax_forward(d_s, d_slope, d_pos, R, H, T, scale, st);
	lab_sync(st);
	lab_get(got, d_s, n);
	snprintf(what, sizeof(what), "forward R %d H %d T %d %s", R, H, T,
	    alibi ? "alibi" : "NULL slope");
	fails += lab_report(NAME, what, lab_max_rel_err(got, ref, n, 1e-6),
	    1e-4);

	/* backward from the reference probabilities */
	for (size_t k = 0; k < n; k++)
		pf[k] = (float)ref[k];
	LAB_CK(cudaMemcpy(d_p, pf, n * sizeof(float), cudaMemcpyHostToDevice));
	for (int h = 0; h < H; h++)
		rds[h] = ds0[h];
	ref_backward(ref, rds, pf, dp, alibi ? pos : NULL, R, H, T, scale);
	d2v_k_softmax_backward(d_dp, d_ds, d_p, d_slope, d_pos, R, H, T, scale,
	    d_scr, st);
	lab_sync(st);
	lab_get(got, d_dp, n);
	snprintf(what, sizeof(what), "backward R %d H %d T %d %s", R, H, T,
	    alibi ? "alibi" : "NULL slope");
	fails += lab_report(NAME, what,
	    lab_max_rel_err(got, ref, n, floor_of(ref, n, 1e-2)), 1e-4);
	if (alibi) {
		lab_get(dsg, d_ds, H);
		snprintf(what, sizeof(what), "backward dslope (+=) R %d H %d T %d",
		    R, H, T);
		fails += lab_report(NAME, what,
		    lab_max_rel_err(dsg, rds, H, floor_of(rds, H, 1e-3)), 1e-4);
	}

	free(s), free(pf), free(dp), free(got), free(slope), free(ds0);
	free(dsg), free(pos), free(ref), free(rds);
	cudaFree(d_s), cudaFree(d_p), cudaFree(d_dp), cudaFree(d_slope);
	cudaFree(d_ds), cudaFree(d_scr), cudaFree(d_pos);
	return fails;
}

typedef struct bench_arg {
	float *s, *dp, *p, *slope, *dslope, *scr;
	int *pos;
	int R, H, T;
} bench_arg;

static void
bench_forward(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_softmax_forward(a->s, a->slope, a->pos, a->R, a->H, a->T, 0.125f,
	    st);
}

static void
bench_backward(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_softmax_backward(a->dp, a->dslope, a->p, a->slope, a->pos, a->R,
	    a->H, a->T, 0.125f, a->scr, st);
}

int
main(void)
{
	static const int shapes[][3] = {
		{1, 1, 1}, {1, 2, 5}, {3, 3, 31}, {2, 12, 197}, {1, 2, 600},
		{1, 1, 33}
	};
	lab_rng rng = {11};
	cudaStream_t st;
	bench_arg a;
	size_t n;
	int *pos, fails = 0;
	double ms;
	char what[96];

	lab_need_gpu(NAME);
	LAB_CK(cudaStreamCreate(&st));
	for (int k = 0; k < 6; k++)
		for (int alibi = 0; alibi < 2; alibi++)
			fails += check(shapes[k][0], shapes[k][1], shapes[k][2],
			    alibi, &rng, st);
	lab_verdict(NAME, fails);

	a.R = 64;
	a.H = 12;
	a.T = 197;
	n = (size_t)a.R * a.H * a.T * a.T;
	a.s = (float *)lab_dalloc(n * sizeof(float));
	a.dp = (float *)lab_dalloc(n * sizeof(float));
	a.p = (float *)lab_dalloc(n * sizeof(float));
	a.slope = (float *)lab_dalloc(a.H * sizeof(float));
	a.dslope = (float *)lab_dalloc(a.H * sizeof(float));
	a.scr = (float *)lab_dalloc(d2v_k_softmax_scratch(a.R, a.H, a.T) *
	    sizeof(float));
	a.pos = (int *)lab_dalloc((size_t)a.R * a.T * sizeof(int));
	pos = (int *)lab_halloc((size_t)a.R * a.T * sizeof(int));
	for (int k = 0; k < a.R * a.T; k++)
		pos[k] = k % a.T;
	LAB_CK(cudaMemcpy(a.pos, pos, (size_t)a.R * a.T * sizeof(int),
	    cudaMemcpyHostToDevice));
	lab_dev_fill(a.s, n, -16, 16, 1);
	lab_dev_fill(a.dp, n, -1, 1, 2);
	lab_dev_fill(a.p, n, 0, 2.0f / a.T, 3);
	lab_dev_fill(a.slope, a.H, 0.01f, 0.5f, 4);
	lab_dev_fill(a.dslope, a.H, -1, 1, 5);

	snprintf(what, sizeof(what), "forward alibi R %d H %d T %d", a.R, a.H,
	    a.T);
	ms = lab_time_ms(bench_forward, &a, st);
	/* bytes: read and write s (R H T T floats); pos and slope are
	 * small and cached */
	lab_bench(NAME, what, 8.0 * n, ms);
	snprintf(what, sizeof(what), "backward dslope R %d H %d T %d", a.R,
	    a.H, a.T);
	ms = lab_time_ms(bench_backward, &a, st);
	/* bytes: read p, read and write dp; write and read the R H T
	 * scratch */
	lab_bench(NAME, what, 12.0 * n + 8.0 * a.R * a.H * a.T, ms);
	free(pos);
	return 0;
}
#endif
