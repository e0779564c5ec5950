/* conv_dnnl.c - grouped convolutions through oneDNN (see conv_dnnl.h). */
#include "conv_dnnl.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#ifndef D2V_HAVE_DNNL

int
d2v_dnnl_conv_forward(float *out, const float *in, const float *w,
    const float *b, const d2v_conv_geom *c)
{
	(void)out; (void)in; (void)w; (void)b; (void)c;
	return -1;
}

int
d2v_dnnl_conv_backward(float *din, float *dw, float *db, const float *dout,
    const float *in, const float *w, const d2v_conv_geom *c)
{
	(void)din; (void)dw; (void)db; (void)dout; (void)in; (void)w; (void)c;
	return -1;
}

const char *
d2v_dnnl_conv_impl(const d2v_conv_geom *c)
{
	(void)c;
	return NULL;
}

#else

#include <oneapi/dnnl/dnnl.h>

/* One shape's primitives.  The reorders are NULL where the primitive
 * takes the plain layout itself. */
typedef struct entry {
	d2v_conv_geom g;
	int ok;                      /* 1 made, -1 oneDNN does not take it */
	const char *impl;            /* the forward kernel's name */
	dnnl_memory_desc_t src, dst, wplain, bias, wf, wd, dwb;
	dnnl_primitive_t fwd, bwd_data, bwd_w;
	dnnl_primitive_t to_wf, to_wd, from_dwb; /* reorders, or NULL */
} entry;

#define NENTRY 64

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static entry cache[NENTRY];
static int nentry;
static int state;                /* 0 unknown, 1 usable, -1 not */
static dnnl_engine_t eng;
static dnnl_stream_t strm;
/* one workspace, grown to the largest call: the reordered weights, the
 * input gradient before it is added, the weight gradient in both
 * layouts, the bias gradient, zeros for a missing bias */
static float *ws;
static size_t ws_n;

static int
usable(void)
{
	if (state == 0) {
		state = -1;
		if (dnnl_engine_create(&eng, dnnl_cpu, 0) == dnnl_success) {
			if (dnnl_stream_create(&strm, eng,
			    dnnl_stream_default_flags) == dnnl_success)
				state = 1;
			else
				dnnl_engine_destroy(eng);
		}
	}
	return state == 1;
}

static float *
workspace(size_t n)
{
	if (n > ws_n) {
		float *p = realloc(ws, n * sizeof *p);

		if (p == NULL)
			return NULL;
		ws = p;
		ws_n = n;
	}
	return ws;
}

static int
same_geom(const d2v_conv_geom *a, const d2v_conv_geom *b)
{
	return a->R == b->R && a->Hi == b->Hi && a->Wi == b->Wi &&
	    a->Ho == b->Ho && a->Wo == b->Wo && a->Ci == b->Ci &&
	    a->Co == b->Co && a->G == b->G && a->kh == b->kh &&
	    a->kw == b->kw && a->st == b->st && a->ph == b->ph &&
	    a->pw == b->pw;
}

/* a reorder from one layout to another, or NULL (in *r) when they are
 * the same; 0 or -1 */
static int
reorder(dnnl_primitive_t *r, const dnnl_memory_desc_t *from,
    const dnnl_memory_desc_t *to)
{
	dnnl_primitive_desc_t pd;
	int rc;

	*r = NULL;
	if (dnnl_memory_desc_equal(from, to))
		return 0;
	if (dnnl_reorder_primitive_desc_create(&pd, from, eng, to, eng, NULL))
		return -1;
	rc = dnnl_primitive_create(r, pd) == dnnl_success ? 0 : -1;
	dnnl_primitive_desc_destroy(pd);
	return rc;
}

static int
is_ref(const dnnl_primitive_desc_t pd, const char **impl)
{
	const char *s = NULL;

	if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &s) ||
	    s == NULL)
		return 1;
	if (impl != NULL)
		*impl = s;
	return strncmp(s, "ref", 3) == 0;
}

