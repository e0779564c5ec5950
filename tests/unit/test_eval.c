/* test_eval.c - the probes and representation statistics of lib/eval on
 * data with a known answer: L-BFGS on Rosenbrock, the logistic-regression
 * gradient by finite differences, its optimum against plain gradient
 * descent, separable clusters, random labels, a hand-made k-NN vote and
 * effective ranks of known covariances. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval/probe.h"
#include "eval/stats.h"
#include "rng.h"
#include "t.h"

static int
rosenbrock(void *ctx, const double *x, double *f, double *g, d2v_err *err)
{
	(void)ctx; (void)err;
	*f = 100 * pow(x[1] - x[0] * x[0], 2) + pow(1 - x[0], 2);
	g[0] = -400 * x[0] * (x[1] - x[0] * x[0]) - 2 * (1 - x[0]);
	g[1] = 200 * (x[1] - x[0] * x[0]);
	return 0;
}

static void
test_lbfgs(void)
{
	double x[2] = {-1.2, 1};
	d2v_lbfgs_opts o;
	d2v_lbfgs_info info;
	d2v_err err = {0};
	int rc;

	d2v_lbfgs_opts_default(&o);
	o.gtol = 1e-8;
	rc = d2v_lbfgs(rosenbrock, NULL, x, 2, &o, &info, &err);
	T_OK(rc == 0 && info.converged && fabs(x[0] - 1) < 1e-6 &&
	    fabs(x[1] - 1) < 1e-6, "L-BFGS finds Rosenbrock's minimum (1,1) "
	    "from (-1.2,1): (%.8f, %.8f) in %d iterations, %d evaluations",
	    x[0], x[1], info.iters, info.evals);
	o.max_iter = 3;
	x[0] = -1.2; x[1] = 1;
	rc = d2v_lbfgs(rosenbrock, NULL, x, 2, &o, &info, &err);
	T_OK(rc == 0 && !info.converged && info.iters == 3,
	    "L-BFGS stops at max_iter and says it did not converge");
}

/* f = sum_j a_j (x_j - 1)^2 / 2 with a_j from 1e-4 to 1: ill-conditioned */
static int
quadratic(void *ctx, const double *x, double *f, double *g, d2v_err *err)
{
	const double *a = ctx;

	(void)err;
	*f = 0;
	for (int j = 0; j < 50; j++) {
		*f += 0.5 * a[j] * (x[j] - 1) * (x[j] - 1);
		g[j] = a[j] * (x[j] - 1);
	}
	return 0;
}

static void
test_lbfgs_precond(void)
{
	double a[50], h0[50], x[50] = {0}, y[50] = {0}, dx = 0, dy = 0;
	d2v_lbfgs_opts o;
	d2v_lbfgs_info plain, pre;
	d2v_err err = {0};

	for (int j = 0; j < 50; j++) {
		a[j] = pow(10.0, -4.0 * j / 49);
		h0[j] = 1 / a[j];
	}
	d2v_lbfgs_opts_default(&o);
	o.gtol = 1e-9;
	d2v_lbfgs(quadratic, a, x, 50, &o, &plain, &err);
	o.h0 = h0;
	d2v_lbfgs(quadratic, a, y, 50, &o, &pre, &err);
	for (int j = 0; j < 50; j++) {
		dx = fmax(dx, fabs(x[j] - 1));
		dy = fmax(dy, fabs(y[j] - 1));
	}
	T_OK(plain.converged && pre.converged && dx < 1e-4 && dy < 1e-6,
	    "L-BFGS with and without a diagonal preconditioner reaches the "
	    "minimum of an ill-conditioned quadratic (errors %.1e, %.1e)", dx,
	    dy);
	T_OK(pre.iters <= 2 && plain.iters > 10, "... the exact inverse "
	    "diagonal Hessian as preconditioner takes %d iterations, the "
	    "identity %d", pre.iters, plain.iters);
}

/* Gaussian clusters: row i of class y[i], centre c_y = sep * e_(y mod d)
 * (sign alternating), unit noise. */
