/*
 * random.cu - lib/rng.c's generator on the device, bit for bit on the
 * integer side: the decoder's noise on the masked rows and the dropout
 * masks.
 *
 * Each thread owns its generator, seeded from its key as d2v_rng_seed
 * does (splitmix64), then xoshiro256**; uniform = (u64 >> 11) 2^-53 and
 * d2v_rng_normal2's Box-Muller pair in double.  The integers and the
 * uniforms are the CPU's exactly; the normals go through the device's
 * double log and sincos, which may differ from libm's by an ulp or two of
 * a double, so a float rounding of std * a can come out one float ulp
 * apart, rarely (sqrt and the products are correctly rounded on both).
 *
 * noise_fill: one thread per (row, position), grid-stride, 128 threads a
 * block; a thread whose row is masked draws its D/2 pairs in order.
 * drop_fill: one thread per (row, 4096-element chunk), grid-stride, 128
 * threads a block: it draws the row's scale from the row's generator
 * (each thread of the row the same one), then the chunk's uniforms from
 * the chunk's generator in order.
 */
#include <stdint.h>

#include "kernels.h"

#define RND_THREADS 128
#define RND_MAXGRID 8192
#define RND_CHUNK 4096		/* elements a drop_fill generator covers */
#define RND_PI 3.14159265358979323846	/* M_PI's digits, rounded alike */

typedef struct krng {
	uint64_t s[4];
} krng;

static __device__ __forceinline__ uint64_t
k_splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* d2v_rng_seed(r, seed, a, b) */
static __device__ void
k_seed(krng *r, uint64_t seed, uint64_t a, uint64_t b)
{
	uint64_t x = seed;

	x = k_splitmix64(&x) ^ a;
	x = k_splitmix64(&x) ^ b;
	for (int i = 0; i < 4; i++)
		r->s[i] = k_splitmix64(&x);
	if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0)
		r->s[0] = 1;
}

static __device__ __forceinline__ uint64_t
k_rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

/* xoshiro256** */
static __device__ __forceinline__ uint64_t
k_u64(krng *r)
{
	uint64_t *s = r->s;
	uint64_t out = k_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = k_rotl(s[3], 45);
	return out;
}

/* [0, 1), 53 bits: exact in double on both sides */
static __device__ __forceinline__ double
k_uniform(krng *r)
{
	return (double)(k_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* d2v_rng_normal2 */
static __device__ void
k_normal2(krng *r, double *a, double *b)
{
	double u1 = 1.0 - k_uniform(r);	/* (0, 1] */
	double u2 = k_uniform(r);
	double rad = sqrt(-2.0 * log(u1)), s, c;

	sincos(2.0 * RND_PI * u2, &s, &c);
	*a = rad * c;
	*b = rad * s;
}

/* the masked rows of out (R,N,D) get normals times std */
static __global__ void
noise_kernel(float *out, const unsigned char *mask, int R, int N, int D,
    float std, uint64_t seed, uint64_t row0)
{
	size_t rows = (size_t)R * N;
	size_t stride = (size_t)gridDim.x * blockDim.x;

	for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	    t < rows; t += stride) {
		uint64_t r = t / N, n = t % N;
		float *o = out + t * D;
		krng g;

		if (mask != NULL && !mask[t])
			continue;
		k_seed(&g, seed, 0xdec0, (row0 + r) * (uint64_t)N + n);
		for (int d = 0; d < D; d += 2) {
			double a, b;

			k_normal2(&g, &a, &b);
			o[d] = (float)(std * a);
			if (d + 1 < D)
				o[d + 1] = (float)(std * b);
		}
	}
}

/* buf (rows, per): chunk c of row r; sdp = (float)(1/(1-dp)), keep =
 * (float)(1/(1-p)) */
static __global__ void
drop_kernel(float *buf, int rows, size_t per, size_t nchunk, double p,
    double dp, float keep, float sdp, uint64_t seed, uint64_t kind,
    uint64_t first)
{
	size_t all = (size_t)rows * nchunk;
	size_t stride = (size_t)gridDim.x * blockDim.x;

	for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < all;
	    t += stride) {
		size_t r = t / nchunk, c = t % nchunk;
		size_t lo = c * RND_CHUNK;
		size_t hi = per - lo < RND_CHUNK ? per : lo + RND_CHUNK;
		float *o = buf + r * per;
		float s = sdp;
		krng g;

		if (dp > 0) {
			k_seed(&g, seed, kind, first + r);
			if (k_uniform(&g) < dp)
				s = 0;
		}
		if (p > 0) {
			float v = keep * s;

			k_seed(&g, seed, kind + ((uint64_t)(c + 1) << 40),
			    first + r);
			for (size_t i = lo; i < hi; i++)
				o[i] = k_uniform(&g) < p ? 0.0f : v;
		} else {
			float v = keep * s;

			for (size_t i = lo; i < hi; i++)
				o[i] = v;
		}
	}
}

