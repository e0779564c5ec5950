/*
 * stats.h - representation statistics of a feature matrix: is it collapsing?
 *
 * x is (n,d): n rows (images) of d features, row-major float.
 *
 *     double sd = d2v_features_std(x, n, d);      // 0 for a constant encoder
 *     double er;
 *     d2v_features_effective_rank(x, n, d, &er, &err);  // 1 .. d
 *
 * The effective rank (Roy and Vetterli, 2007) of the feature covariance is
 * exp of the Shannon entropy of its normalised eigenvalues p_i = l_i / sum l:
 * d for an isotropic cloud, 1 when every row lies on one line.  It says how
 * many directions the representation really uses; a collapsing encoder's
 * falls long before its per-dimension std reaches zero.
 */
#ifndef D2V_EVAL_STATS_H
#define D2V_EVAL_STATS_H

#include "err.h"

/* mean (d) = the column means of x and ss (d) = the sums of squared
 * deviations from them, in double (two passes over the rows); zeros for
 * n < 1. */
void d2v_features_moments(const float *x, long n, int d, double *mean,
    double *ss);

/* The standard deviation of each feature over the rows (n-1 in the
 * denominator), averaged over the d features: the target_var / pred_var of
 * d2v-train.  0 when n < 2, NaN when out of memory. */
double d2v_features_std(const float *x, long n, int d);

/* cov (d,d) = the sample covariance of x's columns (both triangles filled,
 * n-1 in the denominator), accumulated in double.  Needs n >= 2. */
int d2v_features_cov(const float *x, long n, int d, double *cov,
    d2v_err *err);

/* Eigenvalues w (d), ascending, of a symmetric matrix a (d,d) by LAPACK
 * dsyevd.  With vectors set, row i of a becomes the unit eigenvector of
 * w[i]; otherwise a is destroyed. */
int d2v_sym_eig(double *a, int d, double *w, int vectors, d2v_err *err);

/* The effective rank of a symmetric positive semi-definite matrix a (d,d),
 * eigenvalues by LAPACK dsyevd; eigenvalues below 0 (rounding) count as 0;
 * a zero matrix has effective rank 0.  a is destroyed. */
int d2v_effective_rank(double *a, int d, double *erank, d2v_err *err);

/* Both steps on a feature matrix. */
int d2v_features_effective_rank(const float *x, long n, int d,
    double *erank, d2v_err *err);

#endif
