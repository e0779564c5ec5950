/* model.c - the data2vec 2.0 image model: forward and backward (model.h). */
#include "model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mask.h"
#include "rng.h"

#define TEN(x) ((size_t)(x))

/* Every buffer an op reads or writes comes from the backend's alloc
 * (zeroed; on a GPU, memory both the device and these host loops can
 * read); the arrays of per-block pointers are host memory. */
static void
freev(const d2v_ops *o, float **v, int n)
{
	if (v == NULL)
		return;
	for (int i = 0; i < n; i++)
		o->release(v[i]);
	free(v);
}

static void
acts_free(const d2v_ops *o, d2v_enc_acts *a, int nb)
{
	o->release(a->x_in); o->release(a->ctx_mean); o->release(a->ctx_rstd);
	o->release(a->x0);
	freev(o, a->qkv, nb); freev(o, a->probs, nb); freev(o, a->att, nb);
	freev(o, a->x1, nb); freev(o, a->m1, nb); freev(o, a->s1, nb);
	freev(o, a->r, nb);
	freev(o, a->h1, nb); freev(o, a->g, nb); freev(o, a->f, nb);
	freev(o, a->x2, nb);
	freev(o, a->m2, nb); freev(o, a->s2, nb); freev(o, a->out, nb);
	freev(o, a->drop_att, nb); freev(o, a->drop_ao, nb);
	freev(o, a->drop_act, nb);
	freev(o, a->drop_f, nb);
	o->release(a->drop_ctx); o->release(a->skip); o->release(a->pos);
	o->release(a->slope);
	freev(o, a->pa, nb);
	memset(a, 0, sizeof *a);
}

static float **
allocv(const d2v_ops *o, int n, size_t each)
{
	float **v = calloc((size_t)n, sizeof *v);

	if (v == NULL)
		return NULL;
	for (int i = 0; i < n; i++)
		if ((v[i] = o->alloc(each * sizeof(float))) == NULL) {
			freev(o, v, n);
			return NULL;
		}
	return v;
}

static int
has_dropout(const d2v_config *c)
{
	return c->encoder_dropout > 0 || c->attention_dropout > 0 ||
	    c->activation_dropout > 0 || c->post_mlp_drop > 0 ||
	    c->drop_path > 0 || c->context_dropout > 0 || c->layerdrop > 0;
}

/* The divisor of the regression loss: the masked count of this batch, or
 * m->loss_count when the batch is one part of a larger one. */
static long
loss_norm(const d2v_model *m, long nmask)
{
	return m->loss_count > 0 ? m->loss_count : nmask;
}

/* v1 images: BEiT's pre-LN blocks, CLS, final LayerNorm and head */
static int
is_v1_image(const d2v_model *m)
{
	return m->E && d2v_config_is_v1(&m->cfg);
}

/* Decoder layers of the step buffers: none in v1. */
static int
dec_layers(const d2v_config *c)
{
	return d2v_config_is_v1(c) ? 0 : c->decoder_layers;
}

static int
is_audio(const d2v_model *m)
{
	return strcmp(m->cfg.modality, "audio") == 0;
}

static int
is_text(const d2v_model *m)
{
	return strcmp(m->cfg.modality, "text") == 0;
}