static void
clusters(float *x, int *y, long n, int d, int k, double sep, int random_y,
    uint64_t seed)
{
	d2v_rng r;

	d2v_rng_seed(&r, seed, 0, 0);
	for (long i = 0; i < n; i++) {
		int c = (int)d2v_rng_below(&r, (uint64_t)k);

		y[i] = random_y ? (int)d2v_rng_below(&r, (uint64_t)k) : c;
		for (int j = 0; j < d; j++)
			x[i * d + j] = (float)d2v_rng_normal(&r);
		x[i * d + c % d] += (float)(c / d % 2 ? -sep : sep);
	}
}

/* The objective in double, written the obvious way: the slow twin. */
static double
slow_loss(const float *x, const int *y, long n, int d, int k,
    const double *w, double l2, double *g)
{
	double f = 0, reg = 0, z[16];

	memset(g, 0, sizeof(double) * (size_t)(d + 1) * k);
	for (long i = 0; i < n; i++) {
		double mx = -INFINITY, se = 0;

		for (int c = 0; c < k; c++) {
			z[c] = w[d * k + c];
			for (int j = 0; j < d; j++)
				z[c] += x[i * d + j] * w[j * k + c];
			mx = fmax(mx, z[c]);
		}
		for (int c = 0; c < k; c++)
			se += exp(z[c] - mx);
		f += mx + log(se) - z[y[i]];
		for (int c = 0; c < k; c++) {
			double r = exp(z[c] - mx) / se - (c == y[i]);

			for (int j = 0; j < d; j++)
				g[j * k + c] += r * x[i * d + j] / n;
			g[d * k + c] += r / n;
		}
	}
	for (int j = 0; j < d * k; j++) {
		reg += w[j] * w[j];
		g[j] += l2 * w[j];
	}
	return f / n + 0.5 * l2 * reg;
}

static void
test_logreg_gradient(void)
{
	enum { n = 60, d = 5, k = 4, p = (d + 1) * k };
	float x[n * d];
	int y[n];
	double w[p], g[p], gs[p], fd[p], f, fs, err_max = 0, gmax = 0;
	double l2 = 0.03, h = 1e-3;
	d2v_rng r;
	d2v_err err = {0};

	clusters(x, y, n, d, k, 1.0, 0, 3);
	d2v_rng_seed(&r, 4, 0, 0);
	for (int j = 0; j < p; j++)
		w[j] = 0.5 * d2v_rng_normal(&r);
	T_OK(d2v_logreg_loss(x, y, n, d, k, w, l2, &f, g, &err) == 0,
	    "the logistic-regression loss evaluates");
	fs = slow_loss(x, y, n, d, k, w, l2, gs);
	for (int j = 0; j < p; j++) {
		err_max = fmax(err_max, fabs(g[j] - gs[j]));
		gmax = fmax(gmax, fabs(gs[j]));
	}
	T_OK(fabs(f - fs) < 1e-5 * fabs(fs) && err_max < 1e-5 * gmax,
	    "loss %.7f and gradient equal the slow double-precision twin's "
	    "(%.7f; gradient error %.2e of %.3f)", f, fs, err_max, gmax);
	/* central differences on the library's loss */
	err_max = 0;
	for (int j = 0; j < p; j++) {
		double wp[p], fp, fm;

		memcpy(wp, w, sizeof w);
		wp[j] = w[j] + h;
		d2v_logreg_loss(x, y, n, d, k, wp, l2, &fp, NULL, &err);
		wp[j] = w[j] - h;
		d2v_logreg_loss(x, y, n, d, k, wp, l2, &fm, NULL, &err);
		fd[j] = (fp - fm) / (2 * h);
		err_max = fmax(err_max, fabs(fd[j] - g[j]));
	}
	T_OK(err_max < 2e-3 * gmax, "the gradient matches central finite "
	    "differences over all %d parameters (max error %.2e, max |g| "
	    "%.3f)", p, err_max, gmax);
	/* and a gradient that is wrong by a little is caught */
	T_OK(fabs(fd[3] - (g[3] + 0.01 * gmax)) > 2e-3 * gmax,
	    "... a check that a 1%% gradient error would fail");
}

