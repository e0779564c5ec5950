/*
 * rng.h - seeded, splittable random numbers (xoshiro256**, seeded by
 * splitmix64).
 *
 * Reproducibility across batching and parallelism comes from keying a
 * generator by what it is for, never by how many numbers came before:
 *
 *     d2v_rng r;
 *     d2v_rng_seed(&r, seed, record_index, copy);   // masks of record i, copy m
 *     double u = d2v_rng_uniform(&r);               // [0, 1)
 *
 * The whole state is four words, so it can be saved in a checkpoint and
 * restored exactly.
 */
#ifndef D2V_RNG_H
#define D2V_RNG_H

#include <stdint.h>

typedef struct d2v_rng {
	uint64_t s[4];
} d2v_rng;

/* Seeds from (seed, a, b): distinct keys give independent streams. */
void d2v_rng_seed(d2v_rng *r, uint64_t seed, uint64_t a, uint64_t b);
uint64_t d2v_rng_u64(d2v_rng *r);
/* Uniform in [0, 1) with 53 bits. */
double d2v_rng_uniform(d2v_rng *r);
/* Uniform integer in [0, n), unbiased; 0 when n is 0. */
uint64_t d2v_rng_below(d2v_rng *r, uint64_t n);
/* Standard normal (Box-Muller, no cached second value so the state is the
 * whole story). */
double d2v_rng_normal(d2v_rng *r);
/* Two independent N(0, 1) draws from one Box-Muller pair (the cosine and
 * the sine of the same angle): half the logarithms and cosines of two
 * d2v_rng_normal calls. */
void d2v_rng_normal2(d2v_rng *r, double *a, double *b);
/* Fisher-Yates shuffle of n ints. */
void d2v_rng_shuffle_int(d2v_rng *r, int *v, int n);

#endif
