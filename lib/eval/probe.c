/*
 * probe.c - L-BFGS, multinomial logistic regression, the linear and k-NN
 * probes (probe.h).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "backend/gemm.h"
#include "eval/probe.h"
#include "eval/stats.h"
#include "rng.h"

#define TEN(x) ((size_t)(x))
/* Rows per block of the logistic-regression passes: a block of x stays in
 * cache between the logits and the gradient GEMMs. */
#define LR_BLOCK 512
/* Test rows per block of the k-NN similarity matrix. */
#define KNN_BLOCK 128
/* The widest features rotated into their covariance eigenbasis (the
 * rotation costs d^2 floats and an n x d x d GEMM). */
#define PRECOND_MAX 4096
/* Iterations over which the relative decrease is measured (ftol). */
#define FTOL_PAST 10

/* ---- L-BFGS ------------------------------------------------------------ */

void
d2v_lbfgs_opts_default(d2v_lbfgs_opts *o)
{
	o->memory = 10;
	o->max_iter = 1000;
	o->gtol = 1e-5;
	o->ftol = 1e-10;
	o->h0 = NULL;
}

static double
dot(const double *a, const double *b, int p)
{
	double s = 0;

	for (int j = 0; j < p; j++)
		s += a[j] * b[j];
	return s;
}

static double
maxabs(const double *a, int p)
{
	double m = 0;

	for (int j = 0; j < p; j++)
		m = fmax(m, fabs(a[j]));
	return m;
}

/* d = -H g by the two-loop recursion over the cnt newest pairs of the ring
 * (S, Y, rho) whose newest entry is at head-1. */
static void
two_loop(double *d, const double *g, int p, const double *S,
    const double *Y, const double *rho, double *alpha, int mem, int cnt,
    int head, const double *h0)
{
	for (int j = 0; j < p; j++)
		d[j] = -g[j];
	for (int i = 0; i < cnt; i++) {
		int s = (head - 1 - i + mem) % mem;

		alpha[s] = rho[s] * dot(S + TEN(s) * p, d, p);
		for (int j = 0; j < p; j++)
			d[j] -= alpha[s] * Y[TEN(s) * p + j];
	}
	if (cnt > 0) {
		int s = (head - 1 + mem) % mem;
		const double *y = Y + TEN(s) * p;
		double yhy = 0, gamma;

		for (int j = 0; j < p; j++)
			yhy += y[j] * y[j] * (h0 ? h0[j] : 1.0);
		gamma = 1.0 / (rho[s] * yhy);
		for (int j = 0; j < p; j++)
			d[j] *= gamma * (h0 ? h0[j] : 1.0);
	} else if (h0 != NULL) {
		for (int j = 0; j < p; j++)
			d[j] *= h0[j];
	}
	for (int i = cnt - 1; i >= 0; i--) {
		int s = (head - 1 - i + mem) % mem;
		double beta = rho[s] * dot(Y + TEN(s) * p, d, p);

		for (int j = 0; j < p; j++)
			d[j] += (alpha[s] - beta) * S[TEN(s) * p + j];
	}
}