/* The optimum found by L-BFGS equals the one plain gradient descent reaches
 * on the slow twin (a second method), on a tiny problem. */
static void
test_logreg_optimum(void)
{
	enum { n = 40, d = 2, k = 3, p = (d + 1) * k };
	float x[n * d];
	int y[n];
	double w[p] = {0}, v[p] = {0}, g[p], L = 0, l2 = 0.05, f1, f2, wd = 0;
	d2v_lbfgs_opts o;
	d2v_lbfgs_info info;
	d2v_err err = {0};
	int rc;

	clusters(x, y, n, d, k, 1.0, 0, 7);
	d2v_lbfgs_opts_default(&o);
	o.gtol = 1e-9;
	o.ftol = 0;
	rc = d2v_logreg_fit(x, y, n, d, k, l2, w, &o, &info, &err);
	T_OK(rc == 0 && info.gmax < 1e-5, "L-BFGS fits a 40-point, 3-class "
	    "problem: %d iterations, max |g| %.1e", info.iters, info.gmax);
	/* gradient descent with step 1/L, L >= 0.5 max |(x,1)|^2 + l2 */
	for (int i = 0; i < n; i++) {
		double s = 1;

		for (int j = 0; j < d; j++)
			s += x[i * d + j] * x[i * d + j];
		L = fmax(L, 0.5 * s);
	}
	L += l2;
	for (int it = 0; it < 100000; it++) {
		slow_loss(x, y, n, d, k, v, l2, g);
		for (int j = 0; j < p; j++)
			v[j] -= g[j] / L;
	}
	f1 = slow_loss(x, y, n, d, k, w, l2, g);
	f2 = slow_loss(x, y, n, d, k, v, l2, g);
	for (int j = 0; j < d * k; j++)
		wd = fmax(wd, fabs(w[j] - v[j]));
	T_OK(fabs(f1 - f2) < 1e-7 && wd < 1e-3, "... its optimum %.9f and "
	    "weights equal those of 100000 gradient-descent steps (%.9f, "
	    "max weight difference %.1e)", f1, f2, wd);
}

static void
test_probes_separable(void)
{
	enum { n = 600, m = 300, d = 16, k = 5 };
	static float xtr[n * d], xte[m * d];
	int ytr[n], yte[m], pred[m];
	d2v_probe_opts o;
	d2v_linear_result res;
	d2v_err err = {0};
	double acc;
	int rc;

	clusters(xtr, ytr, n, d, k, 8.0, 0, 11);
	clusters(xte, yte, m, d, k, 8.0, 0, 12);
	/* a badly scaled feature must not matter after standardisation */
	for (int i = 0; i < n; i++)
		xtr[i * d + 7] *= 1000;
	for (int i = 0; i < m; i++)
		xte[i * d + 7] *= 1000;
	d2v_probe_opts_default(&o);
	rc = d2v_probe_linear(xtr, ytr, n, xte, yte, m, d, k, &o, &res, &err);
	T_OK(rc == 0 && res.accuracy >= 0.995, "linear probe on separable "
	    "clusters: test accuracy %.4f (l2 %g chosen from %d values on %ld "
	    "held-out rows)", res.accuracy, res.l2, res.ngrid, res.n_holdout);
	T_OK(res.n_holdout == 60 && res.n_fit == 540 && res.ngrid >= 1 &&
	    res.grid_l2[0] == 1e-1 && res.fit.converged,
	    "... the selection held out 10%% of the rows, started from the "
	    "strongest l2 and the final fit converged");
	rc = d2v_probe_knn(xtr, ytr, n, xte, yte, m, d, k, 20, 0.07, pred,
	    &acc, &err);
	T_OK(rc == 0 && acc >= 0.995, "20-NN on separable clusters: %.4f",
	    acc);
	o.l2 = 0.5;
	rc = d2v_probe_linear(xtr, ytr, n, xte, yte, m, d, k, &o, &res, &err);
	T_OK(rc == 0 && res.l2 == 0.5 && res.ngrid == 0,
	    "a fixed l2 skips the selection");
	ytr[5] = k;
	rc = d2v_probe_linear(xtr, ytr, n, xte, yte, m, d, k, &o, &res, &err);
	T_OK(rc == D2V_EINVAL && strstr(err.msg, "label 5"),
	    "a label outside [0,k) is refused: %s", err.msg);
}

