/* model.c - the data2vec 2.0 image model: forward and backward (model.h). */
#include "model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

#define TEN(x) ((size_t)(x))

static void
freev(float **v, int n)
{
	if (v == NULL)
		return;
	for (int i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static void
acts_free(d2v_enc_acts *a, int nb)
{
	free(a->x_in); free(a->ctx_mean); free(a->ctx_rstd); free(a->x0);
	freev(a->qkv, nb); freev(a->probs, nb); freev(a->att, nb);
	freev(a->x1, nb); freev(a->m1, nb); freev(a->s1, nb); freev(a->r, nb);
	freev(a->h1, nb); freev(a->g, nb); freev(a->f, nb); freev(a->x2, nb);
	freev(a->m2, nb); freev(a->s2, nb); freev(a->out, nb);
	freev(a->drop_att, nb); freev(a->drop_ao, nb); freev(a->drop_act, nb);
	freev(a->drop_f, nb);
	memset(a, 0, sizeof *a);
}

static float **
allocv(int n, size_t each)
{
	float **v = calloc((size_t)n, sizeof *v);

	if (v == NULL)
		return NULL;
	for (int i = 0; i < n; i++)
		if ((v[i] = malloc(each * sizeof(float))) == NULL) {
			freev(v, n);
			return NULL;
		}
	return v;
}

static int
has_dropout(const d2v_config *c)
{
	return c->encoder_dropout > 0 || c->attention_dropout > 0 ||
	    c->activation_dropout > 0 || c->post_mlp_drop > 0 || c->drop_path > 0;
}

static int
acts_alloc(d2v_enc_acts *a, const d2v_model *m, int R, int T, int with_drop)
{
	size_t RT = TEN(R) * T, D = TEN(m->D), F = TEN(m->F);
	int nb = m->nb;

	if (a->R == R && a->T == T)
		return 0;
	acts_free(a, nb);
	a->R = R;
	a->T = T;
	a->x_in = malloc(RT * D * sizeof(float));
	a->ctx_mean = malloc(RT * sizeof(float));
	a->ctx_rstd = malloc(RT * sizeof(float));
	a->x0 = malloc(RT * D * sizeof(float));
	a->qkv = allocv(nb, RT * 3 * D);
	a->probs = allocv(nb, TEN(R) * m->H * T * T);
	a->att = allocv(nb, RT * D);
	a->x1 = allocv(nb, RT * D);
	a->m1 = allocv(nb, RT);
	a->s1 = allocv(nb, RT);
	a->r = allocv(nb, RT * D);
	a->h1 = allocv(nb, RT * F);
	a->g = allocv(nb, RT * F);
	a->f = allocv(nb, RT * D);
	a->x2 = allocv(nb, RT * D);
	a->m2 = allocv(nb, RT);
	a->s2 = allocv(nb, RT);
	a->out = allocv(nb, RT * D);
	if (with_drop) {
		a->drop_att = allocv(nb, TEN(R) * m->H * T * T);
		a->drop_ao = allocv(nb, RT * D);
		a->drop_act = allocv(nb, RT * F);
		a->drop_f = allocv(nb, RT * D);
		if (!a->drop_att || !a->drop_ao || !a->drop_act || !a->drop_f) {
			acts_free(a, nb);
			return -1;
		}
	}
	if (!a->x_in || !a->ctx_mean || !a->ctx_rstd || !a->x0 || !a->qkv ||
	    !a->probs || !a->att || !a->x1 || !a->m1 || !a->s1 || !a->r ||
	    !a->h1 || !a->g || !a->f || !a->x2 || !a->m2 || !a->s2 || !a->out) {
		acts_free(a, nb);
		return -1;
	}
	return 0;
}

/* The fixed 2-D sin-cos table (N,D) of DATA2VEC.md §2.1: the first D/2
 * dims encode the column, the last D/2 the row. */
static void
sincos_init(float *pos, int grid, int D)
{
	int half = D / 2, q = D / 4;

	for (int r = 0; r < grid; r++) {
		for (int c = 0; c < grid; c++) {
			float *p = pos + (TEN(r) * grid + c) * D;

			for (int k = 0; k < q; k++) {
				double w = pow(10000.0, -(double)k / q);

				p[k] = (float)sin(c * w);
				p[q + k] = (float)cos(c * w);
				p[half + k] = (float)sin(r * w);
				p[half + q + k] = (float)cos(r * w);
			}
		}
	}
}

int
d2v_model_init(d2v_model *m, const d2v_config *cfg, const d2v_ops *ops,
    d2v_err *err)
{
	int rc;
	size_t n;

	memset(m, 0, sizeof *m);
	if ((rc = d2v_config_check(cfg, err)) < 0)
		return rc;
	m->cfg = *cfg;
	m->ops = ops;
	m->N = d2v_config_tokens(cfg);
	m->D = cfg->dim;
	m->F = cfg->mlp_dim;
	m->H = cfg->heads;
	m->nb = cfg->prenet_depth + cfg->depth;
	if ((rc = d2v_layout_init(&m->lay, cfg, err)) < 0)
		return rc;
	n = m->lay.total;
	m->params = calloc(n, sizeof(float));
	m->grads = calloc(n, sizeof(float));
	m->m = calloc(n, sizeof(float));
	m->v = calloc(n, sizeof(float));
	m->teacher = calloc(n, sizeof(float));
	m->sincos = malloc(TEN(m->N) * m->D * sizeof(float));
	if (!m->params || !m->grads || !m->m || !m->v || !m->teacher ||
	    !m->sincos) {
		d2v_model_free(m);
		return d2v_err_set(err, D2V_ENOMEM, "out of memory for a model "
		    "of %zu parameters", n);
	}
	sincos_init(m->sincos, cfg->image_size / cfg->patch, m->D);
	return 0;
}

static void
step_free(d2v_model *m)
{
	int L = m->cfg.decoder_layers;

	free(m->pix); free(m->tok); free(m->dtok); free(m->keep);
	free(m->y); free(m->ycls); free(m->dec_in);
	freev(m->dc, L); freev(m->dm, L); freev(m->ds, L); freev(m->dl, L);
	freev(m->dout, L);
	free(m->pred); free(m->col); free(m->dcol);
	free(m->gA); free(m->gB); free(m->gC); free(m->gF); free(m->gF2);
	free(m->gQKV); free(m->gdec); free(m->gdec2);
	m->pix = m->tok = m->dtok = m->y = m->ycls = m->dec_in = NULL;
	m->dc = m->dm = m->ds = m->dl = m->dout = NULL;
	m->pred = m->col = m->dcol = NULL;
	m->gA = m->gB = m->gC = m->gF = m->gF2 = m->gQKV = NULL;
	m->gdec = m->gdec2 = NULL;
	m->keep = NULL;
	m->B = m->V = 0;
}

void
d2v_model_free(d2v_model *m)
{
	step_free(m);
	acts_free(&m->st, m->nb);
	acts_free(&m->te, m->nb);
	free(m->params); free(m->grads); free(m->m); free(m->v);
	free(m->teacher); free(m->sincos);
	d2v_layout_free(&m->lay);
	memset(m, 0, sizeof *m);
}

void
d2v_model_sync_teacher(d2v_model *m)
{
	memcpy(m->teacher, m->params, m->lay.teacher_end * sizeof(float));
}

/* Buffers of a step with B images and V visible tokens per row. */
static int
step_alloc(d2v_model *m, int B, int V, d2v_err *err)
{
	const d2v_config *c = &m->cfg;
	int M = c->clone, R = B * M, N = m->N, D = m->D, L = c->decoder_layers;
	int Dd = c->decoder_dim, T = V + 1, wide = D > Dd ? D : Dd;
	size_t CPP = TEN(c->channels) * c->patch * c->patch;
	size_t cmax = TEN(R) * N * (TEN(wide / c->decoder_groups) *
	    c->decoder_kernel * c->decoder_kernel);
	size_t RT = TEN(R) * (T > N + 1 ? T : N + 1);

	if (m->B == B && m->V == V)
		return 0;
	step_free(m);
	m->B = B;
	m->V = V;
	m->pix = malloc(TEN(B) * N * CPP * sizeof(float));
	m->tok = malloc(TEN(B) * N * D * sizeof(float));
	m->dtok = malloc(TEN(B) * N * D * sizeof(float));
	m->keep = malloc(TEN(R) * (V > 0 ? V : 1) * sizeof(int));
	m->y = malloc(TEN(B) * N * D * sizeof(float));
	m->ycls = malloc(TEN(B) * D * sizeof(float));
	m->dec_in = malloc(TEN(R) * N * D * sizeof(float));
	m->dc = allocv(L, TEN(R) * N * Dd);
	m->dm = allocv(L, TEN(R) * N);
	m->ds = allocv(L, TEN(R) * N);
	m->dl = allocv(L, TEN(R) * N * Dd);
	m->dout = allocv(L, TEN(R) * N * Dd);
	m->pred = malloc(TEN(R) * N * D * sizeof(float));
	m->col = malloc(cmax * sizeof(float));
	m->dcol = malloc(cmax * sizeof(float));
	m->gA = malloc(RT * wide * sizeof(float));
	m->gB = malloc(RT * wide * sizeof(float));
	m->gC = malloc(RT * wide * sizeof(float));
	m->gF = malloc(RT * m->F * sizeof(float));
	m->gF2 = malloc(RT * m->F * sizeof(float));
	m->gQKV = malloc(RT * 3 * D * sizeof(float));
	m->gdec = malloc(TEN(R) * N * wide * sizeof(float));
	m->gdec2 = malloc(TEN(R) * N * wide * sizeof(float));
	if (!m->pix || !m->tok || !m->dtok || !m->keep || !m->y || !m->ycls ||
	    !m->dec_in || !m->dc || !m->dm || !m->ds || !m->dl || !m->dout ||
	    !m->pred || !m->col || !m->dcol || !m->gA || !m->gB || !m->gC ||
	    !m->gF || !m->gF2 || !m->gQKV || !m->gdec || !m->gdec2 ||
	    acts_alloc(&m->st, m, R, T, has_dropout(c)) < 0 ||
	    acts_alloc(&m->te, m, B, N + 1, 0) < 0) {
		step_free(m);
		return d2v_err_set(err, D2V_ENOMEM, "out of memory for a batch "
		    "of %d images", B);
	}
	return 0;
}

/* pix (B, N, C*P*P): normalised pixels in the (c, py, px) order of the
 * patch-embedding weight (D, C, P, P). */
static void
patchify(const d2v_model *m, const uint8_t *img, int B, float *pix)
{
	const d2v_config *c = &m->cfg;
	int P = c->patch, S = c->image_size, G = S / P, C = c->channels;

#pragma omp parallel for collapse(2) schedule(static)
	for (int b = 0; b < B; b++) {
		for (int n = 0; n < G * G; n++) {
			int gr = n / G, gc = n % G;
			float *o = pix + (TEN(b) * G * G + n) * C * P * P;

			for (int ch = 0; ch < C; ch++) {
				float mean = (float)c->mean[ch];
				float inv = (float)(1.0 / c->std[ch]);
				const uint8_t *src = img + (TEN(b) * C + ch) * S * S;

				for (int py = 0; py < P; py++)
					for (int px = 0; px < P; px++)
						*o++ = ((float)src[TEN(gr * P + py) * S + gc * P + px] / 255.0f - mean) * inv;
			}
		}
	}
}

/* tok (B,N,D) = pix . W^T + b + sincos */
static void
embed(d2v_model *m, const float *P, int B, float *tok)
{
	const d2v_config *c = &m->cfg;
	int N = m->N, D = m->D, K = c->channels * c->patch * c->patch;

	m->ops->matmul_forward(tok, m->pix, P + m->lay.patch_w,
	    P + m->lay.patch_b, B * N, K, D);
#pragma omp parallel for schedule(static)
	for (int i = 0; i < B * N; i++)
		for (int d = 0; d < D; d++)
			tok[TEN(i) * D + d] += m->sincos[TEN(i % N) * D + d];
}

/* Runs the context LayerNorm and every block over a->x_in (R,T,D). */
static void
encoder_forward(d2v_model *m, const float *P, d2v_enc_acts *a)
{
	const d2v_ops *o = m->ops;
	int R = a->R, T = a->T, D = m->D, F = m->F, RT = R * T;
	float eps = (float)m->cfg.norm_eps;
	const float *x = a->x0;

	o->layernorm_forward(a->x0, a->ctx_mean, a->ctx_rstd, a->x_in,
	    P + m->lay.ctx_w, P + m->lay.ctx_b, RT, D, eps);
	for (int l = 0; l < m->nb; l++) {
		const d2v_block_off *b = &m->lay.blocks[l];

		o->matmul_forward(a->qkv[l], x, P + b->qkv_w, P + b->qkv_b, RT, D,
		    3 * D);
		o->attention_forward(a->att[l], a->probs[l], a->qkv[l],
		    a->drop ? a->drop_att[l] : NULL, R, T, D, m->H);
		o->matmul_forward(a->x1[l], a->att[l], P + b->proj_w,
		    P + b->proj_b, RT, D, D);
		if (a->drop)
			o->mul(a->x1[l], a->drop_ao[l], TEN(RT) * D);
		o->add(a->x1[l], x, TEN(RT) * D);
		o->layernorm_forward(a->r[l], a->m1[l], a->s1[l], a->x1[l],
		    P + b->norm1_w, P + b->norm1_b, RT, D, eps);
		o->matmul_forward(a->h1[l], a->r[l], P + b->fc1_w, P + b->fc1_b,
		    RT, D, F);
		o->gelu_forward(a->g[l], a->h1[l], TEN(RT) * F);
		if (a->drop)
			o->mul(a->g[l], a->drop_act[l], TEN(RT) * F);
		o->matmul_forward(a->f[l], a->g[l], P + b->fc2_w, P + b->fc2_b,
		    RT, F, D);
		if (a->drop) {
			memcpy(a->x2[l], a->f[l], TEN(RT) * D * sizeof(float));
			o->mul(a->x2[l], a->drop_f[l], TEN(RT) * D);
			o->add(a->x2[l], a->r[l], TEN(RT) * D);
		} else {
			memcpy(a->x2[l], a->r[l], TEN(RT) * D * sizeof(float));
			o->add(a->x2[l], a->f[l], TEN(RT) * D);
		}
		o->layernorm_forward(a->out[l], a->m2[l], a->s2[l], a->x2[l],
		    P + b->norm2_w, P + b->norm2_b, RT, D, eps);
		x = a->out[l];
	}
}

/* Backward through the blocks and the context LN: dout (R,T,D) is the
 * gradient of the last block's output (overwritten); the gradient of
 * a->x_in is left in dx (R,T,D). */
static void
encoder_backward(d2v_model *m, d2v_enc_acts *a, float *dout, float *dx)
{
	const d2v_ops *o = m->ops;
	const float *P = m->params;
	float *G = m->grads;
	int R = a->R, T = a->T, D = m->D, F = m->F, RT = R * T;
	size_t nD = TEN(RT) * D;
	float *d_x2 = m->gC;

	for (int l = m->nb - 1; l >= 0; l--) {
		const d2v_block_off *b = &m->lay.blocks[l];
		const float *xin = l > 0 ? a->out[l - 1] : a->x0;

		/* out = LN2(x2), x2 = r + f */
		memset(d_x2, 0, nD * sizeof(float));
		o->layernorm_backward(d_x2, G + b->norm2_w, G + b->norm2_b, dout,
		    a->x2[l], a->m2[l], a->s2[l], P + b->norm2_w, RT, D);
		/* x2 = r + drop_f * fc2(drop_act * gelu(fc1(r))) */
		memset(m->gF, 0, TEN(RT) * F * sizeof(float));
		if (a->drop) {
			float *df = m->gA;

			memcpy(df, d_x2, nD * sizeof(float));
			o->mul(df, a->drop_f[l], nD);
			o->matmul_backward(m->gF, G + b->fc2_w, G + b->fc2_b, df,
			    a->g[l], P + b->fc2_w, RT, F, D);
			o->mul(m->gF, a->drop_act[l], TEN(RT) * F);
		} else {
			o->matmul_backward(m->gF, G + b->fc2_w, G + b->fc2_b, d_x2,
			    a->g[l], P + b->fc2_w, RT, F, D);
		}
		memset(m->gF2, 0, TEN(RT) * F * sizeof(float));
		o->gelu_backward(m->gF2, a->h1[l], m->gF, TEN(RT) * F);
		/* d_r = d_x2 + fc1 backward */
		o->matmul_backward(d_x2, G + b->fc1_w, G + b->fc1_b, m->gF2,
		    a->r[l], P + b->fc1_w, RT, D, F);
		/* r = LN1(x1) */
		memset(dout, 0, nD * sizeof(float));
		o->layernorm_backward(dout, G + b->norm1_w, G + b->norm1_b, d_x2,
		    a->x1[l], a->m1[l], a->s1[l], P + b->norm1_w, RT, D);
		/* x1 = x + drop_ao * proj(att): dout now holds d_x1 = d_x
		 * (residual) */
		memset(m->gA, 0, nD * sizeof(float));
		if (a->drop) {
			float *dao = d_x2; /* free again */

			memcpy(dao, dout, nD * sizeof(float));
			o->mul(dao, a->drop_ao[l], nD);
			o->matmul_backward(m->gA, G + b->proj_w, G + b->proj_b, dao,
			    a->att[l], P + b->proj_w, RT, D, D);
		} else {
			o->matmul_backward(m->gA, G + b->proj_w, G + b->proj_b, dout,
			    a->att[l], P + b->proj_w, RT, D, D);
		}
		memset(m->gQKV, 0, nD * 3 * sizeof(float));
		o->attention_backward(m->gQKV, m->gA, a->qkv[l], a->probs[l],
		    a->drop ? a->drop_att[l] : NULL, R, T, D, m->H);
		o->matmul_backward(dout, G + b->qkv_w, G + b->qkv_b, m->gQKV, xin,
		    P + b->qkv_w, RT, D, 3 * D);
		/* The key bias adds q.b_k to every score of a row, which the
		 * softmax cancels: its gradient is exactly zero.  Computed, it
		 * is float rounding noise, which Adam would blow up into full
		 * steps of size lr; keep it exact. */
		memset(G + b->qkv_b + D, 0, TEN(D) * sizeof(float));
	}
	memset(dx, 0, nD * sizeof(float));
	o->layernorm_backward(dx, G + m->lay.ctx_w, G + m->lay.ctx_b, dout,
	    a->x_in, a->ctx_mean, a->ctx_rstd, P + m->lay.ctx_w, RT, D);
}

/* Teacher pass over B unmasked images with parameters P into m->te. */
static void
teacher_forward(d2v_model *m, const float *P, const uint8_t *img, int B,
    float *tok)
{
	int N = m->N, D = m->D;
	d2v_enc_acts *a = &m->te;

	patchify(m, img, B, m->pix);
	embed(m, P, B, tok);
#pragma omp parallel for schedule(static)
	for (int b = 0; b < B; b++) {
		float *row = a->x_in + TEN(b) * (N + 1) * D;

		memcpy(row, P + m->lay.cls, TEN(D) * sizeof(float));
		memcpy(row + D, tok + TEN(b) * N * D, TEN(N) * D * sizeof(float));
	}
	encoder_forward(m, P, a);
}

/* y (B,N,D): IN over positions of each of the top-K main blocks' FFN
 * outputs (CLS dropped), averaged, then LayerNorm per token; ycls (B,D). */
static void
make_targets(d2v_model *m, int B, float *y, float *ycls)
{
	d2v_enc_acts *a = &m->te;
	int N = m->N, D = m->D, K = m->cfg.top_k;
	float *tmp = m->gA; /* (B,N,D) scratch */

	memset(y, 0, TEN(B) * N * D * sizeof(float));
	for (int k = 0; k < K; k++) {
		const float *f = a->f[m->nb - K + k];

		for (int b = 0; b < B; b++)
			memcpy(tmp + TEN(b) * N * D, f + (TEN(b) * (N + 1) + 1) * D,
			    TEN(N) * D * sizeof(float));
		m->ops->instancenorm_forward(y, tmp, B, N, D, 1e-5f, 1,
		    1.0f / (float)K);
	}
	m->ops->layernorm_forward(y, NULL, NULL, y, NULL, NULL, B * N, D, 1e-5f);
	for (int b = 0; b < B; b++) {
		for (int d = 0; d < D; d++) {
			double s = 0;

			for (int n = 0; n < N; n++)
				s += y[(TEN(b) * N + n) * D + d];
			ycls[TEN(b) * D + d] = (float)(s / N);
		}
	}
}

int
d2v_model_targets(d2v_model *m, const float *params, const uint8_t *img,
    int B, float *y, float *ycls, d2v_err *err)
{
	int rc = step_alloc(m, B, m->V > 0 ? m->V : 1, err);

	if (rc < 0)
		return rc;
	teacher_forward(m, params, img, B, m->tok);
	make_targets(m, B, y, ycls);
	return 0;
}

int
d2v_model_features(d2v_model *m, const float *params, const uint8_t *img,
    int B, int layer, float *out, d2v_err *err)
{
	int rc = step_alloc(m, B, m->V > 0 ? m->V : 1, err);

	if (rc < 0)
		return rc;
	if (layer < 0)
		layer = m->nb - 1;
	if (layer >= m->nb)
		return d2v_err_set(err, D2V_EINVAL, "layer %d: the model has %d "
		    "blocks", layer, m->nb);
	teacher_forward(m, params, img, B, m->tok);
	memcpy(out, m->te.out[layer], TEN(B) * (m->N + 1) * m->D *
	    sizeof(float));
	return 0;
}

/* Mean over dims of the standard deviation over rows of x (rows,D). */
static double
mean_std(const float *x, long rows, int D)
{
	double acc = 0;

	if (rows < 2)
		return 0;
	for (int d = 0; d < D; d++) {
		double s = 0, s2 = 0;

		for (long i = 0; i < rows; i++) {
			double v = x[TEN(i) * D + d];

			s += v;
			s2 += v * v;
		}
		s /= rows;
		acc += sqrt(fmax(s2 / rows - s * s, 0) * rows / (rows - 1));
	}
	return acc / D;
}

/* Fills scale buffer buf (rows, per) with 0 or 1/(1-p) per element,
 * times 0 or 1/(1-dp) per row (drop path); keyed by (seed, kind, row). */
static void
fill_drop(float *buf, int rows, size_t per, double p, double dp,
    uint64_t seed, uint64_t kind)
{
	float keep = p > 0 ? (float)(1.0 / (1.0 - p)) : 1.0f;
	float kpath = dp > 0 ? (float)(1.0 / (1.0 - dp)) : 1.0f;

#pragma omp parallel for schedule(static)
	for (int r = 0; r < rows; r++) {
		d2v_rng g;
		float *row = buf + TEN(r) * per;
		float s;

		d2v_rng_seed(&g, seed, kind, (uint64_t)r);
		s = dp > 0 && d2v_rng_uniform(&g) < dp ? 0.0f : kpath;
		for (size_t i = 0; i < per; i++)
			row[i] = p > 0 && d2v_rng_uniform(&g) < p ? 0.0f : keep * s;
	}
}

/* Draws this step's dropout and drop-path scales for every block. */
static void
make_dropout(d2v_model *m, d2v_enc_acts *a, uint64_t seed)
{
	const d2v_config *c = &m->cfg;
	int R = a->R, T = a->T, D = m->D, F = m->F, H = m->H;

	for (int l = 0; l < m->nb; l++) {
		double dp = m->nb > 1 ? c->drop_path * l / (m->nb - 1) : c->drop_path;
		uint64_t k = 0xd0000 + (uint64_t)l * 8;

		fill_drop(a->drop_att[l], R * H, TEN(T) * T, c->attention_dropout,
		    0, seed, k);
		fill_drop(a->drop_ao[l], R, TEN(T) * D, c->encoder_dropout, dp,
		    seed, k + 1);
		fill_drop(a->drop_act[l], R, TEN(T) * F, c->activation_dropout, 0,
		    seed, k + 2);
		/* activation dropout after fc2 and the post-MLP dropout stack */
		{
			double p1 = c->activation_dropout, p2 = c->post_mlp_drop;
			double p = 1 - (1 - p1) * (1 - p2);

			fill_drop(a->drop_f[l], R, TEN(T) * D, p, dp, seed, k + 3);
		}
	}
}

int
d2v_model_step(d2v_model *m, const uint8_t *img, const uint8_t *mask,
    const float *noise, const float *y, const float *ycls, int B,
    uint64_t rng_seed, d2v_step_out *out, d2v_err *err)
{
	const d2v_config *c = &m->cfg;
	const d2v_ops *o = m->ops;
	int M = c->clone, R = B * M, N = m->N, D = m->D, Dd = c->decoder_dim;
	int L = c->decoder_layers, g = c->image_size / c->patch, V, T, rc;
	double s = c->loss_scale > 0 ? c->loss_scale : 1.0 / sqrt((double)D);
	double reg = 0, cls = 0;
	long nmask;
	float *P = m->params, *Gr = m->grads;
	d2v_enc_acts *a = &m->st;
	float *dcur, *dprev;

	/* visible count: equal in every row */
	V = 0;
	for (int n = 0; n < N; n++)
		V += mask[n] == 0;
	for (int r = 1; r < R; r++) {
		int v = 0;

		for (int n = 0; n < N; n++)
			v += mask[TEN(r) * N + n] == 0;
		if (v != V)
			return d2v_err_set(err, D2V_EINVAL, "mask row %d keeps %d "
			    "tokens, row 0 keeps %d: rows must keep equal counts",
			    r, v, V);
	}
	if (V == 0 || V == N)
		return d2v_err_set(err, D2V_EINVAL, "masks keep %d of %d tokens: "
		    "need at least one kept and one masked", V, N);
	T = V + 1;
	nmask = (long)R * (N - V);
	if ((rc = step_alloc(m, B, V, err)) < 0)
		return rc;
	for (int r = 0; r < R; r++) {
		int j = 0;

		for (int n = 0; n < N; n++)
			if (mask[TEN(r) * N + n] == 0)
				m->keep[TEN(r) * V + j++] = n;
	}

	/* targets: given, or from the EMA teacher */
	if (y != NULL) {
		memcpy(m->y, y, TEN(B) * N * D * sizeof(float));
		memcpy(m->ycls, ycls, TEN(B) * D * sizeof(float));
		patchify(m, img, B, m->pix);
	} else {
		teacher_forward(m, m->teacher, img, B, m->tok);
		make_targets(m, B, m->y, m->ycls);
	}

	/* student: embed (pix is already filled above) */
	embed(m, P, B, m->tok);
#pragma omp parallel for schedule(static)
	for (int r = 0; r < R; r++) {
		float *row = a->x_in + TEN(r) * T * D;
		const float *src = m->tok + TEN(r / M) * N * D;

		memcpy(row, P + m->lay.cls, TEN(D) * sizeof(float));
		for (int j = 0; j < V; j++)
			memcpy(row + TEN(1 + j) * D,
			    src + TEN(m->keep[TEN(r) * V + j]) * D,
			    TEN(D) * sizeof(float));
	}
	a->drop = has_dropout(c);
	if (a->drop)
		make_dropout(m, a, rng_seed);
	encoder_forward(m, P, a);
	a->drop = 0;

	/* decoder input: encoder outputs back in place, noise elsewhere */
	{
		const float *h = a->out[m->nb - 1];

		for (int r = 0; r < R; r++) {
			float *di = m->dec_in + TEN(r) * N * D;
			d2v_rng rng;

			d2v_rng_seed(&rng, rng_seed, 0xdec0, (uint64_t)r);
			for (int n = 0; n < N; n++) {
				if (mask[TEN(r) * N + n] == 0)
					continue;
				for (int d = 0; d < D; d++)
					di[TEN(n) * D + d] = noise ?
					    noise[(TEN(r) * N + n) * D + d] :
					    (float)(c->mask_noise_std *
					    d2v_rng_normal(&rng));
			}
			for (int j = 0; j < V; j++)
				memcpy(di + TEN(m->keep[TEN(r) * V + j]) * D,
				    h + (TEN(r) * T + 1 + j) * D,
				    TEN(D) * sizeof(float));
		}
	}
	{
		const float *in = m->dec_in;
		int cin = D;

		for (int j = 0; j < L; j++) {
			o->conv2d_forward(m->dc[j], m->col, in, P + m->lay.dec_w[j],
			    P + m->lay.dec_b[j], R, g, g, cin, Dd,
			    c->decoder_kernel, c->decoder_groups);
			o->layernorm_forward(m->dl[j], m->dm[j], m->ds[j], m->dc[j],
			    NULL, NULL, R * N, Dd, 1e-5f);
			o->gelu_forward(m->dout[j], m->dl[j], TEN(R) * N * Dd);
			if (c->decoder_residual && cin == Dd)
				o->add(m->dout[j], in, TEN(R) * N * Dd);
			in = m->dout[j];
			cin = Dd;
		}
		o->matmul_forward(m->pred, in, P + m->lay.dproj_w,
		    P + m->lay.dproj_b, R * N, Dd, D);
	}

	/* loss and its gradient at the predictions and the CLS outputs */
	memset(Gr, 0, m->lay.total * sizeof(float));
	dcur = m->gdec;
	memset(dcur, 0, TEN(R) * N * D * sizeof(float));
	for (int r = 0; r < R; r++) {
		const float *yb = m->y + TEN(r / M) * N * D;

		for (int n = 0; n < N; n++) {
			if (mask[TEN(r) * N + n] == 0)
				continue;
			for (int d = 0; d < D; d++) {
				size_t i = (TEN(r) * N + n) * D + d;
				double e = m->pred[i] - yb[TEN(n) * D + d];

				reg += s * e * e;
				dcur[i] = (float)(2 * s * e / nmask);
			}
		}
	}
	reg /= nmask;
	{
		const float *h = a->out[m->nb - 1];
		float *dh = m->gB;

		memset(dh, 0, TEN(R) * T * D * sizeof(float));
		for (int r = 0; r < R; r++) {
			for (int d = 0; d < D; d++) {
				double e = h[TEN(r) * T * D + d] -
				    m->ycls[TEN(r / M) * D + d];

				cls += c->cls_loss * s * e * e;
				dh[TEN(r) * T * D + d] = (float)(2 * c->cls_loss * s * e);
			}
		}
	}
	out->loss_reg = reg;
	out->loss_cls = cls;
	out->loss = reg + cls;
	out->n_masked = nmask;
	out->target_var = mean_std(m->y, (long)B * N, D);
	{
		/* std of predictions over masked rows */
		float *tmp = m->gA;
		long k = 0;

		for (int r = 0; r < R; r++)
			for (int n = 0; n < N; n++)
				if (mask[TEN(r) * N + n])
					memcpy(tmp + TEN(k++) * D,
					    m->pred + (TEN(r) * N + n) * D,
					    TEN(D) * sizeof(float));
		out->pred_var = mean_std(tmp, k, D);
	}

	/* backward: projection, decoder */
	dprev = m->gdec2;
	memset(dprev, 0, TEN(R) * N * Dd * sizeof(float));
	o->matmul_backward(dprev, Gr + m->lay.dproj_w, Gr + m->lay.dproj_b, dcur,
	    L > 0 ? m->dout[L - 1] : m->dec_in, P + m->lay.dproj_w, R * N, Dd, D);
	/* dprev: gradient of the last decoder layer output */
	for (int j = L - 1; j >= 0; j--) {
		int cin = j == 0 ? D : Dd;
		const float *in = j == 0 ? m->dec_in : m->dout[j - 1];
		float *dl = m->gA, *dc = m->gC;

		memset(dl, 0, TEN(R) * N * Dd * sizeof(float));
		o->gelu_backward(dl, m->dl[j], dprev, TEN(R) * N * Dd);
		memset(dc, 0, TEN(R) * N * Dd * sizeof(float));
		o->layernorm_backward(dc, NULL, NULL, dl, m->dc[j], m->dm[j],
		    m->ds[j], NULL, R * N, Dd);
		/* gradient of the layer input: residual part first */
		if (c->decoder_residual && cin == Dd)
			memcpy(dcur, dprev, TEN(R) * N * Dd * sizeof(float));
		else
			memset(dcur, 0, TEN(R) * N * cin * sizeof(float));
		o->conv2d_backward(dcur, Gr + m->lay.dec_w[j], Gr + m->lay.dec_b[j],
		    m->col, m->dcol, dc, in, P + m->lay.dec_w[j], R, g, g, cin, Dd,
		    c->decoder_kernel, c->decoder_groups);
		{
			float *t = dcur;

			dcur = dprev;
			dprev = t;
		}
	}
	/* dprev: gradient of dec_in (R,N,D); back to the encoder output rows */
	{
		float *dh = m->gB;

		for (int r = 0; r < R; r++)
			for (int j = 0; j < V; j++) {
				float *dst = dh + (TEN(r) * T + 1 + j) * D;
				const float *src = dprev +
				    (TEN(r) * N + m->keep[TEN(r) * V + j]) * D;

				for (int d = 0; d < D; d++)
					dst[d] += src[d];
			}
		/* the encoder backward uses gA, gC, gF, gQKV as scratch; pass
		 * gB as dout and get d(x_in) in gdec */
		a->drop = has_dropout(c);
		encoder_backward(m, a, dh, m->gdec);
		a->drop = 0;
	}
	/* x_in rows: CLS at 0, tokens of image r/M at keep[] */
	{
		const float *dx = m->gdec;
		float *gcls = Gr + m->lay.cls;

		memset(m->dtok, 0, TEN(B) * N * D * sizeof(float));
		for (int r = 0; r < R; r++) {
			const float *row = dx + TEN(r) * T * D;
			float *dt = m->dtok + TEN(r / M) * N * D;

			for (int d = 0; d < D; d++)
				gcls[d] += row[d];
			for (int j = 0; j < V; j++) {
				float *dst = dt + TEN(m->keep[TEN(r) * V + j]) * D;

				for (int d = 0; d < D; d++)
					dst[d] += row[TEN(1 + j) * D + d];
			}
		}
		o->matmul_backward(NULL, Gr + m->lay.patch_w, Gr + m->lay.patch_b,
		    m->dtok, m->pix, P + m->lay.patch_w, B * N,
		    c->channels * c->patch * c->patch, D);
	}
	return 0;
}
