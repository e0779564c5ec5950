/* rng.c - see rng.h. */
#include "rng.h"

#include <math.h>

static uint64_t
splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void
d2v_rng_seed(d2v_rng *r, uint64_t seed, uint64_t a, uint64_t b)
{
	uint64_t x = seed;

	/* mix the key words one after another so (s,a,b) != (s,b,a) */
	x = splitmix64(&x) ^ a;
	x = splitmix64(&x) ^ b;
	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix64(&x);
	if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0)
		r->s[0] = 1;
}

static inline uint64_t
rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

uint64_t
d2v_rng_u64(d2v_rng *r)
{
	uint64_t *s = r->s;
	uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return out;
}

double
d2v_rng_uniform(d2v_rng *r)
{
	return (double)(d2v_rng_u64(r) >> 11) * 0x1.0p-53;
}

uint64_t
d2v_rng_below(d2v_rng *r, uint64_t n)
{
	uint64_t x, lim;

	if (n == 0)
		return 0;
	lim = -n % n; /* 2^64 mod n */
	do
		x = d2v_rng_u64(r);
	while (x < lim);
	return x % n;
}

double
d2v_rng_normal(d2v_rng *r)
{
	double u1 = 1.0 - d2v_rng_uniform(r); /* (0, 1] */
	double u2 = d2v_rng_uniform(r);

	return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void
d2v_rng_normal2(d2v_rng *r, double *a, double *b)
{
	double u1 = 1.0 - d2v_rng_uniform(r); /* (0, 1] */
	double u2 = d2v_rng_uniform(r);
	double rad = sqrt(-2.0 * log(u1)), s, c;

	sincos(2.0 * M_PI * u2, &s, &c);
	*a = rad * c;
	*b = rad * s;
}

void
d2v_rng_shuffle_int(d2v_rng *r, int *v, int n)
{
	for (int i = n - 1; i > 0; i--) {
		int j = (int)d2v_rng_below(r, (uint64_t)i + 1), t = v[i];

		v[i] = v[j];
		v[j] = t;
	}
}