static void
test_probes_noise(void)
{
	enum { n = 1500, m = 1500, d = 16, k = 4 };
	static float xtr[n * d], xte[m * d];
	static int ytr[n], yte[m];
	d2v_probe_opts o;
	d2v_linear_result res;
	d2v_err err = {0};
	double acc;
	int rc;

	/* labels independent of the features */
	clusters(xtr, ytr, n, d, k, 0.0, 1, 21);
	clusters(xte, yte, m, d, k, 0.0, 1, 22);
	d2v_probe_opts_default(&o);
	rc = d2v_probe_linear(xtr, ytr, n, xte, yte, m, d, k, &o, &res, &err);
	T_OK(rc == 0 && fabs(res.accuracy - 0.25) < 0.05, "linear probe on "
	    "random labels stays near chance 0.25: %.4f", res.accuracy);
	rc = d2v_probe_knn(xtr, ytr, n, xte, yte, m, d, k, 20, 0.07, NULL,
	    &acc, &err);
	T_OK(rc == 0 && fabs(acc - 0.25) < 0.05, "20-NN on random labels "
	    "stays near chance: %.4f", acc);
}

/* Points on the unit circle at the given angles (degrees). */
static void
circle(float *x, const double *deg, int n)
{
	for (int i = 0; i < n; i++) {
		x[2 * i] = (float)cos(deg[i] * M_PI / 180);
		x[2 * i + 1] = (float)sin(deg[i] * M_PI / 180);
	}
}

static void
test_knn_hand(void)
{
	/* one training point of class 0 right on the test point, two of class
	 * 1 at 37 degrees (cosine 0.8), one of class 2 far away */
	const double deg[5] = {0, 37, -37, 180, 90};
	float tr[10], te[4];
	int ytr[5] = {0, 1, 1, 2, 2}, yte[2] = {0, 1}, pred[2];
	const double tdeg[2] = {0, 120};
	d2v_err err = {0};
	double acc;
	int rc;

	circle(tr, deg, 5);
	circle(te, tdeg, 2);
	/* scaling a row must not change cosine similarities */
	for (int j = 0; j < 2; j++)
		tr[2 + j] *= 5;
	/* k = 3: votes exp(1/0.07) = 1.6e6 for 0 against 2 exp(0.8/0.07) =
	 * 1.9e5 for 1; for the second point (120 deg): class 2 at 90 and 180
	 * (cos 0.866, 0.5) against class 1 at 37 (cos 0.12): class 2 */
	rc = d2v_probe_knn(tr, ytr, 5, te, yte, 2, 2, 3, 3, 0.07, pred, &acc,
	    &err);
	T_OK(rc == 0 && pred[0] == 0 && pred[1] == 2 && acc == 0.5,
	    "3-NN weighted by exp(s/0.07): the close minority class wins "
	    "(pred %d, %d; accuracy %.2f)", pred[0], pred[1], acc);
	rc = d2v_probe_knn(tr, ytr, 5, te, yte, 2, 2, 3, 3, 1e6, pred, &acc,
	    &err);
	T_OK(rc == 0 && pred[0] == 1, "... with a huge temperature it is a "
	    "majority vote: class %d", pred[0]);
	rc = d2v_probe_knn(tr, ytr, 5, te, yte, 2, 2, 3, 50, 0.07, pred, &acc,
	    &err);
	T_OK(rc == 0 && pred[0] == 0, "k larger than the training set uses "
	    "every row: class %d", pred[0]);
	rc = d2v_probe_knn(tr, ytr, 5, te, yte, 2, 2, 3, 1, 0.07, pred, &acc,
	    &err);
	T_OK(rc == 0 && pred[0] == 0 && pred[1] == 2, "1-NN takes the "
	    "nearest: %d, %d", pred[0], pred[1]);
}