int
d2v_lbfgs(d2v_lbfgs_fn fn, void *ctx, double *x, int p,
    const d2v_lbfgs_opts *o, d2v_lbfgs_info *info, d2v_err *err)
{
	d2v_lbfgs_opts def;
	double *g, *d, *xn, *gn, *S, *Y, *rho, *alpha;
	double f, fn_ = 0, hist[FTOL_PAST];
	int mem, cnt = 0, head = 0, rc;

	if (o == NULL) {
		d2v_lbfgs_opts_default(&def);
		o = &def;
	}
	memset(info, 0, sizeof *info);
	mem = o->memory > 0 ? o->memory : 1;
	g = malloc(TEN(p) * sizeof *g);
	d = malloc(TEN(p) * sizeof *d);
	xn = malloc(TEN(p) * sizeof *xn);
	gn = malloc(TEN(p) * sizeof *gn);
	S = malloc(TEN(mem) * p * sizeof *S);
	Y = malloc(TEN(mem) * p * sizeof *Y);
	rho = malloc(TEN(mem) * sizeof *rho);
	alpha = malloc(TEN(mem) * sizeof *alpha);
	if (!g || !d || !xn || !gn || !S || !Y || !rho || !alpha) {
		rc = d2v_err_set(err, D2V_ENOMEM, "out of memory for L-BFGS "
		    "over %d parameters", p);
		goto out;
	}
	if ((rc = fn(ctx, x, &f, g, err)) < 0)
		goto out;
	info->evals = 1;
	if (!isfinite(f)) {
		rc = d2v_err_set(err, D2V_EINVAL, "L-BFGS: the objective is %g "
		    "at the start", f);
		goto out;
	}
	info->f = f;
	info->gmax = maxabs(g, p);
	if (info->gmax <= o->gtol) {
		info->converged = 1;
		goto out;
	}
	while (info->iters < o->max_iter) {
		double gd, step;
		int ls;

		two_loop(d, g, p, S, Y, rho, alpha, mem, cnt, head, o->h0);
		gd = dot(g, d, p);
		if (!(gd < 0)) { /* not a descent direction: restart */
			cnt = 0;
			two_loop(d, g, p, S, Y, rho, alpha, mem, 0, head, o->h0);
			gd = dot(g, d, p);
			if (!(gd < 0))
				break; /* a bad preconditioner or a zero gradient */
		}
		step = cnt == 0 ? fmin(1.0, 1.0 / sqrt(dot(d, d, p))) : 1.0;
		for (ls = 0; ls < 50; ls++) {
			for (int j = 0; j < p; j++)
				xn[j] = x[j] + step * d[j];
			if ((rc = fn(ctx, xn, &fn_, gn, err)) < 0)
				goto out;
			info->evals++;
			if (isfinite(fn_) && fn_ <= f + 1e-4 * step * gd)
				break;
			/* the minimiser of the quadratic through f, gd and fn_,
			 * kept within [0.1, 0.5] of the step */
			if (isfinite(fn_)) {
				double q = -gd * step * step /
				    (2 * (fn_ - f - gd * step));

				step = fmin(fmax(q, 0.1 * step), 0.5 * step);
			} else {
				step *= 0.1;
			}
		}
		if (ls == 50)
			break; /* no decrease along d: as good as it gets */
		{
			double *s = S + TEN(head) * p, *y = Y + TEN(head) * p, sy;

			for (int j = 0; j < p; j++) {
				s[j] = xn[j] - x[j];
				y[j] = gn[j] - g[j];
			}
			sy = dot(s, y, p);
			if (sy > 1e-12 * dot(y, y, p) && sy > 0) {
				rho[head] = 1.0 / sy;
				head = (head + 1) % mem;
				if (cnt < mem)
					cnt++;
			}
		}
		memcpy(x, xn, TEN(p) * sizeof *x);
		memcpy(g, gn, TEN(p) * sizeof *g);
		hist[info->iters % FTOL_PAST] = f;
		f = fn_;
		info->iters++;
		info->f = f;
		info->gmax = maxabs(g, p);
		if (info->gmax <= o->gtol) {
			info->converged = 1;
			break;
		}
		if (info->iters >= FTOL_PAST &&
		    hist[info->iters % FTOL_PAST] - f <= o->ftol * fmax(fabs(f), 1e-300)) {
			info->converged = 1;
			break;
		}
	}
	rc = 0;
out:
	free(g); free(d); free(xn); free(gn); free(S); free(Y); free(rho);
	free(alpha);
	return rc;
}

/* ---- multinomial logistic regression ----------------------------------- */

/* Logits z (nb,k) = x (nb,d) . W (d,k) + b (k), all float. */
static void
logits(float *z, const float *x, const float *W, const float *b, long nb,
    int d, int k)
{
	d2v_sgemm('N', 'N', (int)nb, k, d,
	    1.0f, x, d, W, k, 0.0f, z, k);
	for (long i = 0; i < nb; i++)
		for (int c = 0; c < k; c++)
			z[TEN(i) * k + c] += b[c];
}

/* W (d,k) and b (k) as floats from w (p). */
static int
to_float(const double *w, int d, int k, float **wf, d2v_err *err)
{
	size_t p = TEN(d + 1) * k;

	*wf = malloc(p * sizeof **wf);
	if (*wf == NULL)
		return d2v_err_set(err, D2V_ENOMEM, "out of memory for %d x %d "
		    "probe weights", d, k);
	for (size_t j = 0; j < p; j++)
		(*wf)[j] = (float)w[j];
	return 0;
}