static unsigned
rnd_grid(size_t n)
{
	size_t g = (n + RND_THREADS - 1) / RND_THREADS;

	return (unsigned)(g < RND_MAXGRID ? g : RND_MAXGRID);
}

extern "C" void
d2v_k_noise_fill(float *out, const unsigned char *mask, int R, int N,
    int D, float std, unsigned long long seed, unsigned long long row0,
    cudaStream_t st)
{
	size_t rows = (size_t)(R > 0 ? R : 0) * (N > 0 ? N : 0);

	if (rows == 0 || D <= 0)
		return;
	noise_kernel<<<rnd_grid(rows), RND_THREADS, 0, st>>>(out, mask, R, N,
	    D, std, seed, row0);
}

extern "C" void
d2v_k_drop_fill(float *buf, int rows, size_t per, double p, double dp,
    unsigned long long seed, unsigned long long kind,
    unsigned long long first, cudaStream_t st)
{
	size_t nchunk = (per + RND_CHUNK - 1) / RND_CHUNK;
	float keep = p == 0 ? 1.0f : (float)(1 / (1 - p));
	float sdp = dp == 0 ? 1.0f : (float)(1 / (1 - dp));

	if (rows <= 0 || per == 0)
		return;
	drop_kernel<<<rnd_grid((size_t)rows * nchunk), RND_THREADS, 0, st>>>(
	    buf, rows, per, nchunk, p, dp, keep, sdp, seed, kind, first);
}

#ifdef D2V_KERNEL_LAB
#include "lab.h"

#define NAME "random"

/* ---- the reference: lib/rng.c's generator, re-implemented ---- */

typedef struct ref_rng {
	uint64_t s[4];
} ref_rng;

static uint64_t
ref_splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void
ref_seed(ref_rng *r, uint64_t seed, uint64_t a, uint64_t b)
{
	uint64_t x = seed;

	x = ref_splitmix64(&x) ^ a;
	x = ref_splitmix64(&x) ^ b;
	for (int i = 0; i < 4; i++)
		r->s[i] = ref_splitmix64(&x);
	if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0)
		r->s[0] = 1;
}

static uint64_t
ref_rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t
ref_u64(ref_rng *r)
{
	uint64_t *s = r->s;
	uint64_t out = ref_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = ref_rotl(s[3], 45);
	return out;
}

static double
ref_uniform(ref_rng *r)
{
	return (double)(ref_u64(r) >> 11) * 0x1.0p-53;
}

static void
ref_normal2(ref_rng *r, double *a, double *b)
{
	double u1 = 1.0 - ref_uniform(r);
	double u2 = ref_uniform(r);
	double rad = sqrt(-2.0 * log(u1)), s, c;

	sincos(2.0 * M_PI * u2, &s, &c);
	*a = rad * c;
	*b = rad * s;
}

/* floats of got and want whose bits differ */
static size_t
bits_differ(const float *got, const float *want, size_t n)
{
	size_t bad = 0;

	for (size_t i = 0; i < n; i++)
		bad += memcmp(&got[i], &want[i], sizeof(float)) != 0;
	return bad;
}

/* noise_fill on (R,N,D), mask set with probability 0.5 (or NULL: all
 * rows); failures.  The masked rows within 2.5e-7 relative of the
 * reference's float rounding (one float ulp, and a little: the device's
 * double log and sincos are not libm's), the others untouched, bit for
 * bit; the number of floats not equal in their bits is printed too. */
