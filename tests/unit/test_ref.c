/*
 * test_ref.c - d2v against the PyTorch reference (tests/ref/v2_image.py,
 * v2_text.py, v2_audio.py and their *_tiny.safetensors fixtures): targets,
 * predictions, loss,
 * every gradient, and five updates of Adam and the EMA, within 1e-4
 * relative (per tensor, in the L2 norm); and the bf16 linear layers
 * against tests/ref/bf16_matmul.py (rounding bit for bit, the products
 * within 1e-6).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "t.h"
#include "train/checkpoint.h"
#include "train/optim.h"
#include "train/safetensors.h"

#define TOL 1e-4

static d2v_st fx;

static const float *
get(const char *name, size_t n)
{
	d2v_err err = {0};
	size_t nb = 0;
	const float *p = d2v_st_get(&fx, name, "F32", NULL, NULL, &nb, &err);

	if (p == NULL || nb != n * sizeof(float)) {
		printf("not ok - fixture tensor %s missing or of %zu bytes, "
		    "expected %zu\n", name, nb, n * sizeof(float));
		exit(1);
	}
	return p;
}

/* Compares every parameter of buf with expect.<role>.<name>; returns the
 * worst error and names it. */
static double
compare_params(const d2v_model *m, const float *buf, const char *role,
    int teacher_only, char *worst_name)
{
	double worst = 0;

	for (int i = 0; i < m->lay.count; i++) {
		const d2v_param *p = &m->lay.p[i];
		char name[160];
		double e;

		if (teacher_only && !p->teacher)
			continue;
		snprintf(name, sizeof name, "expect.%s.%s", role, p->name);
		e = t_relerr(buf + p->offset, get(name, p->size), p->size);
		if (e > worst) {
			worst = e;
			snprintf(worst_name, 96, "%s", p->name);
		}
	}
	return worst;
}

/* Runs one fixture: the model config and student weights from its
 * metadata, input.x of dtype xdt. */