/* Whether BLAS may be called from inside an OpenMP parallel region (then
 * single-threaded): true for the OpenMP and sequential builds of
 * OpenBLAS, not for its pthreads build. */
static int
blas_in_parallel(void)
{
#if defined(_OPENMP) && defined(D2V_HAVE_OPENBLAS)
	return openblas_get_parallel() != 1;
#else
	return 0;
#endif
}

/*
 * One block of nb rows: z (nb,k) becomes softmax - onehot (the gradient of
 * each row's loss over its logits), the block's loss is returned, and gw
 * (d,k) = xb^T z is added to gacc (p) in double (bias part last).
 */
static double
lr_block(const float *xb, const int *yb, long nb, int d, int k,
    const float *wf, float *z, float *gw, double *gacc)
{
	double bl = 0;

	logits(z, xb, wf, wf + TEN(d) * k, nb, d, k);
	for (long i = 0; i < nb; i++) {
		float *zi = z + TEN(i) * k;
		double mx = zi[0], se = 0;
		int yi = yb[i];

		for (int c = 1; c < k; c++)
			mx = fmax(mx, zi[c]);
		for (int c = 0; c < k; c++)
			se += exp(zi[c] - mx);
		bl += mx + log(se) - zi[yi];
		for (int c = 0; c < k; c++)
			zi[c] = (float)(exp(zi[c] - mx) / se - (c == yi));
	}
	if (gacc == NULL)
		return bl;
	d2v_sgemm('T', 'N', d, k, (int)nb,
	    1.0f, xb, d, z, k, 0.0f, gw, k);
	for (size_t j = 0; j < TEN(d) * k; j++)
		gacc[j] += gw[j];
	for (long i = 0; i < nb; i++)
		for (int c = 0; c < k; c++)
			gacc[TEN(d) * k + c] += z[TEN(i) * k + c];
	return bl;
}

int
d2v_logreg_loss(const float *x, const int *y, long n, int d, int k,
    const double *w, double l2, double *f, double *grad, d2v_err *err)
{
	size_t p = TEN(d + 1) * k;
	long nblk = (n + LR_BLOCK - 1) / LR_BLOCK;
	double loss = 0, reg = 0, *gacc = NULL, *lt;
	float *wf, *z, *gw = NULL;
	int rc, nt = 1, par = blas_in_parallel();

#ifdef _OPENMP
	if (par)
		nt = omp_get_max_threads();
#endif
	if ((rc = to_float(w, d, k, &wf, err)) < 0)
		return rc;
	/* per-thread scratch: logits, a block's gradient, and the gradient
	 * accumulators summed at the end */
	z = malloc(TEN(nt) * LR_BLOCK * k * sizeof *z);
	lt = calloc(TEN(nt), sizeof *lt);
	if (grad != NULL) {
		gw = malloc(TEN(nt) * d * k * sizeof *gw);
		gacc = calloc(TEN(nt) * p, sizeof *gacc);
	}
	if (z == NULL || lt == NULL ||
	    (grad != NULL && (gw == NULL || gacc == NULL))) {
		free(wf); free(z); free(lt); free(gw); free(gacc);
		return d2v_err_set(err, D2V_ENOMEM, "out of memory for the "
		    "logistic-regression loss");
	}
	/* blocks of rows in parallel, each GEMM single-threaded, so a block
	 * of x is read once from memory for both GEMMs; a static schedule
	 * and per-thread sums keep the order of the additions from run to
	 * run */
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
	for (long b = 0; b < nblk; b++) {
		long r0 = b * LR_BLOCK;
		long nb = n - r0 < LR_BLOCK ? n - r0 : LR_BLOCK;
		int tid = 0;

#ifdef _OPENMP
		tid = omp_get_thread_num();
#endif
		lt[tid] += lr_block(x + TEN(r0) * d, y + r0, nb, d, k, wf,
		    z + TEN(tid) * LR_BLOCK * k,
		    gw ? gw + TEN(tid) * d * k : NULL,
		    gacc ? gacc + TEN(tid) * p : NULL);
	}
	for (int t = 0; t < nt; t++)
		loss += lt[t];
	for (size_t j = 0; j < TEN(d) * k; j++)
		reg += w[j] * w[j];
	*f = loss / (double)n + 0.5 * l2 * reg;
	if (grad != NULL) {
		for (size_t j = 0; j < p; j++) {
			double s = 0;

			for (int t = 0; t < nt; t++)
				s += gacc[TEN(t) * p + j];
			grad[j] = s / (double)n;
		}
		for (size_t j = 0; j < TEN(d) * k; j++)
			grad[j] += l2 * w[j];
	}
	free(wf); free(z); free(lt); free(gw); free(gacc);
	return 0;
}