static void
test_stats(void)
{
	enum { d = 8 };
	double a[d * d], v[d], er, want;
	d2v_err err = {0};
	d2v_rng r;
	int rc;

	memset(a, 0, sizeof a);
	for (int i = 0; i < d; i++)
		a[i * d + i] = 2.5;
	rc = d2v_effective_rank(a, d, &er, &err);
	T_OK(rc == 0 && fabs(er - d) < 1e-9, "effective rank of 2.5 I (8x8) "
	    "is 8: %.12f", er);
	d2v_rng_seed(&r, 1, 0, 0);
	for (int i = 0; i < d; i++)
		v[i] = d2v_rng_normal(&r);
	for (int i = 0; i < d; i++)
		for (int j = 0; j < d; j++)
			a[i * d + j] = v[i] * v[j];
	rc = d2v_effective_rank(a, d, &er, &err);
	T_OK(rc == 0 && fabs(er - 1) < 1e-6, "effective rank of a rank-1 "
	    "v v^T is 1: %.9f", er);
	/* eigenvalues 1 and 3 in a rotated basis: exp(H(0.25, 0.75)) */
	{
		double c = cos(0.3), s = sin(0.3), b[4];

		b[0] = 1 * c * c + 3 * s * s;
		b[1] = b[2] = (3 - 1) * c * s;
		b[3] = 1 * s * s + 3 * c * c;
		want = exp(-(0.25 * log(0.25) + 0.75 * log(0.75)));
		rc = d2v_effective_rank(b, 2, &er, &err);
		T_OK(rc == 0 && fabs(er - want) < 1e-9, "effective rank of a "
		    "rotated diag(1,3) is exp(H(1/4,3/4)) = %.6f: %.9f", want, er);
	}
	memset(a, 0, sizeof a);
	rc = d2v_effective_rank(a, d, &er, &err);
	T_OK(rc == 0 && er == 0, "a zero covariance has effective rank 0");
	{
		enum { n = 20000, dd = 6 };
		static float x[n * dd];

		/* rows on one line: t_i * v, plus a constant offset */
		for (int i = 0; i < n; i++) {
			double t = d2v_rng_normal(&r);

			for (int j = 0; j < dd; j++)
				x[i * dd + j] = (float)(t * v[j] + j);
		}
		rc = d2v_features_effective_rank(x, n, dd, &er, &err);
		T_OK(rc == 0 && fabs(er - 1) < 1e-3, "features on one line: "
		    "effective rank %.6f", er);
		/* an isotropic cloud, stds 2 in every dimension */
		for (int i = 0; i < n * dd; i++)
			x[i] = (float)(2 * d2v_rng_normal(&r) + 3);
		rc = d2v_features_effective_rank(x, n, dd, &er, &err);
		T_OK(rc == 0 && er > 5.95 && er <= 6 + 1e-9, "an isotropic "
		    "Gaussian cloud in 6-D: effective rank %.4f", er);
		T_OK(fabs(d2v_features_std(x, n, dd) - 2) < 0.03,
		    "... and mean per-dimension std %.4f (2)",
		    d2v_features_std(x, n, dd));
	}
	{
		const float x[4] = {0, 0, 2, 4};

		T_OK(fabs(d2v_features_std(x, 2, 2) -
		    (sqrt(2) + sqrt(8)) / 2) < 1e-12, "std of rows (0,0), (2,4) "
		    "is the mean of sqrt(2) and sqrt(8)");
		T_OK(d2v_features_std(x, 1, 2) == 0, "... and 0 for one row");
	}
}

int
main(void)
{
	test_lbfgs();
	test_lbfgs_precond();
	test_logreg_gradient();
	test_logreg_optimum();
	test_probes_separable();
	test_probes_noise();
	test_knn_hand();
	test_stats();
	return T_DONE();
}