static void
run_fixture(const char *rel, const char *xdt)
{
	char path[512];
	d2v_model m;
	d2v_err err = {0};
	d2v_step_out o;
	const void *x;
	const uint8_t *mask;
	int B = 2, N, D, R, rank = 0;
	int64_t shape[8] = {0};
	size_t nb;
	char wn[96] = "";
	double e;

	snprintf(path, sizeof path, "%s%s%s", getenv("D2V_ROOT") ?
	    getenv("D2V_ROOT") : "", getenv("D2V_ROOT") ? "/" : "", rel);
	if (d2v_st_load(&fx, path, &err) < 0) {
		printf("not ok - load the fixture: %s\n", err.msg);
		exit(1);
	}
	T_OK(d2v_checkpoint_load(path, &m, d2v_backend_cpu(), NULL, NULL, &err) == 0,
	    "%s: the fixture loads as a checkpoint (config and student "
	    "weights)%s%s", rel, err.code ? ": " : "", err.code ? err.msg : "");
	x = d2v_st_get(&fx, "input.x", xdt, &rank, shape, &nb, &err);
	T_OK(x != NULL && rank >= 2, "%s: input.x is %s", rel, xdt);
	if (x == NULL)
		exit(1);
	T_OK(d2v_model_set_length(&m, (int)shape[1], &err) == 0,
	    "%s: length %lld accepted", rel, (long long)shape[1]);
	B = (int)shape[0];
	N = m.N;
	D = m.D;
	R = B * m.cfg.clone;
	mask = d2v_st_get(&fx, "input.mask", "U8", NULL, NULL, &nb, &err);
	T_OK(mask && nb == (size_t)R * N, "%s: fixture mask of [%d, %d]", rel,
	    R, N);
	if (d2v_st_get(&fx, "input.x_masked", "I32", NULL, NULL, &nb, &err)) {
		/* v1 text: the student reads x_masked */
		T_OK(nb == (size_t)B * N * 4, "%s: input.x_masked of [%d, %d]", rel, B,
		    N);
		d2v_model_set_student_ids(&m, d2v_st_get(&fx, "input.x_masked",
		    "I32", NULL, NULL, &nb, &err));
	}

	/* step 0 */
	T_OK(d2v_model_step(&m, x, mask, d2v_config_is_v1(&m.cfg) ? NULL :
	    get("input.noise.0", (size_t)R * N * D),
	    NULL, NULL, B, 0, &o, &err) == 0, "%s: step 0 runs%s%s", rel,
	    err.code ? ": " : "", err.code ? err.msg : "");
	if (d2v_st_get(&fx, "expect.feat", "F32", NULL, NULL, &nb, &err)) {
		e = t_relerr(m.tok, get("expect.feat", (size_t)B * N * D),
		    (size_t)B * N * D);
		T_OK(e < TOL, "%s: feature encoder output matches (rel %.2e)",
		    rel, e);
	}
	e = t_relerr(m.y, get("expect.y", (size_t)B * N * D), (size_t)B * N * D);
	T_OK(e < TOL, "%s: teacher targets y match (rel %.2e)", rel, e);
	if (m.E && !d2v_config_is_v1(&m.cfg)) {
		e = t_relerr(m.ycls, get("expect.target_cls", (size_t)B * D),
		    (size_t)B * D);
		T_OK(e < TOL, "%s: target_cls matches (rel %.2e)", rel, e);
	}
	{
		size_t np = (size_t)R * (N + (d2v_config_is_v1(&m.cfg) ? m.E : 0)) * D;

		e = t_relerr(m.pred, get("expect.pred", np), np);
	}
	T_OK(e < TOL, "%s: predictions match (rel %.2e)", rel, e);
	e = fabs(o.loss - get("expect.loss", 1)[0]) / get("expect.loss", 1)[0];
	T_OK(e < TOL, "%s: loss %.7f matches %.7f (rel %.2e)", rel, o.loss,
	    get("expect.loss", 1)[0], e);
	e = compare_params(&m, m.grads, "grad", 0, wn);
	T_OK(e < TOL, "%s: every gradient matches (worst rel %.2e, %s)", rel, e,
	    wn);

	/* five updates, the first from the step above */
	{
		const float *losses = get("expect.losses", 5);
		const float *norms = get("expect.grad_norm", 5);
		const float *lrs = get("expect.lr", 5), *taus = get("expect.tau", 5);
		double wl = 0, wg = 0, wlr = 0, wt = 0;

		for (long k = 0; k < 5; k++) {
			char nn[32];
			double lr, tau, g;

			if (k > 0) {
				snprintf(nn, sizeof nn, "input.noise.%ld", k);
				d2v_model_step(&m, x, mask, d2v_config_is_v1(&m.cfg) ?
				    NULL : get(nn, (size_t)R * N * D),
				    NULL, NULL, B, 0, &o, &err);
			}
			wl = fmax(wl, fabs(o.loss - losses[k]) / fabs(losses[k]));
			g = d2v_train_update(&m, k, &lr, &tau);
			wg = fmax(wg, fabs(g - norms[k]) / norms[k]);
			wlr = fmax(wlr, fabs(lr - lrs[k]) / fmax(lrs[k], 1e-12));
			wt = fmax(wt, fabs(tau - taus[k]));
		}
		T_OK(wl < TOL, "%s: losses of 5 steps match (worst rel %.2e)", rel,
		    wl);
		T_OK(wg < TOL, "%s: gradient norms match (worst rel %.2e)", rel, wg);
		T_OK(wlr < 1e-6 && wt < 1e-7, "%s: lr and tau schedules match", rel);
	}
	e = compare_params(&m, m.params, "student", 0, wn);
	T_OK(e < TOL, "%s: student after 5 updates matches (worst rel %.2e, %s)",
	    rel, e, wn);
	e = compare_params(&m, m.teacher, "teacher", 1, wn);
	T_OK(e < TOL, "%s: EMA teacher after 5 updates matches (worst rel %.2e, "
	    "%s)", rel, e, wn);
	d2v_model_free(&m);
	d2v_st_free(&fx);
}