typedef struct lr_ctx {
	const float *x;
	const int *y;
	long n;
	int d, k;
	double l2;
} lr_ctx;

static int
lr_fn(void *ctx, const double *w, double *f, double *g, d2v_err *err)
{
	const lr_ctx *c = ctx;

	return d2v_logreg_loss(c->x, c->y, c->n, c->d, c->k, w, c->l2, f, g,
	    err);
}

int
d2v_logreg_fit(const float *x, const int *y, long n, int d, int k,
    double l2, double *w, const d2v_lbfgs_opts *o, d2v_lbfgs_info *info,
    d2v_err *err)
{
	lr_ctx c = {x, y, n, d, k, l2};
	size_t p = TEN(d + 1) * k;

	if (p > (size_t)1 << 30)
		return d2v_err_set(err, D2V_ELIMIT, "a probe of %d features x %d "
		    "classes is too large", d, k);
	return d2v_lbfgs(lr_fn, &c, w, (int)p, o, info, err);
}

int
d2v_logreg_predict(const float *x, long n, int d, int k, const double *w,
    int *pred, d2v_err *err)
{
	float *wf, *z;
	int rc;

	if ((rc = to_float(w, d, k, &wf, err)) < 0)
		return rc;
	if ((z = malloc(TEN(LR_BLOCK) * k * sizeof *z)) == NULL) {
		free(wf);
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	}
	for (long r0 = 0; r0 < n; r0 += LR_BLOCK) {
		long nb = n - r0 < LR_BLOCK ? n - r0 : LR_BLOCK;

		logits(z, x + TEN(r0) * d, wf, wf + TEN(d) * k, nb, d, k);
		for (long i = 0; i < nb; i++) {
			const float *zi = z + TEN(i) * k;
			int best = 0;

			for (int c = 1; c < k; c++)
				if (zi[c] > zi[best])
					best = c;
			pred[r0 + i] = best;
		}
	}
	free(wf); free(z);
	return 0;
}

/* ---- the probes -------------------------------------------------------- */

void
d2v_probe_opts_default(d2v_probe_opts *o)
{
	memset(o, 0, sizeof *o);
	o->ngrid = 8;
	for (int i = 0; i < o->ngrid; i++)
		o->grid[i] = pow(10.0, -1 - i);
	o->holdout = 0.1;
	o->seed = 1;
	o->patience = 2;
	d2v_lbfgs_opts_default(&o->lbfgs);
}

static int
check_labels(const int *y, long n, int k, const char *what, d2v_err *err)
{
	for (long i = 0; i < n; i++)
		if (y[i] < 0 || y[i] >= k)
			return d2v_err_set(err, D2V_EINVAL, "%s row %ld: label %d is "
			    "not in [0,%d)", what, i, y[i], k);
	return 0;
}

static double
accuracy(const float *x, const int *y, long n, int d, int k,
    const double *w, int *pred, d2v_err *err)
{
	long hit = 0;

	if (n == 0)
		return NAN;
	if (d2v_logreg_predict(x, n, d, k, w, pred, err) < 0)
		return -1;
	for (long i = 0; i < n; i++)
		hit += pred[i] == y[i];
	return (double)hit / (double)n;
}

/*
 * Rotates the rows of xs (n,d) and xt (m,d) in place into the eigenbasis of
 * xs's covariance; lam (d) gets its eigenvalues.  An orthogonal change of
 * basis: logistic regression with an L2 penalty has the same optimum
 * (rotated) and the same accuracy, and the eigenvalues give L-BFGS a
 * diagonal preconditioner.
 */