/* The primitives of one shape into e (e->ok set either way). */
static void
make(entry *e)
{
	const d2v_conv_geom *c = &e->g;
	dnnl_dims_t ds = {c->R, c->Ci, c->Hi, c->Wi};
	dnnl_dims_t dd = {c->R, c->Co, c->Ho, c->Wo};
	dnnl_dims_t dw = {c->G, c->Co / c->G, c->Ci / c->G, c->kh, c->kw};
	dnnl_dims_t db = {c->Co}, st = {c->st, c->st}, pl = {c->ph, c->pw};
	dnnl_dims_t pr = {(c->Ho - 1) * c->st + c->kh - c->Hi - c->ph,
	    (c->Wo - 1) * c->st + c->kw - c->Wi - c->pw};
	dnnl_memory_desc_t wany;
	dnnl_convolution_desc_t fd, bdd, bwd;
	dnnl_primitive_desc_t fpd = NULL, dpd = NULL, wpd = NULL;

	e->ok = -1;
	if (dnnl_memory_desc_init_by_tag(&e->src, 4, ds, dnnl_f32, dnnl_nhwc) ||
	    dnnl_memory_desc_init_by_tag(&e->dst, 4, dd, dnnl_f32, dnnl_nhwc) ||
	    dnnl_memory_desc_init_by_tag(&e->wplain, 5, dw, dnnl_f32,
	    dnnl_goihw) ||
	    dnnl_memory_desc_init_by_tag(&wany, 5, dw, dnnl_f32,
	    dnnl_format_tag_any) ||
	    dnnl_memory_desc_init_by_tag(&e->bias, 1, db, dnnl_f32, dnnl_a))
		return;
	if (dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training,
	    dnnl_convolution_direct, &e->src, &wany, &e->bias, &e->dst, st, pl,
	    pr) ||
	    dnnl_primitive_desc_create(&fpd, &fd, NULL, eng, NULL))
		goto out;
	if (dnnl_convolution_backward_data_desc_init(&bdd,
	    dnnl_convolution_direct, &e->src, &wany, &e->dst, st, pl, pr) ||
	    dnnl_primitive_desc_create(&dpd, &bdd, NULL, eng, fpd) ||
	    dnnl_convolution_backward_weights_desc_init(&bwd,
	    dnnl_convolution_direct, &e->src, &wany, &e->bias, &e->dst, st, pl,
	    pr) ||
	    dnnl_primitive_desc_create(&wpd, &bwd, NULL, eng, fpd))
		goto out;
	/* the reference kernels are slower than d2v's own paths */
	if (is_ref(fpd, &e->impl) || is_ref(dpd, NULL) || is_ref(wpd, NULL))
		goto out;
	e->wf = *dnnl_primitive_desc_query_md(fpd, dnnl_query_weights_md, 0);
	e->wd = *dnnl_primitive_desc_query_md(dpd, dnnl_query_weights_md, 0);
	e->dwb = *dnnl_primitive_desc_query_md(wpd,
	    dnnl_query_diff_weights_md, 0);
	if (dnnl_primitive_create(&e->fwd, fpd) ||
	    dnnl_primitive_create(&e->bwd_data, dpd) ||
	    dnnl_primitive_create(&e->bwd_w, wpd) ||
	    reorder(&e->to_wf, &e->wplain, &e->wf) < 0 ||
	    reorder(&e->to_wd, &e->wplain, &e->wd) < 0 ||
	    reorder(&e->from_dwb, &e->dwb, &e->wplain) < 0)
		goto out;
	e->ok = 1;
out:
	if (e->ok != 1) {
		/* what was made before the failure */
		dnnl_primitive_t *p[] = {&e->fwd, &e->bwd_data, &e->bwd_w,
		    &e->to_wf, &e->to_wd, &e->from_dwb};

		for (size_t i = 0; i < sizeof p / sizeof *p; i++)
			if (*p[i] != NULL) {
				dnnl_primitive_destroy(*p[i]);
				*p[i] = NULL;
			}
		e->impl = NULL;
	}
	/* the implementation string lives in the primitive descriptor: keep
	 * a copy of the name */
	if (e->impl != NULL) {
		static char names[NENTRY][48];
		size_t i = (size_t)(e - cache);

		strncpy(names[i], e->impl, sizeof names[i] - 1);
		e->impl = names[i];
	}
	if (fpd)
		dnnl_primitive_desc_destroy(fpd);
	if (dpd)
		dnnl_primitive_desc_destroy(dpd);
	if (wpd)
		dnnl_primitive_desc_destroy(wpd);
}

/* the entry of a shape, made on first use; NULL when oneDNN does not take
 * it (or the cache is full) */
static entry *
lookup(const d2v_conv_geom *c)
{
	entry *e = NULL;

	if (!usable())
		return NULL;
	for (int i = 0; i < nentry; i++)
		if (same_geom(&cache[i].g, c))
			e = &cache[i];
	if (e == NULL) {
		if (nentry == NENTRY)
			return NULL;
		e = &cache[nentry++];
		memset(e, 0, sizeof *e);
		e->g = *c;
		make(e);
	}
	return e->ok == 1 ? e : NULL;
}

static int
mem(dnnl_memory_t *m, const dnnl_memory_desc_t *d, const void *p)
{
	return dnnl_memory_create(m, d, eng, (void *)p) == dnnl_success ? 0 : -1;
}

/* runs a primitive on n (arg, desc, pointer) triples */
static int
run(dnnl_primitive_t p, int n, const int *arg, const dnnl_memory_desc_t **d,
    const void **ptr)
{
	dnnl_exec_arg_t a[4];
	int rc = -1, made = 0;

	for (; made < n; made++) {
		a[made].arg = arg[made];
		if (mem(&a[made].memory, d[made], ptr[made]) < 0)
			goto out;
	}
	rc = dnnl_primitive_execute(p, strm, n, a) == dnnl_success &&
	    dnnl_stream_wait(strm) == dnnl_success ? 0 : -1;
out:
	for (int i = 0; i < made; i++)
		dnnl_memory_destroy(a[i].memory);
	return rc;
}