static int
check_noise(int R, int N, int D, int use_mask, lab_rng *rng,
    cudaStream_t st)
{
	size_t rows = (size_t)R * N, n = rows * D, bad = 0, nb;
	float *out0 = (float *)lab_halloc(n * sizeof(float));
	float *want = (float *)lab_halloc(n * sizeof(float));
	float *got = (float *)lab_halloc(n * sizeof(float));
	double *ref = (double *)lab_halloc(n * sizeof(double));
	unsigned char *mask = (unsigned char *)lab_halloc(rows);
	unsigned char *d_mask;
	float *d_out, std = 0.02f;
	uint64_t seed = 0x1234abcdull + (uint64_t)D, row0 = 5;
	double err;
	char what[96];
	int fails = 0;

	lab_fill(out0, n, -1, 1, rng);
	for (size_t t = 0; t < rows; t++)
		mask[t] = !use_mask || lab_uniform(rng, 0, 1) < 0.5f ?
		    (unsigned char)(1 + (lab_next(rng) & 0xfe)) : 0;
	memcpy(want, out0, n * sizeof(float));
	for (size_t t = 0; t < rows; t++) {
		ref_rng g;

		if (!mask[t])
			continue;
		ref_seed(&g, seed, 0xdec0, (row0 + t / N) * (uint64_t)N + t % N);
		for (int d = 0; d < D; d += 2) {
			double a, b;

			ref_normal2(&g, &a, &b);
			want[t * D + d] = (float)(std * a);
			if (d + 1 < D)
				want[t * D + d + 1] = (float)(std * b);
		}
	}
	for (size_t i = 0; i < n; i++)
		ref[i] = want[i];
	LAB_CK(cudaMalloc((void **)&d_mask, rows));
	LAB_CK(cudaMemcpy(d_mask, mask, rows, cudaMemcpyHostToDevice));
	d_out = lab_dup(out0, n);
	d2v_k_noise_fill(d_out, use_mask ? d_mask : NULL, R, N, D, std, seed,
	    row0, st);
	lab_sync(st);
	lab_get(got, d_out, n);
	for (size_t t = 0; t < rows; t++)
		if (!mask[t])
			bad += bits_differ(got + t * D, want + t * D, D);
	nb = bits_differ(got, want, n);
	err = lab_max_rel_err(got, ref, n, 1e-30);
	snprintf(what, sizeof what, "noise_fill R %d N %d D %d%s", R, N, D,
	    use_mask ? "" : " (mask NULL)");
	fails += lab_report(NAME, what, err, 2.5e-7);
	printf("%s: %-44s %zu of %zu floats differ in their bits\n", NAME,
	    "  (noise_fill, informative)", nb, n);
	snprintf(what, sizeof what, "noise_fill unmasked rows untouched");
	printf("%s: %-44s %zu bits differ (tol 0) %s\n", NAME, what, bad,
	    bad == 0 ? "PASS" : "FAIL");
	fails += bad != 0;
	free(out0), free(want), free(got), free(ref), free(mask);
	cudaFree(d_mask), cudaFree(d_out);
	return fails;
}

/* drop_fill on (rows, per) with p and dp, bit for bit; failures */
static int
check_drop(int rows, size_t per, double p, double dp, lab_rng *rng,
    cudaStream_t st)
{
	size_t n = (size_t)rows * per, bad, zeros = 0;
	float *want = (float *)lab_halloc(n * sizeof(float));
	float *got = (float *)lab_halloc(n * sizeof(float));
	float keep = p == 0 ? 1.0f : (float)(1 / (1 - p));
	float sdp = dp == 0 ? 1.0f : (float)(1 / (1 - dp));
	uint64_t seed = lab_next(rng), kind = 7, first = 1000;
	float *d_buf;
	char what[96];

	lab_fill(got, n, -1, 1, rng);
	d_buf = lab_dup(got, n);	/* every element must be written */
	for (int r = 0; r < rows; r++) {
		float s = sdp;
		ref_rng g;

		if (dp > 0) {
			ref_seed(&g, seed, kind, first + r);
			if (ref_uniform(&g) < dp)
				s = 0;
		}
		for (size_t i = 0; i < per; i++) {
			float *w = &want[(size_t)r * per + i];

			if (p > 0 && i % 4096 == 0)
				ref_seed(&g, seed, kind + ((i / 4096 + 1) << 40),
				    first + r);
			*w = p > 0 && ref_uniform(&g) < p ? 0.0f : keep * s;
			zeros += *w == 0;
		}
	}
	d2v_k_drop_fill(d_buf, rows, per, p, dp, seed, kind, first, st);
	lab_sync(st);
	lab_get(got, d_buf, n);
	bad = bits_differ(got, want, n);
	snprintf(what, sizeof what, "drop_fill %d x %zu p %.2f dp %.2f", rows,
	    per, p, dp);
	printf("%s: %-44s %zu bits differ (tol 0, %zu zeros) %s\n", NAME, what,
	    bad, zeros, bad == 0 ? "PASS" : "FAIL");
	free(want), free(got);
	cudaFree(d_buf);
	return bad != 0;
}