static int
rotate(float *xs, long n, float *xt, long m, int d, double *lam,
    d2v_err *err)
{
	double *cov = malloc(TEN(d) * d * sizeof *cov);
	float *E = malloc(TEN(d) * d * sizeof *E);
	float *tmp = malloc(TEN(LR_BLOCK) * d * sizeof *tmp);
	int rc;

	if (cov == NULL || E == NULL || tmp == NULL) {
		rc = d2v_err_set(err, D2V_ENOMEM, "linear probe: out of memory "
		    "for a %d x %d covariance", d, d);
		goto out;
	}
	if ((rc = d2v_features_cov(xs, n, d, cov, err)) < 0 ||
	    (rc = d2v_sym_eig(cov, d, lam, 1, err)) < 0)
		goto out;
	for (size_t j = 0; j < TEN(d) * d; j++)
		E[j] = (float)cov[j]; /* row i: eigenvector i */
	for (int part = 0; part < 2; part++) {
		float *x = part ? xt : xs;
		long rows = part ? m : n;

		for (long r0 = 0; r0 < rows; r0 += LR_BLOCK) {
			long nb = rows - r0 < LR_BLOCK ? rows - r0 : LR_BLOCK;

			/* tmp (nb,d) = x (nb,d) . E^T */
			d2v_sgemm('N', 'T', (int)nb,
			    d, d, 1.0f, x + TEN(r0) * d, d, E, d, 0.0f, tmp, d);
			memcpy(x + TEN(r0) * d, tmp, TEN(nb) * d * sizeof *tmp);
		}
	}
	rc = 0;
out:
	free(cov); free(E); free(tmp);
	return rc;
}

/* h0 (p): the preconditioner for l2 in the rotated basis: 1 / (lam_j +
 * k l2) for row j of W (the data term's curvature there is about lam_j / k
 * at the start), 1 / (1 + k l2) for the bias. */
static void
precond(double *h0, const double *lam, int d, int k, double l2)
{
	for (int j = 0; j < d; j++)
		for (int c = 0; c < k; c++)
			h0[TEN(j) * k + c] = 1.0 / (fmax(lam[j], 0) + k * l2);
	for (int c = 0; c < k; c++)
		h0[TEN(d) * k + c] = 1.0 / (1 + k * l2);
}

static int
cmp_desc(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x < y) - (x > y);
}

