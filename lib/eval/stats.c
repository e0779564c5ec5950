/*
 * stats.c - representation statistics (stats.h).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <lapack.h>

#include "eval/stats.h"

#define TEN(x) ((size_t)(x))
/* Rows per block of the covariance accumulation. */
#define COV_BLOCK 512

void
d2v_features_moments(const float *x, long n, int d, double *mean,
    double *ss)
{
	memset(mean, 0, TEN(d) * sizeof *mean);
	memset(ss, 0, TEN(d) * sizeof *ss);
	if (n < 1)
		return;
	/* two passes over the rows, in memory order */
	for (long i = 0; i < n; i++)
		for (int j = 0; j < d; j++)
			mean[j] += x[TEN(i) * d + j];
	for (int j = 0; j < d; j++)
		mean[j] /= (double)n;
	for (long i = 0; i < n; i++)
		for (int j = 0; j < d; j++) {
			double v = x[TEN(i) * d + j] - mean[j];

			ss[j] += v * v;
		}
}

double
d2v_features_std(const float *x, long n, int d)
{
	double *mean, *ss, acc = 0;

	if (n < 2 || d < 1)
		return 0;
	mean = calloc(TEN(d), sizeof *mean);
	ss = calloc(TEN(d), sizeof *ss);
	if (mean == NULL || ss == NULL) {
		free(mean); free(ss);
		return NAN;
	}
	d2v_features_moments(x, n, d, mean, ss);
	for (int j = 0; j < d; j++)
		acc += sqrt(ss[j] / (double)(n - 1));
	free(mean); free(ss);
	return acc / d;
}

int
d2v_features_cov(const float *x, long n, int d, double *cov, d2v_err *err)
{
	double *mean, *blk;

	if (n < 2 || d < 1)
		return d2v_err_set(err, D2V_EINVAL, "covariance: needs 2 rows "
		    "and 1 feature (have %ld, %d)", n, d);
	mean = calloc(TEN(d), sizeof *mean);
	blk = malloc(TEN(COV_BLOCK) * d * sizeof *blk);
	if (mean == NULL || blk == NULL) {
		free(mean); free(blk);
		return d2v_err_set(err, D2V_ENOMEM, "covariance: out of memory "
		    "for %d features", d);
	}
	for (long i = 0; i < n; i++)
		for (int j = 0; j < d; j++)
			mean[j] += x[TEN(i) * d + j];
	for (int j = 0; j < d; j++)
		mean[j] /= (double)n;
	memset(cov, 0, TEN(d) * d * sizeof *cov);
	for (long r0 = 0; r0 < n; r0 += COV_BLOCK) {
		long nb = n - r0 < COV_BLOCK ? n - r0 : COV_BLOCK;

#pragma omp parallel for schedule(static)
		for (long i = 0; i < nb; i++)
			for (int j = 0; j < d; j++)
				blk[TEN(i) * d + j] = x[TEN(r0 + i) * d + j] - mean[j];
		/* upper triangle of cov += blk^T blk */
		cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, (int)nb,
		    1.0, blk, d, 1.0, cov, d);
	}
	for (int a = 0; a < d; a++)
		for (int b = a; b < d; b++) {
			cov[TEN(a) * d + b] /= (double)(n - 1);
			cov[TEN(b) * d + a] = cov[TEN(a) * d + b];
		}
	free(mean); free(blk);
	return 0;
}

int
d2v_sym_eig(double *a, int d, double *w, int vectors, d2v_err *err)
{
	lapack_int n = d, lwork = -1, liwork = -1, info = 0, iw;
	const char *jobz = vectors ? "V" : "N";
	double *work, wq;
	lapack_int *iwork;

	if (d < 1)
		return d2v_err_set(err, D2V_EINVAL, "eigenvalues: empty matrix");
	/* workspace query.  The matrix is symmetric, so row-major is the
	 * same matrix to LAPACK; its column-major eigenvectors are our rows. */
	LAPACK_dsyevd(jobz, "U", &n, a, &n, w, &wq, &lwork, &iw, &liwork,
	    &info);
	if (info != 0)
		return d2v_err_set(err, D2V_EINVAL, "dsyevd workspace query "
		    "failed (info %d)", (int)info);
	lwork = (lapack_int)wq;
	liwork = iw > 0 ? iw : 1;
	work = malloc(TEN(lwork > 0 ? lwork : 1) * sizeof *work);
	iwork = malloc(TEN(liwork) * sizeof *iwork);
	if (work == NULL || iwork == NULL) {
		free(work); free(iwork);
		return d2v_err_set(err, D2V_ENOMEM, "eigenvalues: out of memory "
		    "for %d x %d", d, d);
	}
	LAPACK_dsyevd(jobz, "U", &n, a, &n, w, work, &lwork, iwork, &liwork,
	    &info);
	free(work); free(iwork);
	if (info != 0)
		return d2v_err_set(err, D2V_EINVAL, "dsyevd failed (info %d): "
		    "non-finite entries?", (int)info);
	return 0;
}

int
d2v_effective_rank(double *a, int d, double *erank, d2v_err *err)
{
	double *w, sum = 0, h = 0;
	int rc;

	*erank = NAN;
	if (d < 1)
		return d2v_err_set(err, D2V_EINVAL, "effective rank: empty "
		    "matrix");
	if ((w = malloc(TEN(d) * sizeof *w)) == NULL)
		return d2v_err_set(err, D2V_ENOMEM, "effective rank: out of "
		    "memory for %d x %d", d, d);
	if ((rc = d2v_sym_eig(a, d, w, 0, err)) < 0) {
		free(w);
		return rc;
	}
	for (int i = 0; i < d; i++)
		sum += w[i] > 0 ? w[i] : 0;
	if (sum > 0) {
		for (int i = 0; i < d; i++) {
			double p = (w[i] > 0 ? w[i] : 0) / sum;

			if (p > 0)
				h -= p * log(p);
		}
		*erank = exp(h);
	} else {
		*erank = 0;
	}
	free(w);
	return 0;
}

int
d2v_features_effective_rank(const float *x, long n, int d, double *erank,
    d2v_err *err)
{
	double *cov = malloc(TEN(d) * d * sizeof *cov);
	int rc;

	*erank = NAN;
	if (cov == NULL)
		return d2v_err_set(err, D2V_ENOMEM, "effective rank: out of "
		    "memory for %d x %d", d, d);
	rc = d2v_features_cov(x, n, d, cov, err);
	if (rc == 0)
		rc = d2v_effective_rank(cov, d, erank, err);
	free(cov);
	return rc;
}
