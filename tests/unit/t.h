/*
 * t.h - a tiny test harness: TAP-style "ok - ..." / "not ok - ..." lines,
 * counted by tests/run.  T_DONE() returns the exit status (1 on any failure).
 */
#ifndef D2V_T_H
#define D2V_T_H

#include <math.h>
#include <stddef.h>
#include <stdio.h>

static int t_fail, t_pass;

#define T_OK(cond, ...) do {                                              \
	if (cond) {                                                        \
		t_pass++;                                                  \
		printf("ok - ");                                           \
	} else {                                                           \
		t_fail++;                                                  \
		printf("not ok - %s:%d: ", __FILE__, __LINE__);            \
	}                                                                  \
	printf(__VA_ARGS__);                                               \
	printf("\n");                                                      \
	fflush(stdout);                                                    \
} while (0)

#define T_DONE() (t_fail ? 1 : 0)

/* ||a - b|| / ||b|| in the L2 norm over n floats (||b|| floored at
 * 1e-12) */
static inline double
t_relerr(const float *a, const float *b, size_t n)
{
	double d = 0, s = 0;

	for (size_t i = 0; i < n; i++) {
		d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
		s += (double)b[i] * b[i];
	}
	return sqrt(d) / fmax(sqrt(s), 1e-12);
}

/* sum of a[i] b[i] over n floats, in double */
static inline double
t_dot(const float *a, const float *b, size_t n)
{
	double s = 0;

	for (size_t i = 0; i < n; i++)
		s += (double)a[i] * b[i];
	return s;
}

#endif