static int
acts_alloc(d2v_enc_acts *a, const d2v_model *m, int R, int T, int with_drop)
{
	const d2v_ops *o = m->ops;
	size_t RT = TEN(R) * T, D = TEN(m->D), F = TEN(m->F);
	int nb = m->nb;

	if (a->R == R && a->T == T)
		return 0;
	acts_free(o, a, nb);
	a->R = R;
	a->T = T;
	a->x_in = o->alloc(RT * D * sizeof(float));
	a->ctx_mean = o->alloc(RT * sizeof(float));
	a->ctx_rstd = o->alloc(RT * sizeof(float));
	a->x0 = o->alloc(RT * D * sizeof(float));
	a->qkv = allocv(o, nb, RT * 3 * D);
	a->probs = allocv(o, nb, TEN(R) * m->H * T * T);
	a->att = allocv(o, nb, RT * D);
	a->x1 = allocv(o, nb, RT * D);
	a->m1 = allocv(o, nb, RT);
	a->s1 = allocv(o, nb, RT);
	a->r = allocv(o, nb, RT * D);
	a->h1 = allocv(o, nb, RT * F);
	a->g = allocv(o, nb, RT * F);
	a->f = allocv(o, nb, RT * D);
	a->x2 = allocv(o, nb, RT * D);
	a->m2 = allocv(o, nb, RT);
	a->s2 = allocv(o, nb, RT);
	a->out = allocv(o, nb, RT * D);
	if (is_v1_image(m) && (a->pa = allocv(o, nb, RT * D)) == NULL)
		return -1;
	a->skip = o->alloc((size_t)nb * sizeof *a->skip);
	a->pos = o->alloc(RT * sizeof *a->pos);
	a->slope = o->alloc((size_t)m->H * sizeof *a->slope);
	if (!a->skip || !a->pos || !a->slope) {
		acts_free(o, a, nb);
		return -1;
	}
	if (with_drop) {
		a->drop_ctx = o->alloc(RT * D * sizeof(float));
		a->drop_att = allocv(o, nb, TEN(R) * m->H * T * T);
		a->drop_ao = allocv(o, nb, RT * D);
		a->drop_act = allocv(o, nb, RT * F);
		a->drop_f = allocv(o, nb, RT * D);
		if (!a->drop_att || !a->drop_ao || !a->drop_act || !a->drop_f ||
		    !a->drop_ctx) {
			acts_free(o, a, nb);
			return -1;
		}
	}
	if (!a->x_in || !a->ctx_mean || !a->ctx_rstd || !a->x0 || !a->qkv ||
	    !a->probs || !a->att || !a->x1 || !a->m1 || !a->s1 || !a->r ||
	    !a->h1 || !a->g || !a->f || !a->x2 || !a->m2 || !a->s2 || !a->out) {
		acts_free(o, a, nb);
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


/* ALiBi slopes of H heads (fairseq get_slopes, DATA2VEC.md §2.2): for a
 * power of two, start = 2^(-8/H) and slope_h = start^(h+1); otherwise the
 * slopes of the largest power of two H' < H, then every other slope of 2H'
 * heads, the first H - H'. */
static void
alibi_slopes(double *out, int H)
{
	int p = 1;

	while (p * 2 <= H)
		p *= 2;
	for (int h = 0; h < p; h++)
		out[h] = pow(2.0, -8.0 / p * (h + 1));
	for (int h = p, j = 0; h < H; h++, j += 2)
		out[h] = pow(2.0, -8.0 / (2 * p) * (j + 1));
}

int
d2v_model_init(d2v_model *m, const d2v_config *cfg, const d2v_ops *ops,
    d2v_err *err)
{
	const d2v_ops *o = ops;
	int rc;
	size_t n;

	memset(m, 0, sizeof *m);
	if ((rc = d2v_config_check(cfg, err)) < 0)
		return rc;
	m->cfg = *cfg;
	m->ops = ops;
	m->E = d2v_config_is_image(cfg) ? 1 : 0;
	m->N = d2v_config_tokens(cfg);
	m->D = cfg->dim;
	m->F = cfg->mlp_dim;
	m->H = cfg->heads;
	m->nb = cfg->prenet_depth + cfg->depth;
	if ((rc = d2v_layout_init(&m->lay, cfg, err)) < 0)
		return rc;
	n = m->lay.total;
	m->params = o->alloc(n * sizeof(float));
	m->grads = o->alloc(n * sizeof(float));
	m->m = o->alloc(n * sizeof(float));
	m->v = o->alloc(n * sizeof(float));
	m->teacher = o->alloc(n * sizeof(float));
	m->sincos = o->alloc((m->N > 0 ? TEN(m->N) * m->D : 1) * sizeof(float));
	m->alibi0 = o->alloc(TEN(m->H) * sizeof(float));
	if (!m->params || !m->grads || !m->m || !m->v || !m->teacher ||
	    !m->sincos || !m->alibi0) {
		d2v_model_free(m);
		return d2v_err_set(err, D2V_ENOMEM, "out of memory for a model "
		    "of %zu parameters", n);
	}
	if (m->E)
		sincos_init(m->sincos, cfg->image_size / cfg->patch, m->D);
	{
		double sl[1024];

		alibi_slopes(sl, m->H < 1024 ? m->H : 1024);
		for (int h = 0; h < m->H && h < 1024; h++)
			m->alibi0[h] = (float)sl[h];
	}
	return 0;
}

int
d2v_model_set_length(d2v_model *m, int len, d2v_err *err)
{
	const d2v_config *c = &m->cfg;

	if (m->E)
		return 0;
	if (is_audio(m)) {
		int64_t l = d2v_mask_audio_frames(len);

		if (l < 1)
			return d2v_err_set(err, D2V_EINVAL, "audio of %d samples is "
			    "shorter than the feature encoder's receptive field (400 "
			    "samples, 25 ms at 16 kHz)", len);
		m->N = (int)l;
	} else {
		if (len < 1)
			return d2v_err_set(err, D2V_EINVAL, "empty text sample");
		if (len > c->max_positions)
			return d2v_err_set(err, D2V_EINVAL, "text of %d tokens is "
			    "longer than the position table (%d positions)", len,
			    c->max_positions);
		m->N = len;
	}
	m->len = len;
	return 0;
}

int
d2v_model_tokens(const d2v_model *m)
{
	return m->N;
}

static void
pos_free(const d2v_ops *o, d2v_pos_acts *p, int n)
{
	o->release(p->z);
	freev(o, p->c, n); freev(o, p->m, n); freev(o, p->s, n);
	freev(o, p->l, n);
	freev(o, p->g, n);
	memset(p, 0, sizeof *p);
}

static int
pos_alloc(const d2v_ops *o, d2v_pos_acts *p, int n, size_t RN, int D)
{
	p->z = o->alloc(RN * D * sizeof(float));
	p->c = allocv(o, n, RN * D);
	p->m = allocv(o, n, RN);
	p->s = allocv(o, n, RN);
	p->l = allocv(o, n, RN * D);
	p->g = allocv(o, n, RN * D);
	return p->z && (n == 0 || (p->c && p->m && p->s && p->l && p->g)) ?
	    0 : -1;
}

static void
step_free(d2v_model *m)
{
	const d2v_ops *o = m->ops;
	int L = dec_layers(&m->cfg), np = m->cfg.pos_conv_depth;

	o->release(m->pix); o->release(m->tok); o->release(m->dtok);
	o->release(m->keep);
	o->release(m->y); o->release(m->ycls); o->release(m->dec_in);
	freev(o, m->dc, L); freev(o, m->dm, L); freev(o, m->ds, L);
	freev(o, m->dl, L);
	freev(o, m->dout, L);
	o->release(m->pred); o->release(m->col); o->release(m->dcol);
	o->release(m->gA); o->release(m->gB); o->release(m->gC);
	o->release(m->gF); o->release(m->gF2);
	o->release(m->gQKV); o->release(m->gdec); o->release(m->gdec2);
	for (int i = 0; i < D2V_CONV_LAYERS; i++) {
		o->release(m->cv[i]); o->release(m->cm[i]);
		o->release(m->cs[i]); o->release(m->cl[i]);
		o->release(m->cg[i]);
		m->cv[i] = m->cm[i] = m->cs[i] = m->cl[i] = m->cg[i] = NULL;
	}
	o->release(m->wav);
	o->release(m->fm); o->release(m->fs); o->release(m->fl);
	pos_free(o, &m->spos, np);
	pos_free(o, &m->tpos, np);
	o->release(m->gslope);
	o->release(m->esum); o->release(m->em); o->release(m->es);
	o->release(m->eln);
	o->release(m->drop_emb); o->release(m->drop_in); o->release(m->ph);
	o->release(m->pg);
	o->release(m->hn); o->release(m->hm); o->release(m->hs);
	m->hn = m->hm = m->hs = NULL;
	m->fm = m->fs = m->fl = m->gslope = m->wav = NULL;
	m->esum = m->em = m->es = m->eln = m->drop_emb = m->drop_in = NULL;
	m->ph = m->pg = NULL;
	m->pix = m->tok = m->dtok = m->y = m->ycls = m->dec_in = NULL;
	m->dc = m->dm = m->ds = m->dl = m->dout = NULL;
	m->pred = m->col = m->dcol = NULL;
	m->gA = m->gB = m->gC = m->gF = m->gF2 = m->gQKV = NULL;
	m->gdec = m->gdec2 = NULL;
	m->keep = NULL;
	m->B = m->V = m->alen = 0;
}

void
d2v_model_free(d2v_model *m)
{
	const d2v_ops *o = m->ops;

	if (o == NULL) /* never initialised, or freed */
		return;
	step_free(m);
	acts_free(o, &m->st, m->nb);
	acts_free(o, &m->te, m->nb);
	o->release(m->params); o->release(m->grads); o->release(m->m);
	o->release(m->v);
	o->release(m->teacher); o->release(m->sincos); o->release(m->alibi0);
	d2v_layout_free(&m->lay);
	memset(m, 0, sizeof *m);
}

void
d2v_model_sync_teacher(d2v_model *m)
{
	memcpy(m->teacher, m->params, m->lay.teacher_end * sizeof(float));
}

static size_t
maxz(size_t a, size_t b)
{
	return a > b ? a : b;
}

/* Buffers of a step with B samples and V visible tokens per row at the
 * current length. */
static int
step_alloc(d2v_model *m, int B, int V, d2v_err *err)
{
	const d2v_ops *o = m->ops;
	const d2v_config *c = &m->cfg;
	int M = c->clone, R = B * M, N = m->N, D = m->D, L = dec_layers(c);
	int Dd = c->decoder_dim, E = m->E, T = V + E, v1 = d2v_config_is_v1(c);
	int wide = D > Dd * c->decoder_proj_layers ? D : Dd * c->decoder_proj_layers;
	int head2 = v1 && is_text(m); /* the two-layer regression head */
	int k = c->decoder_kernel, np = is_audio(m) ? c->pos_conv_depth : 0;
	size_t RN = TEN(R) * N, BN = TEN(B) * N;
	size_t cmax = RN * (TEN(wide / c->decoder_groups) * k * (E ? k : 1));
	size_t RT = TEN(R) * (T > N + E ? T : N + E), abuf = 0;
	int bad = 0;

	if (m->B == B && m->V == V && m->alen == m->len && m->tok != NULL)
		return 0;
	if (head2 && wide < 2 * D)
		wide = 2 * D;
	if (L > 0) /* the decoder convolutions, widest channels either way */
		cmax = maxz(cmax, E ? d2v_conv_scratch(R, c->image_size / c->patch,
		    c->image_size / c->patch, wide, wide, k, k, c->decoder_groups) :
		    d2v_conv_scratch(R, 1, N, wide, wide, 1, k, c->decoder_groups));
	step_free(m);
	m->B = B;
	m->V = V;
	m->alen = m->len;
	if (E) {
		size_t CPP = TEN(c->channels) * c->patch * c->patch;

		m->pix = o->alloc(BN * CPP * sizeof(float));
		bad |= m->pix == NULL;
	}
	if (is_audio(m)) {
		int C = c->conv_dim;

		m->ct[0] = m->len;
		for (int i = 0; i < D2V_CONV_LAYERS; i++) {
			int cin = i ? C : 1;
			size_t no;

			m->ct[i + 1] = (m->ct[i] - d2v_conv_kernel[i]) /
			    d2v_conv_stride[i] + 1;
			no = TEN(B) * m->ct[i + 1];
			cmax = maxz(cmax, d2v_conv1d_scratch(B, m->ct[i], cin, C,
			    d2v_conv_kernel[i], d2v_conv_stride[i], 0, 1));
			abuf = maxz(abuf, no * C);
			m->cv[i] = o->alloc(no * C * sizeof(float));
			m->cm[i] = o->alloc(no * sizeof(float));
			m->cs[i] = o->alloc(no * sizeof(float));
			m->cl[i] = o->alloc(no * C * sizeof(float));
			m->cg[i] = o->alloc(no * C * sizeof(float));
			bad |= !m->cv[i] || !m->cm[i] || !m->cs[i] || !m->cl[i] ||
			    !m->cg[i];
		}
		m->wav = o->alloc(TEN(B) * m->len * sizeof(float));
		m->fm = o->alloc(BN * sizeof(float));
		m->fs = o->alloc(BN * sizeof(float));
		m->fl = o->alloc(BN * C * sizeof(float));
		m->gslope = o->alloc(TEN(m->H) * sizeof(float));
		cmax = maxz(cmax, d2v_conv_scratch(R, 1, N, D, D, 1,
		    c->pos_conv_kernel, c->pos_conv_groups));
		bad |= !m->wav || !m->fm || !m->fs || !m->fl || !m->gslope ||
		    pos_alloc(o, &m->spos, np, RN, D) < 0 ||
		    pos_alloc(o, &m->tpos, np, BN, D) < 0;
	}
	if (is_text(m)) {
		m->esum = o->alloc(BN * D * sizeof(float));
		m->em = o->alloc(BN * sizeof(float));
		m->es = o->alloc(BN * sizeof(float));
		m->eln = o->alloc(BN * D * sizeof(float));
		m->drop_emb = o->alloc(BN * D * sizeof(float));
		bad |= !m->esum || !m->em || !m->es || !m->eln || !m->drop_emb;
	}
	if (c->input_dropout > 0) {
		m->drop_in = o->alloc(TEN(R) * (V > 0 ? V : 1) * D *
		    sizeof(float));
		bad |= m->drop_in == NULL;
	}
	if (is_v1_image(m)) {
		size_t BT = TEN(B) * (N + E);

		m->hn = o->alloc(BT * D * sizeof(float));
		m->hm = o->alloc(BT * sizeof(float));
		m->hs = o->alloc(BT * sizeof(float));
		bad |= !m->hn || !m->hm || !m->hs;
	}
	if ((!v1 && c->decoder_proj_layers == 2) || head2) {
		size_t w2 = 2 * TEN(head2 ? D : Dd);

		/* (R,N,2Dd) or (B,N,2D) */
		m->ph = o->alloc(RN * w2 * sizeof(float));
		m->pg = o->alloc(RN * w2 * sizeof(float));
		bad |= !m->ph || !m->pg;
	}
	/* the audio feature encoder's backward runs through gdec and gdec2 */
	abuf = maxz(abuf, TEN(R) * (N + E) * wide);
	m->tok = o->alloc(BN * D * sizeof(float));
	m->dtok = o->alloc(BN * D * sizeof(float));
	m->keep = o->alloc(TEN(R) * (V > 0 ? V : 1) * sizeof(int));
	m->y = o->alloc(BN * D * sizeof(float));
	m->ycls = o->alloc(TEN(B) * D * sizeof(float));
	m->dec_in = o->alloc(RN * D * sizeof(float));
	m->dc = allocv(o, L, RN * Dd);
	m->dm = allocv(o, L, RN);
	m->ds = allocv(o, L, RN);
	m->dl = allocv(o, L, RN * Dd);
	m->dout = allocv(o, L, RN * Dd);
	m->pred = o->alloc(TEN(R) * (N + E) * D * sizeof(float));
	m->col = o->alloc(cmax * sizeof(float));
	m->dcol = o->alloc(cmax * sizeof(float));
	m->gA = o->alloc(RT * wide * sizeof(float));
	m->gB = o->alloc(RT * wide * sizeof(float));
	m->gC = o->alloc(RT * wide * sizeof(float));
	m->gF = o->alloc(RT * m->F * sizeof(float));
	m->gF2 = o->alloc(RT * m->F * sizeof(float));
	m->gQKV = o->alloc(RT * 3 * D * sizeof(float));
	m->gdec = o->alloc(abuf * sizeof(float));
	m->gdec2 = o->alloc(abuf * sizeof(float));
	if (bad || !m->tok || !m->dtok || !m->keep || !m->y || !m->ycls ||
	    !m->dec_in || (L > 0 && (!m->dc || !m->dm || !m->ds || !m->dl ||
	    !m->dout)) ||
	    !m->pred || !m->col || !m->dcol || !m->gA || !m->gB || !m->gC ||
	    !m->gF || !m->gF2 || !m->gQKV || !m->gdec || !m->gdec2 ||
	    acts_alloc(&m->st, m, R, T, has_dropout(c)) < 0 ||
	    acts_alloc(&m->te, m, B, N + E, 0) < 0) {
		step_free(m);
		return d2v_err_set(err, D2V_ENOMEM, "out of memory for a batch "
		    "of %d samples", B);
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

/* Fills scale buffer buf (rows, per) with 0 or 1/(1-p) per element,
 * times 0 or 1/(1-dp) per row (drop path); keyed by (seed, kind, row). */
static void
fill_drop(float *buf, int rows, size_t per, double p, double dp,
    uint64_t seed, uint64_t kind, uint64_t first)
{
	float keep = p > 0 ? (float)(1.0 / (1.0 - p)) : 1.0f;
	float kpath = dp > 0 ? (float)(1.0 / (1.0 - dp)) : 1.0f;

#pragma omp parallel for schedule(static)
	for (int r = 0; r < rows; r++) {
		d2v_rng g;
		float *row = buf + TEN(r) * per;
		float s;

		d2v_rng_seed(&g, seed, kind, first + (uint64_t)r);
		s = dp > 0 && d2v_rng_uniform(&g) < dp ? 0.0f : kpath;
		for (size_t i = 0; i < per; i++)
			row[i] = p > 0 && d2v_rng_uniform(&g) < p ? 0.0f : keep * s;
	}
}

/*
 * Audio feature encoder (DATA2VEC.md §2.2): x (B,S) -> seven Conv1d (no
 * bias, no padding) each with a LayerNorm over channels and GELU ->
 * feature LayerNorm -> projection: tok (B,N,D).
 */
static void
audio_local_forward(d2v_model *m, const float *P, const float *x, int B)
{
	const d2v_ops *o = m->ops;
	const d2v_layout *l = &m->lay;
	int C = m->cfg.conv_dim, N = m->N;
	const float *in = x;

	for (int i = 0; i < D2V_CONV_LAYERS; i++) {
		int rows = B * m->ct[i + 1];

		o->conv1d_forward(m->cv[i], m->col, in, P + l->conv_w[i], NULL, B,
		    m->ct[i], i ? C : 1, C, d2v_conv_kernel[i], d2v_conv_stride[i],
		    0, 1);
		o->layernorm_forward(m->cl[i], m->cm[i], m->cs[i], m->cv[i],
		    P + l->conv_nw[i], P + l->conv_nb[i], rows, C, 1e-5f);
		o->gelu_forward(m->cg[i], m->cl[i], TEN(rows) * C);
		in = m->cg[i];
	}
	o->layernorm_forward(m->fl, m->fm, m->fs, in, P + l->fnorm_w,
	    P + l->fnorm_b, B * N, C, 1e-5f);
	o->matmul_forward(m->tok, m->fl, P + l->fproj_w, P + l->fproj_b, B * N,
	    C, m->D);
}

/* dtok (B,N,D), the gradient of tok, into the feature encoder's weights;
 * x (B,S) the input; uses gdec and gdec2 as scratch. */
static void
audio_local_backward(d2v_model *m, const float *x, const float *dtok, int B)
{
	const d2v_ops *o = m->ops;
	const d2v_layout *l = &m->lay;
	const float *P = m->params;
	float *G = m->grads, *cur = m->gdec, *tmp = m->gdec2;
	int C = m->cfg.conv_dim, N = m->N;
	size_t n;

	n = TEN(B) * N * C;
	memset(tmp, 0, n * sizeof(float));
	o->matmul_backward(tmp, G + l->fproj_w, G + l->fproj_b, dtok, m->fl,
	    P + l->fproj_w, B * N, C, m->D);
	memset(cur, 0, n * sizeof(float));
	o->layernorm_backward(cur, G + l->fnorm_w, G + l->fnorm_b, tmp,
	    m->cg[D2V_CONV_LAYERS - 1], m->fm, m->fs, P + l->fnorm_w, B * N, C);
	/* cur: gradient of the last GELU output */
	for (int i = D2V_CONV_LAYERS - 1; i >= 0; i--) {
		int rows = B * m->ct[i + 1];

		n = TEN(rows) * C;
		memset(tmp, 0, n * sizeof(float));
		o->gelu_backward(tmp, m->cl[i], cur, n);
		memset(cur, 0, n * sizeof(float));
		o->layernorm_backward(cur, G + l->conv_nw[i], G + l->conv_nb[i],
		    tmp, m->cv[i], m->cm[i], m->cs[i], P + l->conv_nw[i], rows, C);
		/* cur: gradient of conv i's output; tmp gets its input's */
		if (i > 0)
			memset(tmp, 0, TEN(B) * m->ct[i] * C * sizeof(float));
		o->conv1d_backward(i > 0 ? tmp : NULL, G + l->conv_w[i], NULL,
		    m->col, m->dcol, cur, i > 0 ? m->cg[i - 1] : x,
		    P + l->conv_w[i], B, m->ct[i], i ? C : 1, C,
		    d2v_conv_kernel[i], d2v_conv_stride[i], 0, 1);
		if (i > 0) {
			float *t = cur;

			cur = tmp;
			tmp = t;
		}
	}
}

/* Text embedding (DATA2VEC.md §2.3): tok (B,N,D) = dropout(LN(tokens[x] +
 * positions[n + 2])); drop_emb holds the dropout scales when `drop`. */
static void
text_local_forward(d2v_model *m, const float *P, const int32_t *ids, int B,
    int drop)
{
	const d2v_layout *l = &m->lay;
	int N = m->N, D = m->D;

#pragma omp parallel for schedule(static)
	for (int i = 0; i < B * N; i++) {
		const float *te = P + l->emb_tok + TEN(ids[i]) * D;
		const float *pe = P + l->emb_pos + TEN(i % N + 2) * D;
		float *o = m->esum + TEN(i) * D;

		for (int d = 0; d < D; d++)
			o[d] = te[d] + pe[d];
	}
	m->ops->layernorm_forward(m->eln, m->em, m->es, m->esum,
	    P + l->emb_nw, P + l->emb_nb, B * N, D, (float)m->cfg.norm_eps);
	memcpy(m->tok, m->eln, TEN(B) * N * D * sizeof(float));
	if (drop)
		m->ops->mul(m->tok, m->drop_emb, TEN(B) * N * D);
}

static void
text_local_backward(d2v_model *m, const int32_t *ids, float *dtok, int B,
    int drop)
{
	const d2v_layout *l = &m->lay;
	float *G = m->grads, *de = m->gdec;
	int N = m->N, D = m->D;

	if (drop)
		m->ops->mul(dtok, m->drop_emb, TEN(B) * N * D);
	memset(de, 0, TEN(B) * N * D * sizeof(float));
	m->ops->layernorm_backward(de, G + l->emb_nw, G + l->emb_nb, dtok,
	    m->esum, m->em, m->es, m->params + l->emb_nw, B * N, D);
	/* scatter-add: rows repeat, so one thread */
	for (int i = 0; i < B * N; i++) {
		float *gt = G + l->emb_tok + TEN(ids[i]) * D;
		float *gp = G + l->emb_pos + TEN(i % N + 2) * D;
		const float *g = de + TEN(i) * D;

		for (int d = 0; d < D; d++) {
			gt[d] += g[d];
			gp[d] += g[d];
		}
	}
}

/* Audio position encoder over R sequences of N frames: p->z (R,N,D) in;
 * out (R,N,D) = z + pos(z), pos = depth x (Conv1d k, groups g -> LN without
 * affine -> GELU). */
static void
pos_forward(d2v_model *m, const float *P, d2v_pos_acts *p, int R, float *out)
{
	const d2v_config *c = &m->cfg;
	const d2v_ops *o = m->ops;
	int N = m->N, D = m->D, k = c->pos_conv_kernel;
	size_t n = TEN(R) * N * D;
	const float *in = p->z;

	for (int j = 0; j < c->pos_conv_depth; j++) {
		o->conv1d_forward(p->c[j], m->col, in, P + m->lay.pos_w[j],
		    P + m->lay.pos_b[j], R, N, D, D, k, 1, k / 2,
		    c->pos_conv_groups);
		o->layernorm_forward(p->l[j], p->m[j], p->s[j], p->c[j], NULL, NULL,
		    R * N, D, 1e-5f);
		o->gelu_forward(p->g[j], p->l[j], n);
		in = p->g[j];
	}
	memcpy(out, p->z, n * sizeof(float));
	if (c->pos_conv_depth > 0)
		o->add(out, in, n);
}

/* dout (R,N,D), the gradient of pos_forward's out: dz (R,N,D) gets the
 * gradient of z (overwritten).  Scratch: gA, gC, gdec, gdec2. */
static void
pos_backward(d2v_model *m, d2v_pos_acts *p, int R, const float *dout,
    float *dz)
{
	const d2v_config *c = &m->cfg;
	const d2v_ops *o = m->ops;
	float *G = m->grads, *cur = m->gdec, *nxt = m->gdec2;
	int N = m->N, D = m->D, k = c->pos_conv_kernel;
	size_t n = TEN(R) * N * D;

	memcpy(dz, dout, n * sizeof(float));
	if (c->pos_conv_depth == 0)
		return;
	memcpy(cur, dout, n * sizeof(float));
	for (int j = c->pos_conv_depth - 1; j >= 0; j--) {
		memset(m->gA, 0, n * sizeof(float));
		o->gelu_backward(m->gA, p->l[j], cur, n);
		memset(m->gC, 0, n * sizeof(float));
		o->layernorm_backward(m->gC, NULL, NULL, m->gA, p->c[j], p->m[j],
		    p->s[j], NULL, R * N, D);
		if (j > 0)
			memset(nxt, 0, n * sizeof(float));
		o->conv1d_backward(j > 0 ? nxt : dz, G + m->lay.pos_w[j],
		    G + m->lay.pos_b[j], m->col, m->dcol, m->gC,
		    j > 0 ? p->g[j - 1] : p->z, m->params + m->lay.pos_w[j], R, N,
		    D, D, k, 1, k / 2, c->pos_conv_groups);
		{
			float *t = cur;

			cur = nxt;
			nxt = t;
		}
	}
}

/* The ALiBi slopes of a pass with parameters P: m_h max(scale_h, 0). */
static void
set_slopes(d2v_model *m, const float *P, d2v_enc_acts *a)
{
	for (int h = 0; h < m->H; h++) {
		float s = P[m->lay.alibi + h];

		a->slope[h] = m->alibi0[h] * (s > 0 ? s : 0.0f);
	}
}

/* The attention half of block l: qkv (R,T,3D) and att (R,T,D) from in
 * (R,T,D), then the projection into out (R,T,D). */
static void
attn_forward(d2v_model *m, const float *P, d2v_enc_acts *a, int l,
    const float *in, float *out)
{
	const d2v_ops *o = m->ops;
	const d2v_block_off *b = &m->lay.blocks[l];
	int RT = a->R * a->T, D = m->D;

	o->matmul_forward(a->qkv[l], in, P + b->qkv_w, P + b->qkv_b, RT, D,
	    3 * D);
	o->attention_forward(a->att[l], a->probs[l], a->qkv[l],
	    a->drop ? a->drop_att[l] : NULL, m->cfg.alibi ? a->slope : NULL,
	    a->pos, a->R, a->T, D, m->H);
	o->matmul_forward(out, a->att[l], P + b->proj_w, P + b->proj_b, RT, D,
	    D);
}

/* Its backward: dproj (R,T,D), the gradient of out, into din (R,T,D),
 * ADDED; the ALiBi slopes' gradient into m->gslope when there is one.
 * Scratch: gA, gQKV. */
static void
attn_backward(d2v_model *m, d2v_enc_acts *a, int l, const float *in,
    const float *dproj, float *din)
{
	const d2v_ops *o = m->ops;
	const d2v_block_off *b = &m->lay.blocks[l];
	const float *P = m->params;
	float *G = m->grads;
	int RT = a->R * a->T, D = m->D;
	float *gsl = m->cfg.alibi ? m->gslope : NULL;

	memset(m->gA, 0, TEN(RT) * D * sizeof(float));
	o->matmul_backward(m->gA, G + b->proj_w, G + b->proj_b, dproj, a->att[l],
	    P + b->proj_w, RT, D, D);
	memset(m->gQKV, 0, TEN(RT) * 3 * D * sizeof(float));
	o->attention_backward(m->gQKV, gsl, m->gA, a->qkv[l], a->probs[l],
	    a->drop ? a->drop_att[l] : NULL, gsl ? a->pos : NULL, a->R, a->T, D,
	    m->H);
	o->matmul_backward(din, G + b->qkv_w, G + b->qkv_b, m->gQKV, in,
	    P + b->qkv_w, RT, D, 3 * D);
	/* The key bias adds q.b_k to every score of a row, which the softmax
	 * cancels: its gradient is exactly zero.  Computed, it is float
	 * rounding noise, which Adam would blow up into full steps of size
	 * lr; keep it exact. */
	memset(G + b->qkv_b + D, 0, TEN(D) * sizeof(float));
}

/* The MLP half of block l: h1 (R,T,F), g (R,T,F) (activation dropout
 * applied) and f (R,T,D) from in (R,T,D). */
static void
mlp_forward(d2v_model *m, const float *P, d2v_enc_acts *a, int l,
    const float *in)
{
	const d2v_ops *o = m->ops;
	const d2v_block_off *b = &m->lay.blocks[l];
	int RT = a->R * a->T, D = m->D, F = m->F;

	o->matmul_forward(a->h1[l], in, P + b->fc1_w, P + b->fc1_b, RT, D, F);
	o->gelu_forward(a->g[l], a->h1[l], TEN(RT) * F);
	if (a->drop)
		o->mul(a->g[l], a->drop_act[l], TEN(RT) * F);
	o->matmul_forward(a->f[l], a->g[l], P + b->fc2_w, P + b->fc2_b, RT, F,
	    D);
}

/* Its backward: df (R,T,D), the gradient of f, into din (R,T,D), ADDED.
 * Scratch: gF, gF2. */
static void
mlp_backward(d2v_model *m, d2v_enc_acts *a, int l, const float *in,
    const float *df, float *din)
{
	const d2v_ops *o = m->ops;
	const d2v_block_off *b = &m->lay.blocks[l];
	const float *P = m->params;
	float *G = m->grads;
	int RT = a->R * a->T, D = m->D, F = m->F;

	memset(m->gF, 0, TEN(RT) * F * sizeof(float));
	o->matmul_backward(m->gF, G + b->fc2_w, G + b->fc2_b, df, a->g[l],
	    P + b->fc2_w, RT, F, D);
	if (a->drop)
		o->mul(m->gF, a->drop_act[l], TEN(RT) * F);
	memset(m->gF2, 0, TEN(RT) * F * sizeof(float));
	o->gelu_backward(m->gF2, a->h1[l], m->gF, TEN(RT) * F);
	o->matmul_backward(din, G + b->fc1_w, G + b->fc1_b, m->gF2, in,
	    P + b->fc1_w, RT, D, F);
}

/* Runs the context LayerNorm (if any) and every block over a->x_in
 * (R,T,D), with ALiBi when the model has it (a->slope, a->pos set). */
static void
encoder_forward(d2v_model *m, const float *P, d2v_enc_acts *a)
{
	const d2v_ops *o = m->ops;
	int R = a->R, T = a->T, D = m->D, RT = R * T;
	float eps = (float)m->cfg.norm_eps;
	const float *x = a->x0;

	if (m->lay.has_ctx)
		o->layernorm_forward(a->x0, a->ctx_mean, a->ctx_rstd, a->x_in,
		    P + m->lay.ctx_w, P + m->lay.ctx_b, RT, D, eps);
	else
		memcpy(a->x0, a->x_in, TEN(RT) * D * sizeof(float));
	if (a->drop && m->cfg.context_dropout > 0)
		o->mul(a->x0, a->drop_ctx, TEN(RT) * D);
	for (int l = 0; l < m->nb; l++) {
		const d2v_block_off *b = &m->lay.blocks[l];

		if (a->drop && a->skip[l]) {
			/* layerdrop: the block is the identity this pass */
			memcpy(a->out[l], x, TEN(RT) * D * sizeof(float));
			x = a->out[l];
			continue;
		}
		attn_forward(m, P, a, l, x, a->x1[l]);
		if (a->drop)
			o->mul(a->x1[l], a->drop_ao[l], TEN(RT) * D);
		o->add(a->x1[l], x, TEN(RT) * D);
		o->layernorm_forward(a->r[l], a->m1[l], a->s1[l], a->x1[l],
		    P + b->norm1_w, P + b->norm1_b, RT, D, eps);
		mlp_forward(m, P, a, l, a->r[l]);
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
 * a->x_in is left in dx (R,T,D).  With ALiBi, the gradient of the slopes
 * goes to m->gslope and on to alibi_scale. */
static void
encoder_backward(d2v_model *m, d2v_enc_acts *a, float *dout, float *dx)
{
	const d2v_ops *o = m->ops;
	const float *P = m->params;
	float *G = m->grads;
	int R = a->R, T = a->T, D = m->D, RT = R * T;
	size_t nD = TEN(RT) * D;
	float *d_x2 = m->gC, *df = m->gdec2; /* gdec2: free during this pass */
	float *gsl = m->cfg.alibi ? m->gslope : NULL;

	if (gsl)
		memset(gsl, 0, TEN(m->H) * sizeof(float));
	for (int l = m->nb - 1; l >= 0; l--) {
		const d2v_block_off *b = &m->lay.blocks[l];
		const float *xin = l > 0 ? a->out[l - 1] : a->x0;

		if (a->drop && a->skip[l])
			continue; /* identity: dout passes through */
		/* out = LN2(x2), x2 = r + f */
		memset(d_x2, 0, nD * sizeof(float));
		o->layernorm_backward(d_x2, G + b->norm2_w, G + b->norm2_b, dout,
		    a->x2[l], a->m2[l], a->s2[l], P + b->norm2_w, RT, D);
		/* x2 = r + drop_f * fc2(drop_act * gelu(fc1(r))): d_r = d_x2 +
		 * the MLP's */
		memcpy(df, d_x2, nD * sizeof(float));
		if (a->drop)
			o->mul(df, a->drop_f[l], nD);
		mlp_backward(m, a, l, a->r[l], df, d_x2);
		/* r = LN1(x1) */
		memset(dout, 0, nD * sizeof(float));
		o->layernorm_backward(dout, G + b->norm1_w, G + b->norm1_b, d_x2,
		    a->x1[l], a->m1[l], a->s1[l], P + b->norm1_w, RT, D);
		/* x1 = x + drop_ao * proj(att): dout holds d_x1 = d_x (the
		 * residual), the attention's is added */
		memcpy(d_x2, dout, nD * sizeof(float));
		if (a->drop)
			o->mul(d_x2, a->drop_ao[l], nD);
		attn_backward(m, a, l, xin, d_x2, dout);
	}
	if (gsl) {
		/* slope_h = m_h max(scale_h, 0) */
		for (int h = 0; h < m->H; h++)
			if (P[m->lay.alibi + h] > 0)
				G[m->lay.alibi + h] += gsl[h] * m->alibi0[h];
	}
	if (a->drop && m->cfg.context_dropout > 0)
		o->mul(dout, a->drop_ctx, nD);
	if (m->lay.has_ctx) {
		memset(dx, 0, nD * sizeof(float));
		o->layernorm_backward(dx, G + m->lay.ctx_w, G + m->lay.ctx_b, dout,
		    a->x_in, a->ctx_mean, a->ctx_rstd, P + m->lay.ctx_w, RT, D);
	} else {
		memcpy(dx, dout, nD * sizeof(float));
	}
}

static int step_v1(d2v_model *m, const uint8_t *img, const uint8_t *mask,
    const float *y, int B, uint64_t rng_seed, d2v_step_out *out,
    d2v_err *err);
static void teacher_v1_forward(d2v_model *m, const float *P,
    const uint8_t *img, int B);
static int step_v1_seq(d2v_model *m, const void *x, const uint8_t *mask,
    const float *y, int B, uint64_t rng_seed, d2v_step_out *out,
    d2v_err *err);
static void make_targets(d2v_model *m, int B, float *y, float *ycls);

/* The student's local encoder on B samples x into m->tok (and m->pix for
 * images); `drop` applies the text embedding dropout of this step. */
static void
local_forward(d2v_model *m, const float *P, const void *x, int B, int drop)
{
	if (m->E) {
		patchify(m, x, B, m->pix);
		embed(m, P, B, m->tok);
	} else if (is_audio(m)) {
		/* the convolutions read the samples from the backend's memory */
		memcpy(m->wav, x, TEN(B) * m->len * sizeof(float));
		audio_local_forward(m, P, m->wav, B);
	} else {
		text_local_forward(m, P, x, B, drop);
	}
}

/*
 * Teacher pass over B unmasked samples with parameters P into m->te.
 * Images re-embed x with P (the teacher has its own patch embedding); audio
 * and text take the student's local encoder output already in m->tok
 * (DATA2VEC.md §5.2).
 */
static void
teacher_forward(d2v_model *m, const float *P, const void *x, int B)
{
	int N = m->N, D = m->D;
	d2v_enc_acts *a = &m->te;

	if (m->E) {
		patchify(m, x, B, m->pix);
		embed(m, P, B, m->tok);
#pragma omp parallel for schedule(static)
		for (int b = 0; b < B; b++) {
			float *row = a->x_in + TEN(b) * (N + 1) * D;

			memcpy(row, P + m->lay.cls, TEN(D) * sizeof(float));
			memcpy(row + D, m->tok + TEN(b) * N * D,
			    TEN(N) * D * sizeof(float));
		}
	} else if (is_audio(m)) {
		memcpy(m->tpos.z, m->tok, TEN(B) * N * D * sizeof(float));
		pos_forward(m, P, &m->tpos, B, a->x_in);
	} else {
		memcpy(a->x_in, m->tok, TEN(B) * N * D * sizeof(float));
	}
	if (m->cfg.alibi) {
		for (int b = 0; b < B; b++)
			for (int n = 0; n < N; n++)
				a->pos[TEN(b) * N + n] = n;
		set_slopes(m, P, a);
	}
	a->drop = 0;
	encoder_forward(m, P, a);
}

/*
 * y (B,N,D): per top-K main block, its FFN output (v1 images: the end of
 * the block), the CLS dropped, normalised (target_layer_norm: "in" over
 * positions, "ln" per token), averaged, then normalised again
 * (target_final_norm); ycls (B,D) the mean of y over positions, for v2
 * images (DATA2VEC.md §6).
 */
static void
make_targets(d2v_model *m, int B, float *y, float *ycls)
{
	const d2v_config *c = &m->cfg;
	d2v_enc_acts *a = &m->te;
	int N = m->N, D = m->D, K = c->top_k, E = m->E;
	int ln = strcmp(c->target_layer_norm, "ln") == 0;
	float *tmp = m->gA; /* (B,N,D) scratch */
	size_t n = TEN(B) * N * D;

	memset(y, 0, n * sizeof(float));
	for (int k = 0; k < K; k++) {
		int l = m->nb - K + k;
		const float *f = is_v1_image(m) ? a->out[l] : a->f[l];

		for (int b = 0; b < B; b++)
			memcpy(tmp + TEN(b) * N * D, f + (TEN(b) * (N + E) + E) * D,
			    TEN(N) * D * sizeof(float));
		if (!ln) {
			m->ops->instancenorm_forward(y, tmp, B, N, D, 1e-5f, 1,
			    1.0f / (float)K);
			continue;
		}
		m->ops->layernorm_forward(tmp, NULL, NULL, tmp, NULL, NULL, B * N,
		    D, 1e-5f);
		for (size_t i = 0; i < n; i++)
			y[i] += tmp[i] / (float)K;
	}
	if (strcmp(c->target_final_norm, "ln") == 0)
		m->ops->layernorm_forward(y, NULL, NULL, y, NULL, NULL, B * N, D,
		    1e-5f);
	else if (strcmp(c->target_final_norm, "in") == 0)
		m->ops->instancenorm_forward(y, y, B, N, D, 1e-5f, 0, 1.0f);
	if (ycls == NULL || !E || d2v_config_is_v1(c))
		return;
	for (int b = 0; b < B; b++) {
		for (int d = 0; d < D; d++) {
			double s = 0;

			for (int t = 0; t < N; t++)
				s += y[(TEN(b) * N + t) * D + d];
			ycls[TEN(b) * D + d] = (float)(s / N);
		}
	}
}

int
d2v_model_targets(d2v_model *m, const float *params, const void *x,
    int B, float *y, float *ycls, d2v_err *err)
{
	int rc = step_alloc(m, B, m->V > 0 ? m->V : 1, err);

	if (rc < 0)
		return rc;
	/* made in the model's buffers (the backend's memory), then copied */
	if (is_v1_image(m)) {
		teacher_v1_forward(m, params, x, B);
		make_targets(m, B, m->y, NULL);
	} else {
		if (!m->E)
			local_forward(m, m->params, x, B, 0);
		teacher_forward(m, params, x, B);
		make_targets(m, B, m->y, ycls ? m->ycls : NULL);
	}
	if ((rc = d2v_model_check(m, err)) < 0)
		return rc;
	memcpy(y, m->y, TEN(B) * m->N * m->D * sizeof(float));
	if (ycls != NULL && m->E && !is_v1_image(m))
		memcpy(ycls, m->ycls, TEN(B) * m->D * sizeof(float));
	return 0;
}

int
d2v_model_check(const d2v_model *m, d2v_err *err)
{
	const char *why;

	if (m->ops->failed == NULL || (why = m->ops->failed()) == NULL)
		return 0;
	return d2v_err_set(err, D2V_EIO, "%s", why);
}

int
d2v_model_features(d2v_model *m, const float *params, const void *x,
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
	if (is_v1_image(m)) {
		teacher_v1_forward(m, params, x, B);
	} else {
		if (!m->E)
			local_forward(m, m->params, x, B, 0);
		teacher_forward(m, params, x, B);
	}
	if ((rc = d2v_model_check(m, err)) < 0)
		return rc;
	memcpy(out, m->te.out[layer], TEN(B) * (m->N + m->E) * m->D *
	    sizeof(float));
	return 0;
}

static int step_any(d2v_model *m, const void *x, const uint8_t *mask,
    const float *noise, const float *y, const float *ycls, int B,
    uint64_t rng_seed, d2v_step_out *out, d2v_err *err);

int
d2v_model_step(d2v_model *m, const void *x, const uint8_t *mask,
    const float *noise, const float *y, const float *ycls, int B,
    uint64_t rng_seed, d2v_step_out *out, d2v_err *err)
{
	int rc = step_any(m, x, mask, noise, y, ycls, B, rng_seed, out, err);

	return rc < 0 ? rc : d2v_model_check(m, err);
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

/* Mean over dims of the std of the predictions at the masked positions:
 * pred rows of T tokens, the first `off` (CLS) skipped, mask (rows,N). */
static double
masked_pred_std(d2v_model *m, const uint8_t *mask, int rows, int T, int off)
{
	float *tmp = m->gA;
	int N = m->N, D = m->D;
	long k = 0;

	for (int b = 0; b < rows; b++)
		for (int n = 0; n < N; n++)
			if (mask[TEN(b) * N + n])
				memcpy(tmp + TEN(k++) * D,
				    m->pred + (TEN(b) * T + off + n) * D,
				    TEN(D) * sizeof(float));
	return mean_std(tmp, k, D);
}

/* Draws this step's dropout, drop-path and layerdrop for every block of
 * the student pass a. */
static void
make_dropout(d2v_model *m, d2v_enc_acts *a, uint64_t seed)
{
	const d2v_config *c = &m->cfg;
	int R = a->R, T = a->T, D = m->D, F = m->F, H = m->H;
	uint64_t r0 = (uint64_t)m->row0;
	d2v_rng g;

	d2v_rng_seed(&g, seed, 0x1a7e, 0);
	for (int l = 0; l < m->nb; l++) {
		double dp = m->nb > 1 ? c->drop_path * l / (m->nb - 1) : c->drop_path;
		uint64_t k = 0xd0000 + (uint64_t)l * 8;

		/* layerdrop on the main blocks (fairseq: per pass) */
		a->skip[l] = l >= c->prenet_depth && c->layerdrop > 0 &&
		    d2v_rng_uniform(&g) < c->layerdrop;
		fill_drop(a->drop_att[l], R * H, TEN(T) * T, c->attention_dropout,
		    0, seed, k, r0 * (uint64_t)H);
		fill_drop(a->drop_ao[l], R, TEN(T) * D, c->encoder_dropout, dp,
		    seed, k + 1, r0);
		fill_drop(a->drop_act[l], R, TEN(T) * F, c->activation_dropout, 0,
		    seed, k + 2, r0);
		/* activation dropout after fc2 and the post-MLP dropout stack */
		{
			double p1 = c->activation_dropout, p2 = c->post_mlp_drop;
			double p = 1 - (1 - p1) * (1 - p2);

			fill_drop(a->drop_f[l], R, TEN(T) * D, p, dp, seed, k + 3,
			    r0);
		}
	}
	fill_drop(a->drop_ctx, R, TEN(T) * D, c->context_dropout, 0, seed, 0xc0,
	    r0);
}

/* Decoder forward from m->dec_in (R,N,D) to m->pred (R,N,D): 2-D
 * convolutions on the image grid, 1-D over the sequence otherwise. */
static void
decoder_forward(d2v_model *m, int R)
{
	const d2v_config *c = &m->cfg;
	const d2v_ops *o = m->ops;
	const float *P = m->params, *in = m->dec_in;
	int N = m->N, D = m->D, Dd = c->decoder_dim, k = c->decoder_kernel;
	int g = m->E ? c->image_size / c->patch : 0, cin = D;
	size_t n = TEN(R) * N * Dd;

	for (int j = 0; j < c->decoder_layers; j++) {
		if (m->E)
			o->conv2d_forward(m->dc[j], m->col, in, P + m->lay.dec_w[j],
			    P + m->lay.dec_b[j], R, g, g, cin, Dd, k,
			    c->decoder_groups);
		else
			o->conv1d_forward(m->dc[j], m->col, in, P + m->lay.dec_w[j],
			    P + m->lay.dec_b[j], R, N, cin, Dd, k, 1, k / 2,
			    c->decoder_groups);
		o->layernorm_forward(m->dl[j], m->dm[j], m->ds[j], m->dc[j],
		    NULL, NULL, R * N, Dd, 1e-5f);
		o->gelu_forward(m->dout[j], m->dl[j], n);
		if (c->decoder_residual && cin == Dd)
			o->add(m->dout[j], in, n);
		in = m->dout[j];
		cin = Dd;
	}
	if (c->decoder_proj_layers == 2) {
		o->matmul_forward(m->ph, in, P + m->lay.dproj_w, P + m->lay.dproj_b,
		    R * N, Dd, 2 * Dd);
		o->gelu_forward(m->pg, m->ph, 2 * n);
		o->matmul_forward(m->pred, m->pg, P + m->lay.dproj2_w,
		    P + m->lay.dproj2_b, R * N, 2 * Dd, D);
	} else {
		o->matmul_forward(m->pred, in, P + m->lay.dproj_w,
		    P + m->lay.dproj_b, R * N, Dd, D);
	}
}

/* Decoder backward: dpred (R,N,D) in gdec; returns the buffer (gdec or
 * gdec2) holding the gradient of dec_in (R,N,D). */
static float *
decoder_backward(d2v_model *m, int R)
{
	const d2v_config *c = &m->cfg;
	const d2v_ops *o = m->ops;
	const float *P = m->params;
	float *Gr = m->grads, *dcur = m->gdec, *dprev = m->gdec2;
	int N = m->N, D = m->D, Dd = c->decoder_dim, L = c->decoder_layers;
	int k = c->decoder_kernel, g = m->E ? c->image_size / c->patch : 0;
	size_t n = TEN(R) * N * Dd;
	const float *last = L > 0 ? m->dout[L - 1] : m->dec_in;

	memset(dprev, 0, n * sizeof(float));
	if (c->decoder_proj_layers == 2) {
		memset(m->gA, 0, 2 * n * sizeof(float));
		o->matmul_backward(m->gA, Gr + m->lay.dproj2_w, Gr + m->lay.dproj2_b,
		    dcur, m->pg, P + m->lay.dproj2_w, R * N, 2 * Dd, D);
		memset(m->gC, 0, 2 * n * sizeof(float));
		o->gelu_backward(m->gC, m->ph, m->gA, 2 * n);
		o->matmul_backward(dprev, Gr + m->lay.dproj_w, Gr + m->lay.dproj_b,
		    m->gC, last, P + m->lay.dproj_w, R * N, Dd, 2 * Dd);
	} else {
		o->matmul_backward(dprev, Gr + m->lay.dproj_w, Gr + m->lay.dproj_b,
		    dcur, last, P + m->lay.dproj_w, R * N, Dd, D);
	}
	/* dprev: gradient of the last decoder layer output */
	for (int j = L - 1; j >= 0; j--) {
		int cin = j == 0 ? D : Dd;
		const float *in = j == 0 ? m->dec_in : m->dout[j - 1];
		float *dl = m->gA, *dc = m->gC;

		memset(dl, 0, n * sizeof(float));
		o->gelu_backward(dl, m->dl[j], dprev, n);
		memset(dc, 0, n * sizeof(float));
		o->layernorm_backward(dc, NULL, NULL, dl, m->dc[j], m->dm[j],
		    m->ds[j], NULL, R * N, Dd);
		/* gradient of the layer input: residual part first */
		if (c->decoder_residual && cin == Dd)
			memcpy(dcur, dprev, n * sizeof(float));
		else
			memset(dcur, 0, TEN(R) * N * cin * sizeof(float));
		if (m->E)
			o->conv2d_backward(dcur, Gr + m->lay.dec_w[j],
			    Gr + m->lay.dec_b[j], m->col, m->dcol, dc, in,
			    P + m->lay.dec_w[j], R, g, g, cin, Dd, k,
			    c->decoder_groups);
		else
			o->conv1d_backward(dcur, Gr + m->lay.dec_w[j],
			    Gr + m->lay.dec_b[j], m->col, m->dcol, dc, in,
			    P + m->lay.dec_w[j], R, N, cin, Dd, k, 1, k / 2,
			    c->decoder_groups);
		{
			float *t = dcur;

			dcur = dprev;
			dprev = t;
		}
	}
	return dprev;
}

static int
step_any(d2v_model *m, const void *x, const uint8_t *mask,
    const float *noise, const float *y, const float *ycls, int B,
    uint64_t rng_seed, d2v_step_out *out, d2v_err *err)
{
	const d2v_config *c = &m->cfg;
	const d2v_ops *o = m->ops;
	int M = c->clone, R = B * M, N = m->N, D = m->D, E = m->E, V, T, rc;
	double s = c->loss_scale > 0 ? c->loss_scale : 1.0 / sqrt((double)D);
	double reg = 0, cls = 0;
	long nmask, norm;
	float *P = m->params, *Gr = m->grads;
	d2v_enc_acts *a = &m->st;
	int drop = has_dropout(c), edrop = c->embed_dropout > 0 && is_text(m);

	if (N < 1)
		return d2v_err_set(err, D2V_EINVAL, "no sample length set");
	if (is_v1_image(m))
		return step_v1(m, x, mask, y, B, rng_seed, out, err);
	if (d2v_config_is_v1(c))
		return step_v1_seq(m, x, mask, y, B, rng_seed, out, err);
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
	T = V + E;
	nmask = (long)R * (N - V);
	norm = loss_norm(m, nmask);
	if ((rc = step_alloc(m, B, V, err)) < 0)
		return rc;
	for (int r = 0; r < R; r++) {
		int j = 0;

		for (int n = 0; n < N; n++)
			if (mask[TEN(r) * N + n] == 0)
				m->keep[TEN(r) * V + j++] = n;
	}

	/* the student's local encoder first: audio and text teachers read it */
	if (edrop)
		fill_drop(m->drop_emb, B, TEN(N) * D, c->embed_dropout, 0,
		    rng_seed, 0xe0, (uint64_t)(m->row0 / c->clone));
	if (!E)
		local_forward(m, P, x, B, edrop);
	/* targets: given, or from the EMA teacher */
	if (y != NULL) {
		memcpy(m->y, y, TEN(B) * N * D * sizeof(float));
		if (E)
			memcpy(m->ycls, ycls, TEN(B) * D * sizeof(float));
	} else {
		teacher_forward(m, m->teacher, x, B);
		make_targets(m, B, m->y, m->ycls);
	}
	if (E) {
		/* the teacher, when it ran, left the patches in m->pix */
		if (y != NULL)
			patchify(m, x, B, m->pix);
		embed(m, P, B, m->tok);
	}

	/* student rows: [CLS,] the kept tokens of sample r/M */
	if (is_audio(m)) {
		/* masked frames zeroed, the position encoder over all N, then
		 * the kept frames (DATA2VEC.md §2.2) */
		float *z = m->spos.z, *xz = m->gdec;

#pragma omp parallel for schedule(static)
		for (int r = 0; r < R; r++)
			for (int n = 0; n < N; n++) {
				float *dst = z + (TEN(r) * N + n) * D;

				if (mask[TEN(r) * N + n])
					memset(dst, 0, TEN(D) * sizeof(float));
				else
					memcpy(dst, m->tok + (TEN(r / M) * N + n) * D,
					    TEN(D) * sizeof(float));
			}
		pos_forward(m, P, &m->spos, R, xz);
		o->gather_tokens(a->x_in, xz, m->keep, NULL, R, 1, N, V, 0, D);
	} else {
		o->gather_tokens(a->x_in, m->tok, m->keep, E ? P + m->lay.cls :
		    NULL, R, M, N, V, E, D);
	}
	if (c->alibi) {
		for (int r = 0; r < R; r++)
			for (int j = 0; j < V; j++)
				a->pos[TEN(r) * T + E + j] = m->keep[TEN(r) * V + j];
		set_slopes(m, P, a);
	}
	a->drop = drop;
	if (a->drop)
		make_dropout(m, a, rng_seed);
	encoder_forward(m, P, a);

	/* decoder input: encoder outputs (after the input dropout) back in
	 * place, noise elsewhere */
	if (m->drop_in != NULL)
		fill_drop(m->drop_in, R, TEN(V) * D, c->input_dropout, 0, rng_seed,
		    0x1d, (uint64_t)m->row0);
	{
		const float *h = a->out[m->nb - 1];

#pragma omp parallel for schedule(static)
		for (int r = 0; r < R; r++) {
			float *di = m->dec_in + TEN(r) * N * D;
			d2v_rng rng;

			d2v_rng_seed(&rng, rng_seed, 0xdec0,
			    (uint64_t)(m->row0 + r));
			for (int n = 0; n < N; n++) {
				float *dst = di + TEN(n) * D;

				if (mask[TEN(r) * N + n] == 0)
					continue;
				if (noise != NULL) {
					memcpy(dst, noise + (TEN(r) * N + n) * D,
					    TEN(D) * sizeof(float));
					continue;
				}
				for (int d = 0; d < D; d += 2) {
					double a, b;

					d2v_rng_normal2(&rng, &a, &b);
					dst[d] = (float)(c->mask_noise_std * a);
					if (d + 1 < D)
						dst[d + 1] = (float)(c->mask_noise_std * b);
				}
			}
			for (int j = 0; j < V; j++) {
				float *dst = di + TEN(m->keep[TEN(r) * V + j]) * D;
				const float *src = h + (TEN(r) * T + E + j) * D;

				if (m->drop_in != NULL) {
					const float *dm = m->drop_in + (TEN(r) * V + j) * D;

					for (int d = 0; d < D; d++)
						dst[d] = src[d] * dm[d];
				} else {
					memcpy(dst, src, TEN(D) * sizeof(float));
				}
			}
		}
	}
	decoder_forward(m, R);

	/* loss and its gradient at the predictions and the CLS outputs */
	memset(Gr, 0, m->lay.total * sizeof(float));
	{
		float *dp = m->gdec;

		memset(dp, 0, TEN(R) * N * D * sizeof(float));
		for (int r = 0; r < R; r++) {
			const float *yb = m->y + TEN(r / M) * N * D;

			for (int n = 0; n < N; n++) {
				if (mask[TEN(r) * N + n] == 0)
					continue;
				for (int d = 0; d < D; d++) {
					size_t i = (TEN(r) * N + n) * D + d;
					double e = m->pred[i] - yb[TEN(n) * D + d];

					reg += s * e * e;
					dp[i] = (float)(2 * s * e / norm);
				}
			}
		}
	}
	reg /= norm;
	{
		const float *h = a->out[m->nb - 1];
		float *dh = m->gB;

		memset(dh, 0, TEN(R) * T * D * sizeof(float));
		for (int r = 0; E && r < R; r++) {
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
	out->pred_var = masked_pred_std(m, mask, R, N, 0);

	/* backward: decoder, then back to the encoder output rows */
	{
		const float *ddec = decoder_backward(m, R);
		float *dh = m->gB;

		for (int r = 0; r < R; r++)
			for (int j = 0; j < V; j++) {
				float *dst = dh + (TEN(r) * T + E + j) * D;
				const float *src = ddec +
				    (TEN(r) * N + m->keep[TEN(r) * V + j]) * D;
				const float *dm = m->drop_in ? m->drop_in +
				    (TEN(r) * V + j) * D : NULL;

				for (int d = 0; d < D; d++)
					dst[d] += dm ? src[d] * dm[d] : src[d];
			}
		/* the encoder backward uses gA, gC, gF, gQKV as scratch; pass
		 * gB as dout and get d(x_in) in gdec */
		encoder_backward(m, a, dh, m->gdec);
		a->drop = 0;
	}
	/* x_in rows back to the local encoder output: dtok (B,N,D) */
	memset(m->dtok, 0, TEN(B) * N * D * sizeof(float));
	if (is_audio(m)) {
		float *dxz = m->gdec2, *dz = m->gB;

		memset(dxz, 0, TEN(R) * N * D * sizeof(float));
		o->scatter_tokens(dxz, NULL, m->gdec, m->keep, R, 1, N, V, 0, D);
		pos_backward(m, &m->spos, R, dxz, dz);
		for (int r = 0; r < R; r++)
			for (int n = 0; n < N; n++) {
				float *dst = m->dtok + (TEN(r / M) * N + n) * D;
				const float *src = dz + (TEN(r) * N + n) * D;

				if (mask[TEN(r) * N + n])
					continue; /* zeroed frames */
				for (int d = 0; d < D; d++)
					dst[d] += src[d];
			}
		audio_local_backward(m, m->wav, m->dtok, B);
	} else {
		o->scatter_tokens(m->dtok, E ? Gr + m->lay.cls : NULL, m->gdec,
		    m->keep, R, M, N, V, E, D);
		if (E)
			o->matmul_backward(NULL, Gr + m->lay.patch_w,
			    Gr + m->lay.patch_b, m->dtok, m->pix, P + m->lay.patch_w,
			    B * N, c->channels * c->patch * c->patch, D);
		else
			text_local_backward(m, x, m->dtok, B, edrop);
	}
	return 0;
}

/* ---- data2vec (v1), images: pre-LN blocks with LayerScale ---- */

/* The v1 loss of one error e: Smooth-L1 with beta (0.5 e^2 / beta inside
 * beta, |e| - beta / 2 outside), or e^2 for beta 0; *g its derivative. */
static double
elem_loss(double e, double beta, double *g)
{
	double ae = fabs(e);

	if (beta > 0 && ae >= beta) {
		*g = e > 0 ? 1 : -1;
		return ae - 0.5 * beta;
	}
	if (beta > 0) {
		*g = e / beta;
		return 0.5 * e * e / beta;
	}
	*g = 2 * e;
	return e * e;
}

/*
 * The v1 loss and its gradient: w times elem_loss summed over channels,
 * averaged over the nmask masked positions (w = 1/D gives BEiT's mean
 * over positions and channels).  pred has rows of T tokens, the first
 * `off` (CLS) not predicted; y and mask (B,N); dp (B,T,D) gets the
 * gradient; out the loss and the statistics.
 */
static void
v1_loss(d2v_model *m, const uint8_t *mask, int B, int T, int off, double w,
    double beta, long nmask, float *dp, d2v_step_out *out)
{
	int N = m->N, D = m->D;
	double loss = 0, norm = (double)loss_norm(m, nmask);

	memset(dp, 0, TEN(B) * T * D * sizeof(float));
	for (int b = 0; b < B; b++)
		for (int n = 0; n < N; n++) {
			if (!mask[TEN(b) * N + n])
				continue;
			for (int d = 0; d < D; d++) {
				size_t i = (TEN(b) * T + off + n) * D + d;
				double g;

				loss += w * elem_loss(m->pred[i] -
				    m->y[(TEN(b) * N + n) * D + d], beta, &g);
				dp[i] = (float)(w * g / norm);
			}
		}
	out->loss = out->loss_reg = loss / norm;
	out->loss_cls = 0;
	out->n_masked = nmask;
	out->target_var = mean_std(m->y, (long)B * N, D);
	out->pred_var = masked_pred_std(m, mask, B, T, off);
}


/* out (rows,D) += g (D) * x (rows,D) [* s (rows,D) when s] */
static void
add_scaled(float *out, const float *g, const float *x, const float *s,
    int rows, int D)
{
#pragma omp parallel for schedule(static)
	for (int i = 0; i < rows; i++)
		for (int d = 0; d < D; d++) {
			size_t k = TEN(i) * D + d;

			out[k] += g[d] * (s ? x[k] * s[k] : x[k]);
		}
}

/* dg (D) += sum over rows of dy * x [* s]; dx (rows,D) = dy * g [* s] */
static void
scaled_backward(float *dx, float *dg, const float *dy, const float *g,
    const float *x, const float *s, int rows, int D)
{
#pragma omp parallel for schedule(static)
	for (int d = 0; d < D; d++) {
		double acc = 0;

		for (int i = 0; i < rows; i++) {
			size_t k = TEN(i) * D + d;

			acc += (double)dy[k] * (s ? x[k] * s[k] : x[k]);
		}
		dg[d] += (float)acc;
	}
#pragma omp parallel for schedule(static)
	for (int i = 0; i < rows; i++)
		for (int d = 0; d < D; d++) {
			size_t k = TEN(i) * D + d;

			dx[k] = dy[k] * g[d] * (s ? s[k] : 1.0f);
		}
}

/* Every pre-LN block over a->x_in (R,T,D) (no context LayerNorm):
 * x1 = x + g1 attn(LN1 x); out = x1 + g2 mlp(LN2 x1). */
static void
encoder_v1_forward(d2v_model *m, const float *P, d2v_enc_acts *a)
{
	const d2v_ops *o = m->ops;
	int R = a->R, T = a->T, D = m->D, RT = R * T;
	float eps = (float)m->cfg.norm_eps;
	const float *x = a->x_in;
	size_t nD = TEN(RT) * D;

	memcpy(a->x0, a->x_in, nD * sizeof(float));
	for (int l = 0; l < m->nb; l++) {
		const d2v_block_off *b = &m->lay.blocks[l];

		o->layernorm_forward(a->r[l], a->m1[l], a->s1[l], x,
		    P + b->norm1_w, P + b->norm1_b, RT, D, eps);
		attn_forward(m, P, a, l, a->r[l], a->pa[l]);
		memcpy(a->x1[l], x, nD * sizeof(float));
		add_scaled(a->x1[l], P + b->gamma1, a->pa[l],
		    a->drop ? a->drop_ao[l] : NULL, RT, D);
		o->layernorm_forward(a->x2[l], a->m2[l], a->s2[l], a->x1[l],
		    P + b->norm2_w, P + b->norm2_b, RT, D, eps);
		mlp_forward(m, P, a, l, a->x2[l]);
		memcpy(a->out[l], a->x1[l], nD * sizeof(float));
		add_scaled(a->out[l], P + b->gamma2, a->f[l],
		    a->drop ? a->drop_f[l] : NULL, RT, D);
		x = a->out[l];
	}
}

/* dout (R,T,D), the gradient of the last block's output (overwritten);
 * dx (R,T,D) gets the gradient of a->x_in. */
static void
encoder_v1_backward(d2v_model *m, d2v_enc_acts *a, float *dout, float *dx)
{
	const d2v_ops *o = m->ops;
	const float *P = m->params;
	float *G = m->grads;
	int R = a->R, T = a->T, D = m->D, RT = R * T;
	size_t nD = TEN(RT) * D;
	float *t = m->gC;

	for (int l = m->nb - 1; l >= 0; l--) {
		const d2v_block_off *b = &m->lay.blocks[l];
		const float *xin = l > 0 ? a->out[l - 1] : a->x_in;

		/* out = x1 + g2 f: dout is d x1 so far; t = d f */
		scaled_backward(t, G + b->gamma2, dout, P + b->gamma2, a->f[l],
		    a->drop ? a->drop_f[l] : NULL, RT, D);
		memset(m->gB, 0, nD * sizeof(float));
		mlp_backward(m, a, l, a->x2[l], t, m->gB);
		/* x2 = LN2(x1): add into d x1 */
		o->layernorm_backward(dout, G + b->norm2_w, G + b->norm2_b, m->gB,
		    a->x1[l], a->m2[l], a->s2[l], P + b->norm2_w, RT, D);
		/* x1 = x + g1 pa: dout is d x so far; t = d pa */
		scaled_backward(t, G + b->gamma1, dout, P + b->gamma1, a->pa[l],
		    a->drop ? a->drop_ao[l] : NULL, RT, D);
		memset(m->gB, 0, nD * sizeof(float));
		attn_backward(m, a, l, a->r[l], t, m->gB);
		memcpy(t, m->gB, nD * sizeof(float));
		o->layernorm_backward(dout, G + b->norm1_w, G + b->norm1_b, t, xin,
		    a->m1[l], a->s1[l], P + b->norm1_w, RT, D);
	}
	memcpy(dx, dout, nD * sizeof(float));
}

/* Teacher (or feature) pass of the v1 model: the unmasked images, CLS
 * first, with parameters P into m->te. */
static void
teacher_v1_forward(d2v_model *m, const float *P, const uint8_t *img, int B)
{
	int N = m->N, D = m->D;
	d2v_enc_acts *a = &m->te;

	patchify(m, img, B, m->pix);
	embed(m, P, B, m->tok);
	for (int b = 0; b < B; b++) {
		float *row = a->x_in + TEN(b) * (N + 1) * D;

		memcpy(row, P + m->lay.cls, TEN(D) * sizeof(float));
		memcpy(row + D, m->tok + TEN(b) * N * D, TEN(N) * D * sizeof(float));
	}
	a->drop = 0;
	encoder_v1_forward(m, P, a);
}

static int
step_v1(d2v_model *m, const uint8_t *img, const uint8_t *mask,
    const float *y, int B, uint64_t rng_seed, d2v_step_out *out, d2v_err *err)
{
	const d2v_config *c = &m->cfg;
	const d2v_ops *o = m->ops;
	int N = m->N, D = m->D, T = N + 1, rc;
	double beta = c->loss_beta;
	long nmask = 0;
	float *P = m->params, *Gr = m->grads;
	d2v_enc_acts *a = &m->st;

	for (int i = 0; i < B * N; i++)
		nmask += mask[i] != 0;
	if (nmask == 0)
		return d2v_err_set(err, D2V_EINVAL, "no masked token in the batch");
	if ((rc = step_alloc(m, B, N, err)) < 0)
		return rc;
	if (y != NULL) {
		memcpy(m->y, y, TEN(B) * N * D * sizeof(float));
	} else {
		teacher_v1_forward(m, m->teacher, img, B);
		make_targets(m, B, m->y, NULL);
	}
	/* student: masked patches replaced by the mask token, then the
	 * positions added (so that masked tokens still differ by position:
	 * d2v's stand-in for BEiT's relative position bias); the teacher, when
	 * it ran, left the patches in m->pix */
	if (y != NULL)
		patchify(m, img, B, m->pix);
	embed(m, P, B, m->tok);
	for (int b = 0; b < B; b++) {
		float *row = a->x_in + TEN(b) * T * D;

		memcpy(row, P + m->lay.cls, TEN(D) * sizeof(float));
		for (int n = 0; n < N; n++) {
			float *dst = row + TEN(1 + n) * D;

			if (!mask[TEN(b) * N + n]) {
				memcpy(dst, m->tok + (TEN(b) * N + n) * D,
				    TEN(D) * sizeof(float));
				continue;
			}
			for (int d = 0; d < D; d++)
				dst[d] = P[m->lay.mask_tok + d] +
				    m->sincos[TEN(n) * D + d];
		}
	}
	a->drop = has_dropout(c);
	if (a->drop)
		make_dropout(m, a, rng_seed);
	encoder_v1_forward(m, P, a);
	o->layernorm_forward(m->hn, m->hm, m->hs, a->out[m->nb - 1],
	    P + m->lay.norm_w, P + m->lay.norm_b, B * T, D,
	    (float)c->norm_eps);
	o->matmul_forward(m->pred, m->hn, P + m->lay.head_w, P + m->lay.head_b,
	    B * T, D, D);

	/* Smooth-L1 (beta) or L2 (beta 0), the mean over masked tokens and
	 * channels */
	memset(Gr, 0, m->lay.total * sizeof(float));
	v1_loss(m, mask, B, T, 1, 1.0 / D, beta, nmask, m->gB, out);

	/* backward: head, final LayerNorm, blocks */
	{
		float *dh = m->gdec, *dlast = m->gdec2;
		size_t nD = TEN(B) * T * D;

		memset(dh, 0, nD * sizeof(float));
		o->matmul_backward(dh, Gr + m->lay.head_w, Gr + m->lay.head_b,
		    m->gB, m->hn, P + m->lay.head_w, B * T, D, D);
		memset(dlast, 0, nD * sizeof(float));
		o->layernorm_backward(dlast, Gr + m->lay.norm_w, Gr + m->lay.norm_b,
		    dh, a->out[m->nb - 1], m->hm, m->hs, P + m->lay.norm_w, B * T,
		    D);
		encoder_v1_backward(m, a, dlast, dh);
		a->drop = 0;
		/* x_in rows: CLS, mask token or the patch embedding */
		memset(m->dtok, 0, TEN(B) * N * D * sizeof(float));
		for (int b = 0; b < B; b++) {
			const float *row = dh + TEN(b) * T * D;

			for (int d = 0; d < D; d++)
				Gr[m->lay.cls + d] += row[d];
			for (int n = 0; n < N; n++) {
				const float *g = row + TEN(1 + n) * D;
				float *dst = mask[TEN(b) * N + n] ? Gr + m->lay.mask_tok :
				    m->dtok + (TEN(b) * N + n) * D;

				for (int d = 0; d < D; d++)
					dst[d] += g[d];
			}
		}
		o->matmul_backward(NULL, Gr + m->lay.patch_w, Gr + m->lay.patch_b,
		    m->dtok, m->pix, P + m->lay.patch_w, B * N,
		    c->channels * c->patch * c->patch, D);
	}
	return 0;
}

/* ---- data2vec (v1), audio and text: post-LN blocks, whole sequence ---- */

void
d2v_model_set_student_ids(d2v_model *m, const int32_t *xm)
{
	m->xm = xm;
}

/*
 * One v1 step of audio or text (DATA2VEC.md §§1.1, 7.1, 8.1).  Teacher:
 * the student's unmasked features (audio; through the shared position
 * encoder) or the unmasked ids re-embedded without dropout (text), its own
 * blocks, FFN targets.  Student: audio frames under the mask replaced by
 * mask_emb, then the position encoder and the context LayerNorm; text
 * m->xm (x_masked) embedded; every block over the whole sequence; the
 * head (final_proj, or the two-layer regression head) at every position;
 * loss_scale times L2 or Smooth-L1 summed over channels, the mean over the
 * positions where mask is 1.
 */
static int
step_v1_seq(d2v_model *m, const void *x, const uint8_t *mask,
    const float *y, int B, uint64_t rng_seed, d2v_step_out *out, d2v_err *err)
{
	const d2v_config *c = &m->cfg;
	const d2v_ops *o = m->ops;
	const d2v_layout *l = &m->lay;
	int N = m->N, D = m->D, BN = B * N, text = is_text(m), rc;
	int edrop = text && c->embed_dropout > 0;
	double s = c->loss_scale > 0 ? c->loss_scale : 1.0 / sqrt((double)D);
	long nmask = 0;
	float *P = m->params, *Gr = m->grads;
	d2v_enc_acts *a = &m->st;
	const void *xs = text && m->xm != NULL ? (const void *)m->xm : x;
	const float *h;
	size_t nD = TEN(BN) * D;

	for (int i = 0; i < BN; i++)
		nmask += mask[i] != 0;
	if (nmask == 0)
		return d2v_err_set(err, D2V_EINVAL, "no masked %s in the batch",
		    text ? "token" : "frame");
	if ((rc = step_alloc(m, B, N, err)) < 0)
		return rc;
	if (y != NULL) {
		memcpy(m->y, y, nD * sizeof(float));
	} else {
		local_forward(m, P, x, B, 0);
		teacher_forward(m, m->teacher, x, B);
		make_targets(m, B, m->y, NULL);
	}

	/* student input x_in (B,N,D) */
	if (edrop)
		fill_drop(m->drop_emb, B, TEN(N) * D, c->embed_dropout, 0,
		    rng_seed, 0xe0, (uint64_t)(m->row0 / c->clone));
	if (text || y != NULL)
		local_forward(m, P, xs, B, edrop);
	if (text) {
		memcpy(a->x_in, m->tok, nD * sizeof(float));
	} else {
#pragma omp parallel for schedule(static)
		for (int i = 0; i < BN; i++)
			memcpy(m->spos.z + TEN(i) * D, mask[i] ? P + l->mask_tok :
			    m->tok + TEN(i) * D, TEN(D) * sizeof(float));
		pos_forward(m, P, &m->spos, B, a->x_in);
	}
	a->drop = has_dropout(c);
	if (a->drop)
		make_dropout(m, a, rng_seed);
	encoder_forward(m, P, a);
	h = a->out[m->nb - 1];
	if (text) {
		o->matmul_forward(m->ph, h, P + l->head_w, P + l->head_b, BN, D,
		    2 * D);
		o->gelu_forward(m->pg, m->ph, 2 * nD);
		o->matmul_forward(m->pred, m->pg, P + l->head2_w, P + l->head2_b,
		    BN, 2 * D, D);
	} else {
		o->matmul_forward(m->pred, h, P + l->head_w, P + l->head_b, BN, D,
		    D);
	}

	/* the loss and its gradient dp (B,N,D) */
	memset(Gr, 0, l->total * sizeof(float));
	v1_loss(m, mask, B, N, 0, s, c->loss_beta, nmask, m->gdec2, out);

	/* backward: the head into gB, the blocks into gdec */
	memset(m->gB, 0, nD * sizeof(float));
	if (text) {
		memset(m->gA, 0, 2 * nD * sizeof(float));
		o->matmul_backward(m->gA, Gr + l->head2_w, Gr + l->head2_b,
		    m->gdec2, m->pg, P + l->head2_w, BN, 2 * D, D);
		memset(m->gC, 0, 2 * nD * sizeof(float));
		o->gelu_backward(m->gC, m->ph, m->gA, 2 * nD);
		o->matmul_backward(m->gB, Gr + l->head_w, Gr + l->head_b, m->gC, h,
		    P + l->head_w, BN, D, 2 * D);
	} else {
		o->matmul_backward(m->gB, Gr + l->head_w, Gr + l->head_b, m->gdec2,
		    h, P + l->head_w, BN, D, D);
	}
	encoder_backward(m, a, m->gB, m->gdec);
	a->drop = 0;
	if (text) {
		memcpy(m->dtok, m->gdec, nD * sizeof(float));
		text_local_backward(m, xs, m->dtok, B, edrop);
		return 0;
	}
	/* x_in = z + pos(z): dz in gB; masked frames are mask_emb */
	memcpy(m->gdec2, m->gdec, nD * sizeof(float));
	pos_backward(m, &m->spos, B, m->gdec2, m->gB);
	for (int i = 0; i < BN; i++) {
		float *dt = m->dtok + TEN(i) * D;
		const float *src = m->gB + TEN(i) * D;

		if (!mask[i]) {
			memcpy(dt, src, TEN(D) * sizeof(float));
			continue;
		}
		memset(dt, 0, TEN(D) * sizeof(float));
		for (int d = 0; d < D; d++)
			Gr[l->mask_tok + d] += src[d];
	}
	audio_local_backward(m, m->wav, m->dtok, B);
	return 0;
}
