/*
 * probe.h - frozen-feature probes: a linear probe (multinomial logistic
 * regression trained with L-BFGS) and a weighted k-NN classifier.
 *
 * Dimension letters: n training rows, m test rows, d feature width, k
 * classes, p = (d+1)*k probe parameters.  Features are row-major float
 * matrices x (n,d); labels are ints in [0,k).
 *
 *     d2v_probe_opts o;
 *     d2v_linear_result lin;
 *     double knn;
 *     d2v_probe_opts_default(&o);
 *     d2v_probe_linear(xtr, ytr, n, xte, yte, m, d, k, &o, &lin, &err);
 *     d2v_probe_knn(xtr, ytr, n, xte, yte, m, d, k, 20, 0.07, NULL, &knn, &err);
 *     printf("linear %.4f (l2 %g), 20-NN %.4f\n", lin.accuracy, lin.l2, knn);
 *
 * The linear probe standardises every feature with the training rows' mean
 * and standard deviation, holds out a seeded random slice of the training
 * rows, fits one model per value of an L2 grid (strongest first, each fit
 * warm-started from the previous one), keeps the value with the best
 * held-out accuracy, refits on every training row with it and reports the
 * test accuracy.  The objective is
 *
 *     L(W, b) = -(1/n) sum_i log softmax(x_i W + b)[y_i] + (l2/2) |W|^2
 *
 * (the bias is not penalised), minimised by L-BFGS to a gradient tolerance.
 * The fits run on the features rotated into the eigenbasis of their
 * covariance (an orthogonal change of basis: the same optimum, the same
 * penalty) with L-BFGS preconditioned by 1 / (eigenvalue + k l2), which
 * makes ill-conditioned features (a few dominant directions) converge in
 * tens of iterations instead of thousands.
 *
 * The k-NN classifier follows the DINO/InstDisc protocol: cosine similarity
 * s between a test row and every training row, the k most similar training
 * rows vote for their label with weight exp(s / temperature), the class with
 * the largest total wins (the smallest label on a tie).
 */
#ifndef D2V_PROBE_H
#define D2V_PROBE_H

#include <stdint.h>

#include "err.h"

/* ---- L-BFGS ------------------------------------------------------------ */

/* The objective: *f = f(x) and g (p) = its gradient at x (p).  Returns 0 or
 * a negative D2V_E* code (which stops the minimisation). */
typedef int (*d2v_lbfgs_fn)(void *ctx, const double *x, double *f,
    double *g, d2v_err *err);

typedef struct d2v_lbfgs_opts {
	int memory;       /* correction pairs kept (default 10) */
	int max_iter;     /* iterations at most (default 1000) */
	double gtol;      /* converged when max |g_j| <= gtol (default 1e-5) */
	double ftol;      /* ... or when f decreased by less than ftol * |f|
	                     over the last 10 iterations (default 1e-10) */
	const double *h0; /* (p) a diagonal preconditioner: the initial inverse
	                     Hessian is gamma diag(h0), gamma = s.y / y.h0.y;
	                     NULL for the identity */
} d2v_lbfgs_opts;

typedef struct d2v_lbfgs_info {
	int iters;        /* iterations done */
	int evals;        /* objective evaluations */
	int converged;    /* 1 when a tolerance was met, 0 at max_iter or when
	                     the line search found no decrease */
	double f;         /* the final objective */
	double gmax;      /* the final max |g_j| */
} d2v_lbfgs_info;

void d2v_lbfgs_opts_default(d2v_lbfgs_opts *o);

/*
 * Minimises fn from x (p), leaving the minimiser in x: limited-memory BFGS
 * (two-loop recursion, initial scaling s.y / y.y, or the preconditioner
 * h0) with a backtracking Armijo line search; pairs with s.y <= 0 are
 * skipped.  Returns 0 (info
 * says whether it converged), D2V_ENOMEM, D2V_EINVAL for a non-finite
 * objective at the start, or fn's error.
 */
int d2v_lbfgs(d2v_lbfgs_fn fn, void *ctx, double *x, int p,
    const d2v_lbfgs_opts *o, d2v_lbfgs_info *info, d2v_err *err);

/* ---- multinomial logistic regression ----------------------------------- */

/*
 * The objective above and its gradient for parameters w (p): W (d,k)
 * row-major, then b (k).  x (n,d), y (n).  grad may be NULL.  Logits use
 * sgemm; sums are in double.  Returns 0 or D2V_ENOMEM.
 */
int d2v_logreg_loss(const float *x, const int *y, long n, int d, int k,
    const double *w, double l2, double *f, double *grad, d2v_err *err);

/* Minimises the objective from the start in w (p; zeros are fine) and
 * leaves the solution there. */
int d2v_logreg_fit(const float *x, const int *y, long n, int d, int k,
    double l2, double *w, const d2v_lbfgs_opts *o, d2v_lbfgs_info *info,
    d2v_err *err);

/* pred (n) = argmax_c (x W + b)[c] for x (n,d) and w (p). */
int d2v_logreg_predict(const float *x, long n, int d, int k,
    const double *w, int *pred, d2v_err *err);

/* ---- the probes -------------------------------------------------------- */

#define D2V_PROBE_GRID_MAX 16

typedef struct d2v_probe_opts {
	double l2;          /* > 0: use this value, no selection */
	double grid[D2V_PROBE_GRID_MAX]; /* values tried, any order */
	int ngrid;
	double holdout;     /* fraction of the training rows held out (0.1) */
	uint64_t seed;      /* the held-out slice */
	int patience;       /* stop the grid after this many values in a row
	                       no better than the best (2); 0 tries them all;
	                       on a tie the stronger l2 is kept */
	d2v_lbfgs_opts lbfgs;
} d2v_probe_opts;

/* l2 0 (select), grid 1e-1, 1e-2, ... 1e-8, holdout 0.1, seed 1,
 * patience 2, L-BFGS defaults. */
void d2v_probe_opts_default(d2v_probe_opts *o);

typedef struct d2v_linear_result {
	double accuracy;        /* on the test rows */
	double train_accuracy;  /* on every training row, final fit */
	double l2;              /* the value used */
	int ngrid;              /* values tried (strongest first) */
	double grid_l2[D2V_PROBE_GRID_MAX];
	double grid_acc[D2V_PROBE_GRID_MAX]; /* held-out accuracy of each */
	int grid_iters[D2V_PROBE_GRID_MAX];  /* L-BFGS iterations of each */
	long n_fit, n_holdout;  /* the split used for the selection */
	d2v_lbfgs_info fit;     /* the final fit */
} d2v_linear_result;

/*
 * The linear probe: standardise, select l2 on the held-out slice, refit on
 * all n training rows, score the m test rows.  Needs n >= 2; with fewer
 * than 10 held-out rows (or a fixed o->l2) there is no selection and the
 * grid's middle value (or o->l2) is used.  Labels outside [0,k) are
 * D2V_EINVAL.
 */
int d2v_probe_linear(const float *xtr, const int *ytr, long n,
    const float *xte, const int *yte, long m, int d, int k,
    const d2v_probe_opts *o, d2v_linear_result *res, d2v_err *err);

/*
 * Weighted k-NN: accuracy on the m test rows (and pred (m) when not NULL)
 * with the n training rows as the memory.  Rows of zero norm have
 * similarity 0 to everything.  knn larger than n uses n.
 */
int d2v_probe_knn(const float *xtr, const int *ytr, long n,
    const float *xte, const int *yte, long m, int d, int k, int knn,
    double temperature, int *pred, double *accuracy, d2v_err *err);

#endif