int
d2v_probe_linear(const float *xtr, const int *ytr, long n,
    const float *xte, const int *yte, long m, int d, int k,
    const d2v_probe_opts *o, d2v_linear_result *res, d2v_err *err)
{
	d2v_probe_opts def;
	d2v_lbfgs_opts lo;
	size_t p = TEN(d + 1) * k;
	double *mean = NULL, *sd = NULL, *w = NULL, *wbest = NULL;
	double *lam = NULL, *h0 = NULL;
	float *xs = NULL, *xt = NULL;
	int *ys = NULL, *perm = NULL, *pred = NULL;
	double grid[D2V_PROBE_GRID_MAX], best = -1;
	long h;
	int ngrid, worse = 0, rc;

	if (o == NULL) {
		d2v_probe_opts_default(&def);
		o = &def;
	}
	memset(res, 0, sizeof *res);
	if (n < 2 || d < 1 || k < 2)
		return d2v_err_set(err, D2V_EINVAL, "linear probe: needs 2 "
		    "training rows, 1 feature and 2 classes (have %ld, %d, %d)",
		    n, d, k);
	if (n > INT32_MAX)
		return d2v_err_set(err, D2V_ELIMIT, "linear probe: %ld training "
		    "rows is too many", n);
	if ((rc = check_labels(ytr, n, k, "training", err)) < 0 ||
	    (rc = check_labels(yte, m, k, "test", err)) < 0)
		return rc;
	mean = calloc(TEN(d), sizeof *mean);
	sd = calloc(TEN(d), sizeof *sd);
	w = calloc(p, sizeof *w);
	wbest = calloc(p, sizeof *wbest);
	xs = malloc(TEN(n) * d * sizeof *xs);
	xt = malloc((TEN(m) * d + 1) * sizeof *xt);
	ys = malloc(TEN(n) * sizeof *ys);
	perm = malloc(TEN(n) * sizeof *perm);
	pred = malloc(TEN(n > m ? n : m) * sizeof *pred);
	lam = malloc(TEN(d) * sizeof *lam);
	h0 = malloc(p * sizeof *h0);
	if (!mean || !sd || !w || !wbest || !xs || !xt || !ys || !perm ||
	    !pred || !lam || !h0) {
		rc = d2v_err_set(err, D2V_ENOMEM, "linear probe: out of memory "
		    "for %ld x %d features", n, d);
		goto out;
	}

	/* standardise with the training rows' statistics */
	d2v_features_moments(xtr, n, d, mean, sd);
	for (int j = 0; j < d; j++) {
		sd[j] = sqrt(sd[j] / (double)n);
		sd[j] = sd[j] > 1e-12 * (1 + fabs(mean[j])) ? 1.0 / sd[j] : 1.0;
	}
	/* xs: the training rows shuffled, the held-out slice last */
	{
		d2v_rng r;

		for (long i = 0; i < n; i++)
			perm[i] = (int)i;
		d2v_rng_seed(&r, o->seed, 0x9b0be, 0);
		d2v_rng_shuffle_int(&r, perm, (int)n);
	}
#pragma omp parallel for schedule(static)
	for (long i = 0; i < n; i++) {
		const float *src = xtr + TEN(perm[i]) * d;

		for (int j = 0; j < d; j++)
			xs[TEN(i) * d + j] = (float)((src[j] - mean[j]) * sd[j]);
		ys[i] = ytr[perm[i]];
	}
#pragma omp parallel for schedule(static)
	for (long i = 0; i < m; i++)
		for (int j = 0; j < d; j++)
			xt[TEN(i) * d + j] = (float)((xte[TEN(i) * d + j] - mean[j]) *
			    sd[j]);

	lo = o->lbfgs;
	lo.h0 = NULL;
	if (d > 1 && d <= PRECOND_MAX) {
		if ((rc = rotate(xs, n, xt, m, d, lam, err)) < 0)
			goto out;
		lo.h0 = h0;
	}

	/* the grid, strongest regularisation first */
	ngrid = o->ngrid < D2V_PROBE_GRID_MAX ? o->ngrid : D2V_PROBE_GRID_MAX;
	memcpy(grid, o->grid, TEN(ngrid > 0 ? ngrid : 0) * sizeof *grid);
	if (ngrid > 0)
		qsort(grid, (size_t)ngrid, sizeof *grid, cmp_desc);
	h = (long)(o->holdout * (double)n);
	if (o->l2 > 0 || ngrid <= 0 || h < 10 || n - h < 2) {
		res->l2 = o->l2 > 0 ? o->l2 : ngrid > 0 ? grid[ngrid / 2] : 1e-4;
	} else {
		res->n_fit = n - h;
		res->n_holdout = h;
		for (int gi = 0; gi < ngrid; gi++) {
			d2v_lbfgs_info info;
			double acc;

			if (lo.h0 != NULL)
				precond(h0, lam, d, k, grid[gi]);
			if ((rc = d2v_logreg_fit(xs, ys, n - h, d, k, grid[gi], w,
			    &lo, &info, err)) < 0)
				goto out;
			acc = accuracy(xs + TEN(n - h) * d, ys + (n - h), h, d, k, w,
			    pred, err);
			if (acc < 0) {
				rc = err ? err->code : D2V_ENOMEM;
				goto out;
			}
			res->grid_iters[res->ngrid] = info.iters;
			res->grid_l2[res->ngrid] = grid[gi];
			res->grid_acc[res->ngrid++] = acc;
			if (acc > best) {
				best = acc;
				res->l2 = grid[gi];
				memcpy(wbest, w, p * sizeof *w);
				worse = 0;
			} else if (o->patience > 0 && ++worse >= o->patience) {
				break;
			}
		}
		memcpy(w, wbest, p * sizeof *w);
	}
	if (lo.h0 != NULL)
		precond(h0, lam, d, k, res->l2);
	if ((rc = d2v_logreg_fit(xs, ys, n, d, k, res->l2, w, &lo,
	    &res->fit, err)) < 0)
		goto out;
	res->train_accuracy = accuracy(xs, ys, n, d, k, w, pred, err);
	res->accuracy = accuracy(xt, yte, m, d, k, w, pred, err);
	if (res->train_accuracy < 0 || res->accuracy < 0) {
		rc = err ? err->code : D2V_ENOMEM;
		goto out;
	}
	rc = 0;
out:
	free(mean); free(sd); free(w); free(wbest); free(xs); free(xt);
	free(ys); free(perm); free(pred); free(lam); free(h0);
	return rc;
}