/* The bf16 table's linear layer against bf16_matmul.py: its rounding
 * table bit for bit, out, din, dw and db within 1e-6 (fp32 sums of exact
 * products against float64 ones); out's products without the bias, which
 * dominates some rows. */
static void
run_bf16(void)
{
	char path[512];
	d2v_err err = {0};
	const d2v_ops *bo = d2v_backend_cpu_bf16(NULL);
	enum { M = 37, K = 53, N = 29 };
	const float *x, *w, *b, *d;
	float *out, *outb, *din, *dw, *db, *want, *r;
	size_t nr, nb;
	int same = 1;

	snprintf(path, sizeof path, "%s%stests/ref/bf16_matmul.safetensors",
	    getenv("D2V_ROOT") ? getenv("D2V_ROOT") : "",
	    getenv("D2V_ROOT") ? "/" : "");
	if (d2v_st_load(&fx, path, &err) < 0) {
		printf("not ok - load the fixture: %s\n", err.msg);
		exit(1);
	}
	d2v_st_get(&fx, "round_in", "F32", NULL, NULL, &nb, &err);
	nr = nb / sizeof(float);
	r = malloc(nb ? nb : 1);
	d2v_bf16_round(r, get("round_in", nr), nr);
	for (size_t i = 0; i < nr; i++)
		same &= memcmp(&r[i], get("round_out", nr) + i, 4) == 0;
	T_OK(nr >= 40 && same, "bf16 rounding of %zu values equals torch's bit "
	    "for bit", nr);
	x = get("x", M * K), w = get("w", N * K), b = get("b", N);
	d = get("dout", M * N);
	out = calloc(M * N, 4), outb = calloc(M * N, 4), want = calloc(M * N, 4);
	din = calloc(M * K, 4), dw = calloc(N * K, 4), db = calloc(N, 4);
	bo->matmul_forward(out, x, w, b, M, K, N);
	bo->matmul_forward(outb, x, w, NULL, M, K, N);
	for (int i = 0; i < M * N; i++)
		want[i] = get("out", M * N)[i] - b[i % N];
	bo->matmul_backward(din, dw, db, d, x, w, M, K, N);
	T_OK(t_relerr(out, get("out", M * N), M * N) < 1e-6 &&
	    t_relerr(outb, want, M * N) < 1e-6 &&
	    t_relerr(din, get("din", M * K), M * K) < 1e-6 &&
	    t_relerr(dw, get("dw", N * K), N * K) < 1e-6 &&
	    t_relerr(db, get("db", N), N) < 1e-6,
	    "bf16 linear = torch on bf16 operands (%s): out %.1e (products "
	    "%.1e) din %.1e dw %.1e db %.1e", d2v_bf16_onednn() ? "onednn" :
	    "emulated", t_relerr(out, get("out", M * N), M * N),
	    t_relerr(outb, want, M * N), t_relerr(din, get("din", M * K), M * K),
	    t_relerr(dw, get("dw", N * K), N * K), t_relerr(db, get("db", N), N));
	free(r); free(out); free(outb); free(want); free(din); free(dw); free(db);
	d2v_st_free(&fx);
}

int
main(void)
{
	run_fixture("tests/ref/v2_image_tiny.safetensors", "U8");
	run_fixture("tests/ref/v2_text_tiny.safetensors", "I32");
	run_fixture("tests/ref/v2_audio_tiny.safetensors", "F32");
	run_fixture("tests/ref/v1_image_tiny.safetensors", "U8");
	run_fixture("tests/ref/v1_audio_tiny.safetensors", "F32");
	run_fixture("tests/ref/v1_text_tiny.safetensors", "I32");
	run_bf16();
	return T_DONE();
}