static int
run_reorder(dnnl_primitive_t r, const dnnl_memory_desc_t *from,
    const void *src, const dnnl_memory_desc_t *to, void *dst)
{
	int arg[2] = {DNNL_ARG_FROM, DNNL_ARG_TO};
	const dnnl_memory_desc_t *d[2] = {from, to};
	const void *p[2] = {src, dst};

	return run(r, 2, arg, d, p);
}

static size_t
floats(const dnnl_memory_desc_t *d)
{
	return (dnnl_memory_desc_get_size(d) + sizeof(float) - 1) /
	    sizeof(float);
}

int
d2v_dnnl_conv_forward(float *out, const float *in, const float *w,
    const float *b, const d2v_conv_geom *c)
{
	entry *e;
	const float *wk = w;
	float *wbuf, *zero;
	size_t nw;
	int rc = -1;

	pthread_mutex_lock(&lock);
	if ((e = lookup(c)) == NULL)
		goto out;
	nw = floats(&e->wf);
	if ((wbuf = workspace(nw + (size_t)c->Co)) == NULL)
		goto out;
	zero = wbuf + nw;
	if (b == NULL) {
		memset(zero, 0, sizeof *zero * (size_t)c->Co);
		b = zero;
	}
	if (e->to_wf != NULL) {
		if (run_reorder(e->to_wf, &e->wplain, w, &e->wf, wbuf) < 0)
			goto out;
		wk = wbuf;
	}
	{
		int arg[4] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_BIAS,
		    DNNL_ARG_DST};
		const dnnl_memory_desc_t *d[4] = {&e->src, &e->wf, &e->bias,
		    &e->dst};
		const void *p[4] = {in, wk, b, out};

		rc = run(e->fwd, 4, arg, d, p);
	}
out:
	pthread_mutex_unlock(&lock);
	return rc;
}

int
d2v_dnnl_conv_backward(float *din, float *dw, float *db, const float *dout,
    const float *in, const float *w, const d2v_conv_geom *c)
{
	entry *e;
	size_t nin = (size_t)c->R * c->Hi * c->Wi * c->Ci, nwd, ndwb, nplain;
	float *wbuf, *ibuf, *dwbuf, *dwplain, *dbbuf;
	int rc = -1;

	pthread_mutex_lock(&lock);
	if ((e = lookup(c)) == NULL)
		goto out;
	nwd = floats(&e->wd);
	ndwb = floats(&e->dwb);
	nplain = (size_t)c->Co * (c->Ci / c->G) * c->kh * c->kw;
	if ((wbuf = workspace(nwd + nin + ndwb + nplain + (size_t)c->Co)) ==
	    NULL)
		goto out;
	ibuf = wbuf + nwd;
	dwbuf = ibuf + nin;
	dwplain = dwbuf + ndwb;
	dbbuf = dwplain + nplain;
	if (din != NULL) {
		int arg[3] = {DNNL_ARG_DIFF_DST, DNNL_ARG_WEIGHTS,
		    DNNL_ARG_DIFF_SRC};
		const dnnl_memory_desc_t *d[3] = {&e->dst, &e->wd, &e->src};
		const void *p[3] = {dout, w, ibuf};

		if (e->to_wd != NULL) {
			if (run_reorder(e->to_wd, &e->wplain, w, &e->wd, wbuf) < 0)
				goto out;
			p[1] = wbuf;
		}
		if (run(e->bwd_data, 3, arg, d, p) < 0)
			goto out;
	}
	if (dw != NULL || db != NULL) {
		int arg[4] = {DNNL_ARG_DIFF_DST, DNNL_ARG_SRC,
		    DNNL_ARG_DIFF_WEIGHTS, DNNL_ARG_DIFF_BIAS};
		const dnnl_memory_desc_t *d[4] = {&e->dst, &e->src, &e->dwb,
		    &e->bias};
		const void *p[4] = {dout, in, dwbuf, dbbuf};

		if (run(e->bwd_w, 4, arg, d, p) < 0)
			goto out;
		if (dw != NULL && e->from_dwb != NULL &&
		    run_reorder(e->from_dwb, &e->dwb, dwbuf, &e->wplain,
		    dwplain) < 0)
			goto out;
	}
	/* the sums, after every primitive has worked: nothing is added
	 * when one fails, and the caller's path does the whole */
	if (din != NULL) {
#pragma omp parallel for simd schedule(static)
		for (size_t i = 0; i < nin; i++)
			din[i] += ibuf[i];
	}
	if (dw != NULL) {
		const float *g = e->from_dwb != NULL ? dwplain : dwbuf;

		for (size_t i = 0; i < nplain; i++)
			dw[i] += g[i];
	}
	if (db != NULL)
		for (int i = 0; i < c->Co; i++)
			db[i] += dbbuf[i];
	rc = 0;
out:
	pthread_mutex_unlock(&lock);
	return rc;
}

const char *
d2v_dnnl_conv_impl(const d2v_conv_geom *c)
{
	entry *e;
	const char *s;

	pthread_mutex_lock(&lock);
	e = lookup(c);
	s = e != NULL ? e->impl : NULL;
	pthread_mutex_unlock(&lock);
	return s;
}

#endif