/* Copies x (n,d) into out with every row scaled to unit L2 norm. */
static void
normalise_rows(float *out, const float *x, long n, int d)
{
#pragma omp parallel for schedule(static)
	for (long i = 0; i < n; i++) {
		const float *xi = x + TEN(i) * d;
		float *oi = out + TEN(i) * d;
		double s = 0;

		for (int j = 0; j < d; j++)
			s += (double)xi[j] * xi[j];
		s = s > 0 ? 1.0 / sqrt(s) : 0.0;
		for (int j = 0; j < d; j++)
			oi[j] = (float)(xi[j] * s);
	}
}

int
d2v_probe_knn(const float *xtr, const int *ytr, long n,
    const float *xte, const int *yte, long m, int d, int k, int knn,
    double temperature, int *pred, double *accuracy, d2v_err *err)
{
	float *tr = NULL, *te = NULL, *sim = NULL, *tops = NULL;
	int *topi = NULL;
	double *votes = NULL;
	long hit = 0;
	int rc;

	*accuracy = NAN;
	if (n < 1 || d < 1 || k < 1 || knn < 1 || !(temperature > 0))
		return d2v_err_set(err, D2V_EINVAL, "k-NN: needs a training row, "
		    "a feature, a class, k >= 1 and a positive temperature");
	if ((rc = check_labels(ytr, n, k, "training", err)) < 0 ||
	    (rc = check_labels(yte, m, k, "test", err)) < 0)
		return rc;
	if (n > INT32_MAX)
		return d2v_err_set(err, D2V_ELIMIT, "k-NN: %ld training rows is "
		    "too many", n);
	if (knn > n)
		knn = (int)n;
	tr = malloc(TEN(n) * d * sizeof *tr);
	te = malloc(TEN(KNN_BLOCK) * d * sizeof *te);
	sim = malloc(TEN(KNN_BLOCK) * n * sizeof *sim);
	tops = malloc(TEN(KNN_BLOCK) * knn * sizeof *tops);
	topi = malloc(TEN(KNN_BLOCK) * knn * sizeof *topi);
	votes = malloc(TEN(KNN_BLOCK) * k * sizeof *votes);
	if (!tr || !te || !sim || !tops || !topi || !votes) {
		rc = d2v_err_set(err, D2V_ENOMEM, "k-NN: out of memory for %ld x "
		    "%d features", n, d);
		goto out;
	}
	normalise_rows(tr, xtr, n, d);
	for (long r0 = 0; r0 < m; r0 += KNN_BLOCK) {
		long mb = m - r0 < KNN_BLOCK ? m - r0 : KNN_BLOCK;
		long bh = 0;

		normalise_rows(te, xte + TEN(r0) * d, mb, d);
		/* sim (mb,n) = te (mb,d) . tr (n,d)^T: cosine similarities */
		d2v_sgemm('N', 'T', (int)mb,
		    (int)n, d, 1.0f, te, d, tr, d, 0.0f, sim, (int)n);
#pragma omp parallel for schedule(static) reduction(+:bh)
		for (long i = 0; i < mb; i++) {
			const float *si = sim + TEN(i) * n;
			float *ts = tops + TEN(i) * knn;
			int *ti = topi + TEN(i) * knn, cnt = 0, best = 0;
			double *v = votes + TEN(i) * k;

			/* the knn largest, in descending order (insertion; the
			 * earlier training row first on equal similarity) */
			for (long j = 0; j < n; j++) {
				float s = si[j];
				int q;

				if (cnt == knn && !(s > ts[knn - 1]))
					continue;
				q = cnt < knn ? cnt++ : knn - 1;
				while (q > 0 && s > ts[q - 1]) {
					ts[q] = ts[q - 1];
					ti[q] = ti[q - 1];
					q--;
				}
				ts[q] = s;
				ti[q] = (int)j;
			}
			for (int c = 0; c < k; c++)
				v[c] = 0;
			for (int q = 0; q < cnt; q++)
				v[ytr[ti[q]]] += exp(ts[q] / temperature);
			for (int c = 1; c < k; c++)
				if (v[c] > v[best])
					best = c;
			if (pred != NULL)
				pred[r0 + i] = best;
			bh += best == yte[r0 + i];
		}
		hit += bh;
	}
	*accuracy = m > 0 ? (double)hit / (double)m : NAN;
	rc = 0;
out:
	free(tr); free(te); free(sim); free(tops); free(topi); free(votes);
	return rc;
}