typedef struct bench_arg {
	float *buf;
	unsigned char *mask;
	int R, N, D, rows;
	size_t per;
} bench_arg;

static void
bench_noise(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_noise_fill(a->buf, a->mask, a->R, a->N, a->D, 0.02f, 1, 0, st);
}

static void
bench_drop(void *p, cudaStream_t st)
{
	bench_arg *a = (bench_arg *)p;

	d2v_k_drop_fill(a->buf, a->rows, a->per, 0.1, 0.1, 1, 2, 0, st);
}

int
main(void)
{
	lab_rng rng = {23};
	cudaStream_t st;
	bench_arg a;
	unsigned char *mask;
	size_t n;
	int fails = 0;
	char what[96];

	lab_need_gpu(NAME);
	LAB_CK(cudaStreamCreate(&st));
	fails += check_noise(1, 1, 1, 1, &rng, st);
	fails += check_noise(1, 1, 2, 0, &rng, st);
	fails += check_noise(3, 7, 31, 1, &rng, st);
	fails += check_noise(32, 196, 192, 1, &rng, st);
	fails += check_noise(2, 197, 768, 0, &rng, st);
	fails += check_drop(1, 1, 0, 0, &rng, st);
	fails += check_drop(1, 1, 0.5, 0.5, &rng, st);
	fails += check_drop(7, 31, 0.1, 0, &rng, st);
	fails += check_drop(5, 4096, 0, 0.4, &rng, st);
	fails += check_drop(5, 4097, 0.25, 0.5, &rng, st);
	fails += check_drop(3, 3 * 4096 + 5, 0.1, 0.1, &rng, st);
	fails += check_drop(197, 768, 0.1, 0.2, &rng, st);
	lab_verdict(NAME, fails);

	/* noise on 256 x 196 rows of 768, 80 % masked; drop on 256 rows of
	 * 197 x 768 */
	a.R = 256; a.N = 196; a.D = 768;
	a.rows = 256; a.per = (size_t)197 * 768;
	n = (size_t)a.R * a.N * a.D;
	if (n < a.rows * a.per)
		n = a.rows * a.per;
	a.buf = (float *)lab_dalloc(n * sizeof(float));
	mask = (unsigned char *)lab_halloc((size_t)a.R * a.N);
	for (size_t k = 0; k < (size_t)a.R * a.N; k++)
		mask[k] = k % 5 != 0;
	LAB_CK(cudaMalloc((void **)&a.mask, (size_t)a.R * a.N));
	LAB_CK(cudaMemcpy(a.mask, mask, (size_t)a.R * a.N,
	    cudaMemcpyHostToDevice));
	snprintf(what, sizeof what, "noise_fill R %d N %d D %d", a.R, a.N,
	    a.D);
	/* bytes: the masked rows written (80 %) */
	lab_bench(NAME, what, 0.8 * a.R * a.N * a.D * sizeof(float),
	    lab_time_ms(bench_noise, &a, st));
	snprintf(what, sizeof what, "drop_fill %d x %zu", a.rows, a.per);
	/* bytes: buf written */
	lab_bench(NAME, what, (double)a.rows * a.per * sizeof(float),
	    lab_time_ms(bench_drop, &a, st));
	free(mask);
	return 0;
}
#endif
