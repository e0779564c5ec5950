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
	o->release(m->keep); o->release(m->mask); o->release(m->every);
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
	o->release(m->ids);
	o->release(m->pg);
	o->release(m->hn); o->release(m->hm); o->release(m->hs);
	m->hn = m->hm = m->hs = NULL;
	m->fm = m->fs = m->fl = m->gslope = m->wav = NULL;
	m->esum = m->em = m->es = m->eln = m->drop_emb = m->drop_in = NULL;
	m->ids = NULL;
	m->ph = m->pg = NULL;
	m->pix = m->tok = m->dtok = m->y = m->ycls = m->dec_in = NULL;
	m->dc = m->dm = m->ds = m->dl = m->dout = NULL;
	m->pred = m->col = m->dcol = NULL;
	m->gA = m->gB = m->gC = m->gF = m->gF2 = m->gQKV = NULL;
	m->gdec = m->gdec2 = NULL;
	m->keep = NULL;
	m->mask = NULL;
	m->every = NULL;
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
	m->ops->copy(m->teacher, m->params, m->lay.teacher_end * sizeof(float));
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
		m->ids = o->alloc(BN * sizeof(int32_t));
		bad |= !m->esum || !m->em || !m->es || !m->eln ||
		    !m->drop_emb || !m->ids;
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
	m->mask = o->alloc(RN);
	m->every = o->alloc(BN * sizeof(int));
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
	if (bad || !m->tok || !m->dtok || !m->keep || !m->mask || !m->every ||
	    !m->y || !m->ycls ||
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
	/* every position of each sample, for the gathers of whole rows */
	for (int b = 0; b < B; b++)
		for (int n = 0; n < N; n++)
			m->every[TEN(b) * N + n] = n;
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
	m->ops->add_bcast(tok, m->sincos, B, TEN(N) * D);
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
	m->ops->zero(tmp, n * sizeof(float));
	o->matmul_backward(tmp, G + l->fproj_w, G + l->fproj_b, dtok, m->fl,
	    P + l->fproj_w, B * N, C, m->D);
	m->ops->zero(cur, n * sizeof(float));
	o->layernorm_backward(cur, G + l->fnorm_w, G + l->fnorm_b, tmp,
	    m->cg[D2V_CONV_LAYERS - 1], m->fm, m->fs, P + l->fnorm_w, B * N, C);
	/* cur: gradient of the last GELU output */
	for (int i = D2V_CONV_LAYERS - 1; i >= 0; i--) {
		int rows = B * m->ct[i + 1];

		n = TEN(rows) * C;
		m->ops->zero(tmp, n * sizeof(float));
		o->gelu_backward(tmp, m->cl[i], cur, n);
		m->ops->zero(cur, n * sizeof(float));
		o->layernorm_backward(cur, G + l->conv_nw[i], G + l->conv_nb[i],
		    tmp, m->cv[i], m->cm[i], m->cs[i], P + l->conv_nw[i], rows, C);
		/* cur: gradient of conv i's output; tmp gets its input's */
		if (i > 0)
			m->ops->zero(tmp,
			    TEN(B) * m->ct[i] * C * sizeof(float));
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

	/* the token's row plus its position's (rows 2 .. N+1) */
	m->ops->copy(m->ids, ids, TEN(B) * N * sizeof(int32_t));
	m->ops->gather_rows(m->esum, P + l->emb_tok, m->ids, B * N, D);
	m->ops->add_bcast(m->esum, P + l->emb_pos + 2 * TEN(D), B, TEN(N) * D);
	m->ops->layernorm_forward(m->eln, m->em, m->es, m->esum,
	    P + l->emb_nw, P + l->emb_nb, B * N, D, (float)m->cfg.norm_eps);
	m->ops->copy(m->tok, m->eln, TEN(B) * N * D * sizeof(float));
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
	m->ops->zero(de, TEN(B) * N * D * sizeof(float));
	m->ops->layernorm_backward(de, G + l->emb_nw, G + l->emb_nb, dtok,
	    m->esum, m->em, m->es, m->params + l->emb_nw, B * N, D);
	m->ops->copy(m->ids, ids, TEN(B) * N * sizeof(int32_t));
	m->ops->scatter_rows(G + l->emb_tok, de, m->ids, B * N, D);
	for (int b = 0; b < B; b++)
		m->ops->add(G + l->emb_pos + 2 * TEN(D), de + TEN(b) * N * D,
		    TEN(N) * D);
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
	m->ops->copy(out, p->z, n * sizeof(float));
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

	m->ops->copy(dz, dout, n * sizeof(float));
	if (c->pos_conv_depth == 0)
		return;
	m->ops->copy(cur, dout, n * sizeof(float));
	for (int j = c->pos_conv_depth - 1; j >= 0; j--) {
		m->ops->zero(m->gA, n * sizeof(float));
		o->gelu_backward(m->gA, p->l[j], cur, n);
		m->ops->zero(m->gC, n * sizeof(float));
		o->layernorm_backward(m->gC, NULL, NULL, m->gA, p->c[j], p->m[j],
		    p->s[j], NULL, R * N, D);
		if (j > 0)
			m->ops->zero(nxt, n * sizeof(float));
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

	m->ops->zero(m->gA, TEN(RT) * D * sizeof(float));
	o->matmul_backward(m->gA, G + b->proj_w, G + b->proj_b, dproj, a->att[l],
	    P + b->proj_w, RT, D, D);
	m->ops->zero(m->gQKV, TEN(RT) * 3 * D * sizeof(float));
	o->attention_backward(m->gQKV, gsl, m->gA, a->qkv[l], a->probs[l],
	    a->drop ? a->drop_att[l] : NULL, gsl ? a->pos : NULL, a->R, a->T, D,
	    m->H);
	o->matmul_backward(din, G + b->qkv_w, G + b->qkv_b, m->gQKV, in,
	    P + b->qkv_w, RT, D, 3 * D);
	/* The key bias adds q.b_k to every score of a row, which the softmax
	 * cancels: its gradient is exactly zero.  Computed, it is float
	 * rounding noise, which Adam would blow up into full steps of size
	 * lr; keep it exact. */
	m->ops->zero(G + b->qkv_b + D, TEN(D) * sizeof(float));
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

	m->ops->zero(m->gF, TEN(RT) * F * sizeof(float));
	o->matmul_backward(m->gF, G + b->fc2_w, G + b->fc2_b, df, a->g[l],
	    P + b->fc2_w, RT, F, D);
	if (a->drop)
		o->mul(m->gF, a->drop_act[l], TEN(RT) * F);
	m->ops->zero(m->gF2, TEN(RT) * F * sizeof(float));
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
		m->ops->copy(a->x0, a->x_in, TEN(RT) * D * sizeof(float));
	if (a->drop && m->cfg.context_dropout > 0)
		o->mul(a->x0, a->drop_ctx, TEN(RT) * D);
	for (int l = 0; l < m->nb; l++) {
		const d2v_block_off *b = &m->lay.blocks[l];

		if (a->drop && a->skip[l]) {
			/* layerdrop: the block is the identity this pass */
			m->ops->copy(a->out[l], x, TEN(RT) * D * sizeof(float));
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
			m->ops->copy(a->x2[l], a->f[l],
			    TEN(RT) * D * sizeof(float));
			o->mul(a->x2[l], a->drop_f[l], TEN(RT) * D);
			o->add(a->x2[l], a->r[l], TEN(RT) * D);
		} else {
			m->ops->copy(a->x2[l], a->r[l],
			    TEN(RT) * D * sizeof(float));
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
		m->ops->zero(gsl, TEN(m->H) * sizeof(float));
	for (int l = m->nb - 1; l >= 0; l--) {
		const d2v_block_off *b = &m->lay.blocks[l];
		const float *xin = l > 0 ? a->out[l - 1] : a->x0;

		if (a->drop && a->skip[l])
			continue; /* identity: dout passes through */
		/* out = LN2(x2), x2 = r + f */
		m->ops->zero(d_x2, nD * sizeof(float));
		o->layernorm_backward(d_x2, G + b->norm2_w, G + b->norm2_b, dout,
		    a->x2[l], a->m2[l], a->s2[l], P + b->norm2_w, RT, D);
		/* x2 = r + drop_f * fc2(drop_act * gelu(fc1(r))): d_r = d_x2 +
		 * the MLP's */
		m->ops->copy(df, d_x2, nD * sizeof(float));
		if (a->drop)
			o->mul(df, a->drop_f[l], nD);
		mlp_backward(m, a, l, a->r[l], df, d_x2);
		/* r = LN1(x1) */
		m->ops->zero(dout, nD * sizeof(float));
		o->layernorm_backward(dout, G + b->norm1_w, G + b->norm1_b, d_x2,
		    a->x1[l], a->m1[l], a->s1[l], P + b->norm1_w, RT, D);
		/* x1 = x + drop_ao * proj(att): dout holds d_x1 = d_x (the
		 * residual), the attention's is added */
		m->ops->copy(d_x2, dout, nD * sizeof(float));
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
		m->ops->zero(dx, nD * sizeof(float));
		o->layernorm_backward(dx, G + m->lay.ctx_w, G + m->lay.ctx_b, dout,
		    a->x_in, a->ctx_mean, a->ctx_rstd, P + m->lay.ctx_w, RT, D);
	} else {
		m->ops->copy(dx, dout, nD * sizeof(float));
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
		m->ops->copy(m->wav, x, TEN(B) * m->len * sizeof(float));
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
		m->ops->gather_tokens(a->x_in, m->tok, m->every, P + m->lay.cls,
		    B, 1, N, N, 1, D);
	} else if (is_audio(m)) {
		m->ops->copy(m->tpos.z, m->tok, TEN(B) * N * D * sizeof(float));
		pos_forward(m, P, &m->tpos, B, a->x_in);
	} else {
		m->ops->copy(a->x_in, m->tok, TEN(B) * N * D * sizeof(float));
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
	const d2v_ops *o = m->ops;
	d2v_enc_acts *a = &m->te;
	int N = m->N, D = m->D, K = c->top_k, E = m->E;
	int ln = strcmp(c->target_layer_norm, "ln") == 0;
	float *tmp = m->gA; /* (B,N,D) scratch */
	size_t n = TEN(B) * N * D;

	o->zero(y, n * sizeof(float));
	for (int k = 0; k < K; k++) {
		int l = m->nb - K + k;
		const float *f = is_v1_image(m) ? a->out[l] : a->f[l];

		if (E)
			for (int b = 0; b < B; b++)
				o->copy(tmp + TEN(b) * N * D,
				    f + (TEN(b) * (N + E) + E) * D,
				    TEN(N) * D * sizeof(float));
		else
			o->copy(tmp, f, n * sizeof(float));
		if (!ln) {
			o->instancenorm_forward(y, tmp, B, N, D, 1e-5f, 1,
			    1.0f / (float)K);
			continue;
		}
		o->layernorm_forward(tmp, NULL, NULL, tmp, NULL, NULL, B * N, D,
		    1e-5f);
		o->scale(tmp, n, 1.0f / (float)K);
		o->add(y, tmp, n);
	}
	if (strcmp(c->target_final_norm, "ln") == 0)
		o->layernorm_forward(y, NULL, NULL, y, NULL, NULL, B * N, D,
		    1e-5f);
	else if (strcmp(c->target_final_norm, "in") == 0)
		o->instancenorm_forward(y, y, B, N, D, 1e-5f, 0, 1.0f);
	if (ycls != NULL && E && !d2v_config_is_v1(c))
		o->mean_tokens(ycls, y, B, N, D);
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
	m->ops->copy(y, m->y, TEN(B) * m->N * m->D * sizeof(float));
	if (ycls != NULL && m->E && !is_v1_image(m))
		m->ops->copy(ycls, m->ycls, TEN(B) * m->D * sizeof(float));
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
	m->ops->copy(out, m->te.out[layer], TEN(B) * (m->N + m->E) * m->D *
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
		m->ops->drop_fill(a->drop_att[l], R * H, TEN(T) * T,
		    c->attention_dropout,
		    0, seed, k, r0 * (uint64_t)H);
		m->ops->drop_fill(a->drop_ao[l], R, TEN(T) * D,
		    c->encoder_dropout, dp,
		    seed, k + 1, r0);
		m->ops->drop_fill(a->drop_act[l], R, TEN(T) * F,
		    c->activation_dropout, 0,
		    seed, k + 2, r0);
		/* activation dropout after fc2 and the post-MLP dropout stack */
		{
			double p1 = c->activation_dropout, p2 = c->post_mlp_drop;
			double p = 1 - (1 - p1) * (1 - p2);

			m->ops->drop_fill(a->drop_f[l], R, TEN(T) * D, p, dp,
			    seed, k + 3,
			    r0);
		}
	}
	m->ops->drop_fill(a->drop_ctx, R, TEN(T) * D, c->context_dropout, 0,
	    seed, 0xc0,
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

	m->ops->zero(dprev, n * sizeof(float));
	if (c->decoder_proj_layers == 2) {
		m->ops->zero(m->gA, 2 * n * sizeof(float));
		o->matmul_backward(m->gA, Gr + m->lay.dproj2_w, Gr + m->lay.dproj2_b,
		    dcur, m->pg, P + m->lay.dproj2_w, R * N, 2 * Dd, D);
		m->ops->zero(m->gC, 2 * n * sizeof(float));
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

		m->ops->zero(dl, n * sizeof(float));
		o->gelu_backward(dl, m->dl[j], dprev, n);
		m->ops->zero(dc, n * sizeof(float));
		o->layernorm_backward(dc, NULL, NULL, dl, m->dc[j], m->dm[j],
		    m->ds[j], NULL, R * N, Dd);
		/* gradient of the layer input: residual part first */
		if (c->decoder_residual && cin == Dd)
			m->ops->copy(dcur, dprev, n * sizeof(float));
		else
			m->ops->zero(dcur, TEN(R) * N * cin * sizeof(float));
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
	o->copy(m->mask, mask, TEN(R) * N);
	for (int r = 0; r < R; r++) {
		int j = 0;

		for (int n = 0; n < N; n++)
			if (mask[TEN(r) * N + n] == 0)
				m->keep[TEN(r) * V + j++] = n;
	}

	/* the student's local encoder first: audio and text teachers read it */
	if (edrop)
		m->ops->drop_fill(m->drop_emb, B, TEN(N) * D, c->embed_dropout,
		    0,
		    rng_seed, 0xe0, (uint64_t)(m->row0 / c->clone));
	if (!E)
		local_forward(m, P, x, B, edrop);
	/* targets: given, or from the EMA teacher */
	if (y != NULL) {
		m->ops->copy(m->y, y, TEN(B) * N * D * sizeof(float));
		if (E)
			m->ops->copy(m->ycls, ycls, TEN(B) * D * sizeof(float));
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
		float *xz = m->gdec;

		o->mask_tokens(m->spos.z, m->tok, m->mask, NULL, R, M, N, D);
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
		m->ops->drop_fill(m->drop_in, R, TEN(V) * D, c->input_dropout,
		    0, rng_seed,
		    0x1d, (uint64_t)m->row0);
	if (noise != NULL)
		o->copy(m->dec_in, noise, TEN(R) * N * D * sizeof(float));
	else
		o->noise_fill(m->dec_in, m->mask, R, N, D,
		    (float)c->mask_noise_std, rng_seed, (uint64_t)m->row0);
	o->place_tokens(m->dec_in, a->out[m->nb - 1], m->keep, m->drop_in, R,
	    N, V, E, D);
	decoder_forward(m, R);

	/* loss and its gradient at the predictions and the CLS outputs */
	o->zero(Gr, m->lay.total * sizeof(float));
	reg = o->masked_loss(m->gdec, m->pred, m->y, m->mask, R, M, N, N, 0, D,
	    s, 0, (double)norm) / norm;
	if (E)
		cls = o->masked_loss(m->gB, a->out[m->nb - 1], m->ycls, NULL, R,
		    M,
		    1, T, 0, D, c->cls_loss * s, 0, 1);
	else
		o->zero(m->gB, TEN(R) * T * D * sizeof(float));
	out->loss_reg = reg;
	out->loss_cls = cls;
	out->loss = reg + cls;
	out->n_masked = nmask;
	out->target_var = o->masked_std(m->y, NULL, B * N, 1, 1, 0, D);
	out->pred_var = o->masked_std(m->pred, m->mask, R, N, N, 0, D);

	/* backward: decoder, then back to the encoder output rows */
	{
		const float *ddec = decoder_backward(m, R);
		float *dh = m->gB;

		o->pick_tokens(dh, ddec, m->keep, m->drop_in, R, N, V, E, D);
		/* the encoder backward uses gA, gC, gF, gQKV as scratch; pass
		 * gB as dout and get d(x_in) in gdec */
		encoder_backward(m, a, dh, m->gdec);
		a->drop = 0;
	}
	/* x_in rows back to the local encoder output: dtok (B,N,D) */
	m->ops->zero(m->dtok, TEN(B) * N * D * sizeof(float));
	if (is_audio(m)) {
		float *dxz = m->gdec2, *dz = m->gB;

		m->ops->zero(dxz, TEN(R) * N * D * sizeof(float));
		o->scatter_tokens(dxz, NULL, m->gdec, m->keep, R, 1, N, V, 0, D);
		pos_backward(m, &m->spos, R, dxz, dz);
		/* the zeroed frames had no gradient */
		o->unmask_tokens(m->dtok, NULL, dz, m->mask, R, M, N, D);
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
	const d2v_ops *o = m->ops;
	int N = m->N, D = m->D;
	double norm = (double)loss_norm(m, nmask);

	out->loss = out->loss_reg = o->masked_loss(dp, m->pred, m->y, mask, B,
	    1, N, T, off, D, w, beta, norm) / norm;
	out->loss_cls = 0;
	out->n_masked = nmask;
	out->target_var = o->masked_std(m->y, NULL, B * N, 1, 1, 0, D);
	out->pred_var = o->masked_std(m->pred, mask, B, N, T, off, D);
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

	m->ops->copy(a->x0, a->x_in, nD * sizeof(float));
	for (int l = 0; l < m->nb; l++) {
		const d2v_block_off *b = &m->lay.blocks[l];

		o->layernorm_forward(a->r[l], a->m1[l], a->s1[l], x,
		    P + b->norm1_w, P + b->norm1_b, RT, D, eps);
		attn_forward(m, P, a, l, a->r[l], a->pa[l]);
		m->ops->copy(a->x1[l], x, nD * sizeof(float));
		o->layerscale_forward(a->x1[l], P + b->gamma1, a->pa[l],
		    a->drop ? a->drop_ao[l] : NULL, RT, D);
		o->layernorm_forward(a->x2[l], a->m2[l], a->s2[l], a->x1[l],
		    P + b->norm2_w, P + b->norm2_b, RT, D, eps);
		mlp_forward(m, P, a, l, a->x2[l]);
		m->ops->copy(a->out[l], a->x1[l], nD * sizeof(float));
		o->layerscale_forward(a->out[l], P + b->gamma2, a->f[l],
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
		o->layerscale_backward(t, G + b->gamma2, dout, P + b->gamma2,
		    a->f[l], a->drop ? a->drop_f[l] : NULL, RT, D);
		m->ops->zero(m->gB, nD * sizeof(float));
		mlp_backward(m, a, l, a->x2[l], t, m->gB);
		/* x2 = LN2(x1): add into d x1 */
		o->layernorm_backward(dout, G + b->norm2_w, G + b->norm2_b, m->gB,
		    a->x1[l], a->m2[l], a->s2[l], P + b->norm2_w, RT, D);
		/* x1 = x + g1 pa: dout is d x so far; t = d pa */
		o->layerscale_backward(t, G + b->gamma1, dout, P + b->gamma1,
		    a->pa[l], a->drop ? a->drop_ao[l] : NULL, RT, D);
		m->ops->zero(m->gB, nD * sizeof(float));
		attn_backward(m, a, l, a->r[l], t, m->gB);
		m->ops->copy(t, m->gB, nD * sizeof(float));
		o->layernorm_backward(dout, G + b->norm1_w, G + b->norm1_b, t, xin,
		    a->m1[l], a->s1[l], P + b->norm1_w, RT, D);
	}
	m->ops->copy(dx, dout, nD * sizeof(float));
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
	m->ops->gather_tokens(a->x_in, m->tok, m->every, P + m->lay.cls, B, 1,
	    N, N, 1, D);
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
	o->copy(m->mask, mask, TEN(B) * N);
	if (y != NULL) {
		m->ops->copy(m->y, y, TEN(B) * N * D * sizeof(float));
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
	{
		int K = c->channels * c->patch * c->patch;
		float *xt = m->gdec; /* (B,N,D) the tokens, CLS aside */

		o->matmul_forward(m->tok, m->pix, P + m->lay.patch_w,
		    P + m->lay.patch_b, B * N, K, D);
		o->mask_tokens(xt, m->tok, m->mask, P + m->lay.mask_tok, B, 1,
		    N,
		    D);
		o->add_bcast(xt, m->sincos, B, TEN(N) * D);
		o->gather_tokens(a->x_in, xt, m->every, P + m->lay.cls, B, 1, N,
		    N,
		    1, D);
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
	m->ops->zero(Gr, m->lay.total * sizeof(float));
	v1_loss(m, m->mask, B, T, 1, 1.0 / D, beta, nmask, m->gB, out);

	/* backward: head, final LayerNorm, blocks */
	{
		float *dh = m->gdec, *dlast = m->gdec2;
		size_t nD = TEN(B) * T * D;

		m->ops->zero(dh, nD * sizeof(float));
		o->matmul_backward(dh, Gr + m->lay.head_w, Gr + m->lay.head_b,
		    m->gB, m->hn, P + m->lay.head_w, B * T, D, D);
		m->ops->zero(dlast, nD * sizeof(float));
		o->layernorm_backward(dlast, Gr + m->lay.norm_w, Gr + m->lay.norm_b,
		    dh, a->out[m->nb - 1], m->hm, m->hs, P + m->lay.norm_w, B * T,
		    D);
		encoder_v1_backward(m, a, dlast, dh);
		a->drop = 0;
		/* x_in rows: CLS, mask token or the patch embedding (dlast,
		 * free again, holds the tokens' part) */
		o->zero(dlast, TEN(B) * N * D * sizeof(float));
		o->scatter_tokens(dlast, Gr + m->lay.cls, dh, m->every, B, 1, N,
		    N,
		    1, D);
		o->zero(m->dtok, TEN(B) * N * D * sizeof(float));
		o->unmask_tokens(m->dtok, Gr + m->lay.mask_tok, dlast, m->mask,
		    B,
		    1, N, D);
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
	o->copy(m->mask, mask, TEN(B) * N);
	if (y != NULL) {
		m->ops->copy(m->y, y, nD * sizeof(float));
	} else {
		local_forward(m, P, x, B, 0);
		teacher_forward(m, m->teacher, x, B);
		make_targets(m, B, m->y, NULL);
	}

	/* student input x_in (B,N,D) */
	if (edrop)
		m->ops->drop_fill(m->drop_emb, B, TEN(N) * D, c->embed_dropout,
		    0,
		    rng_seed, 0xe0, (uint64_t)(m->row0 / c->clone));
	if (text || y != NULL)
		local_forward(m, P, xs, B, edrop);
	if (text) {
		m->ops->copy(a->x_in, m->tok, nD * sizeof(float));
	} else {
		o->mask_tokens(m->spos.z, m->tok, m->mask, P + l->mask_tok, B,
		    1,
		    N, D);
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
	m->ops->zero(Gr, l->total * sizeof(float));
	v1_loss(m, m->mask, B, N, 0, s, c->loss_beta, nmask, m->gdec2, out);

	/* backward: the head into gB, the blocks into gdec */
	m->ops->zero(m->gB, nD * sizeof(float));
	if (text) {
		m->ops->zero(m->gA, 2 * nD * sizeof(float));
		o->matmul_backward(m->gA, Gr + l->head2_w, Gr + l->head2_b,
		    m->gdec2, m->pg, P + l->head2_w, BN, 2 * D, D);
		m->ops->zero(m->gC, 2 * nD * sizeof(float));
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
		m->ops->copy(m->dtok, m->gdec, nD * sizeof(float));
		text_local_backward(m, xs, m->dtok, B, edrop);
		return 0;
	}
	/* x_in = z + pos(z): dz in gB; masked frames are mask_emb */
	m->ops->copy(m->gdec2, m->gdec, nD * sizeof(float));
	pos_backward(m, &m->spos, B, m->gdec2, m->gB);
	o->zero(m->dtok, nD * sizeof(float));
	o->unmask_tokens(m->dtok, Gr + l->mask_tok, m->gB, m->mask, B, 1, N, D);
	audio_local_backward(m, m->wav, m->dtok, B);
	return 0;
}
