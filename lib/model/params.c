/* params.c - see params.h. */
#include "params.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

static size_t
add(d2v_layout *l, int rank, const int64_t *shape, const char *fmt, ...)
{
	d2v_param *p = &l->p[l->count++];
	va_list ap;
	size_t n = 1;

	va_start(ap, fmt);
	vsnprintf(p->name, sizeof p->name, fmt, ap);
	va_end(ap);
	p->rank = rank;
	for (int i = 0; i < rank; i++) {
		p->shape[i] = shape[i];
		n *= (size_t)shape[i];
	}
	p->offset = l->total;
	p->size = n;
	p->decay = rank > 1 && strcmp(p->name + strlen(p->name) -
	    (strlen(p->name) >= 5 ? 5 : 0), ".bias") != 0 &&
	    strcmp(p->name, "alibi_scale") != 0;
	l->total += n;
	return p->offset;
}

#define S(...) ((const int64_t[]){__VA_ARGS__})

/* Marks the entries before teacher_end as the teacher's. */
static int
teacher_flags(d2v_layout *l)
{
	for (int i = 0; i < l->count; i++)
		l->p[i].teacher = l->p[i].offset < l->teacher_end;
	return 0;
}

/* Block i's attention (qkv, proj), MLP (fc1, fc2) and LayerNorm k. */
static void
add_attn(d2v_layout *l, d2v_block_off *b, int i, int D)
{
	b->qkv_w = add(l, 2, S(3 * D, D), "blocks.%d.attn.qkv.weight", i);
	b->qkv_b = add(l, 1, S(3 * D), "blocks.%d.attn.qkv.bias", i);
	b->proj_w = add(l, 2, S(D, D), "blocks.%d.attn.proj.weight", i);
	b->proj_b = add(l, 1, S(D), "blocks.%d.attn.proj.bias", i);
}

static void
add_mlp(d2v_layout *l, d2v_block_off *b, int i, int D, int F)
{
	b->fc1_w = add(l, 2, S(F, D), "blocks.%d.mlp.fc1.weight", i);
	b->fc1_b = add(l, 1, S(F), "blocks.%d.mlp.fc1.bias", i);
	b->fc2_w = add(l, 2, S(D, F), "blocks.%d.mlp.fc2.weight", i);
	b->fc2_b = add(l, 1, S(D), "blocks.%d.mlp.fc2.bias", i);
}

static void
add_norm(d2v_layout *l, size_t *w, size_t *b, int D, int i, int k)
{
	*w = add(l, 1, S(D), "blocks.%d.norm%d.weight", i, k);
	*b = add(l, 1, S(D), "blocks.%d.norm%d.bias", i, k);
}

const int d2v_conv_kernel[D2V_CONV_LAYERS] = {10, 3, 3, 3, 3, 2, 2};
const int d2v_conv_stride[D2V_CONV_LAYERS] = {5, 2, 2, 2, 2, 2, 2};

int
d2v_layout_init(d2v_layout *l, const d2v_config *c, d2v_err *err)
{
	int nb = c->prenet_depth + c->depth, D = c->dim, F = c->mlp_dim;
	int Dd = c->decoder_dim, G = c->decoder_groups, k = c->decoder_kernel;
	int image = d2v_config_is_image(c), audio = !strcmp(c->modality, "audio");
	int v1 = d2v_config_is_v1(c), text = !image && !audio;
	int npos = audio ? c->pos_conv_depth : 0;
	int max = 8 + 3 * D2V_CONV_LAYERS + 6 + 2 * npos + 14 * nb +
	    2 * c->decoder_layers + 8;

	memset(l, 0, sizeof *l);
	l->p = calloc((size_t)max, sizeof *l->p);
	l->blocks = calloc((size_t)nb, sizeof *l->blocks);
	l->dec_w = calloc((size_t)c->decoder_layers, sizeof *l->dec_w);
	l->dec_b = calloc((size_t)c->decoder_layers, sizeof *l->dec_b);
	l->pos_w = calloc((size_t)npos + 1, sizeof *l->pos_w);
	l->pos_b = calloc((size_t)npos + 1, sizeof *l->pos_b);
	if (!l->p || !l->blocks || !l->dec_w || !l->dec_b || !l->pos_w ||
	    !l->pos_b) {
		d2v_layout_free(l);
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	}
	if (image) {
		l->patch_w = add(l, 4, S(D, c->channels, c->patch, c->patch),
		    "patch_embed.weight");
		l->patch_b = add(l, 1, S(D), "patch_embed.bias");
		l->cls = add(l, 3, S(1, 1, D), "cls_token");
		if (v1)
			l->mask_tok = add(l, 3, S(1, 1, D), "mask_token");
		l->teacher_begin = 0;   /* the image teacher re-embeds */
	} else if (audio) {
		int C = c->conv_dim;

		for (int i = 0; i < D2V_CONV_LAYERS; i++) {
			l->conv_w[i] = add(l, 3, S(C, i ? C : 1, d2v_conv_kernel[i]),
			    "feature_extractor.conv_layers.%d.conv.weight", i);
			l->conv_nw[i] = add(l, 1, S(C),
			    "feature_extractor.conv_layers.%d.norm.weight", i);
			l->conv_nb[i] = add(l, 1, S(C),
			    "feature_extractor.conv_layers.%d.norm.bias", i);
		}
		l->fnorm_w = add(l, 1, S(C), "feature_norm.weight");
		l->fnorm_b = add(l, 1, S(C), "feature_norm.bias");
		l->fproj_w = add(l, 2, S(D, C), "feature_proj.weight");
		l->fproj_b = add(l, 1, S(D), "feature_proj.bias");
		/* v2: the teacher has its own position encoder; v1 shares it
		 * (fairseq's skip_keys, DATA2VEC.md §5.2) */
		if (!v1)
			l->teacher_begin = l->total;
		for (int j = 0; j < npos; j++) {
			l->pos_w[j] = add(l, 3, S(D, D / c->pos_conv_groups,
			    c->pos_conv_kernel), "pos_conv.%d.weight", j);
			l->pos_b[j] = add(l, 1, S(D), "pos_conv.%d.bias", j);
		}
		if (v1)
			l->teacher_begin = l->total;
		if (c->alibi)
			l->alibi = add(l, 5, S(1, 1, c->heads, 1, 1), "alibi_scale");
	} else {
		l->emb_tok = add(l, 2, S(c->vocab, D), "embed_tokens.weight");
		l->emb_pos = add(l, 2, S(c->max_positions + 2, D),
		    "embed_positions.weight");
		l->emb_nw = add(l, 1, S(D), "embed_norm.weight");
		l->emb_nb = add(l, 1, S(D), "embed_norm.bias");
		l->teacher_begin = l->total;
	}
	/* the context LayerNorm: images and audio always, text with a prenet
	 * (DATA2VEC.md §2.3); in v1 audio only (the LayerNorm after the
	 * position encoder; BEiT is pre-LN) */
	l->has_ctx = v1 ? audio : image || audio || c->prenet_depth > 0;
	if (l->has_ctx) {
		l->ctx_w = add(l, 1, S(D), "context_norm.weight");
		l->ctx_b = add(l, 1, S(D), "context_norm.bias");
	}
	for (int i = 0; i < nb && v1 && image; i++) {
		/* pre-LN with LayerScale, BEiT's names and order */
		d2v_block_off *b = &l->blocks[i];

		add_norm(l, &b->norm1_w, &b->norm1_b, D, i, 1);
		add_attn(l, b, i, D);
		b->gamma1 = add(l, 1, S(D), "blocks.%d.gamma_1", i);
		add_norm(l, &b->norm2_w, &b->norm2_b, D, i, 2);
		add_mlp(l, b, i, D, F);
		b->gamma2 = add(l, 1, S(D), "blocks.%d.gamma_2", i);
	}
	if (v1 && image) {
		/* the whole model is the teacher's (BEiT's EMA of everything) */
		l->norm_w = add(l, 1, S(D), "norm.weight");
		l->norm_b = add(l, 1, S(D), "norm.bias");
		l->head_w = add(l, 2, S(D, D), "head.weight");
		l->head_b = add(l, 1, S(D), "head.bias");
		l->teacher_end = l->total;
		return teacher_flags(l);
	}
	for (int i = 0; i < nb; i++) {
		/* post-LN (AltBlock) */
		d2v_block_off *b = &l->blocks[i];

		add_attn(l, b, i, D);
		add_norm(l, &b->norm1_w, &b->norm1_b, D, i, 1);
		add_mlp(l, b, i, D, F);
		add_norm(l, &b->norm2_w, &b->norm2_b, D, i, 2);
	}
	l->teacher_end = l->total;
	if (v1 && audio) {
		/* student only: the mask vector, final_proj */
		l->mask_tok = add(l, 1, S(D), "mask_emb");
		l->head_w = add(l, 2, S(D, D), "final_proj.weight");
		l->head_b = add(l, 1, S(D), "final_proj.bias");
		return teacher_flags(l);
	}
	if (v1 && text) {
		/* the regression head, fairseq's Sequential numbering */
		l->head_w = add(l, 2, S(2 * D, D), "regression_head.0.weight");
		l->head_b = add(l, 1, S(2 * D), "regression_head.0.bias");
		l->head2_w = add(l, 2, S(D, 2 * D), "regression_head.2.weight");
		l->head2_b = add(l, 1, S(D), "regression_head.2.bias");
		return teacher_flags(l);
	}
	for (int j = 0; j < c->decoder_layers; j++) {
		int cin = j == 0 ? D : Dd;

		if (image)
			l->dec_w[j] = add(l, 4, S(Dd, cin / G, k, k),
			    "decoder.layers.%d.conv.weight", j);
		else
			l->dec_w[j] = add(l, 3, S(Dd, cin / G, k),
			    "decoder.layers.%d.conv.weight", j);
		l->dec_b[j] = add(l, 1, S(Dd), "decoder.layers.%d.conv.bias", j);
	}
	if (c->decoder_proj_layers == 2) {
		l->dproj_w = add(l, 2, S(2 * Dd, Dd), "decoder.proj.0.weight");
		l->dproj_b = add(l, 1, S(2 * Dd), "decoder.proj.0.bias");
		l->dproj2_w = add(l, 2, S(D, 2 * Dd), "decoder.proj.1.weight");
		l->dproj2_b = add(l, 1, S(D), "decoder.proj.1.bias");
	} else {
		l->dproj_w = add(l, 2, S(D, Dd), "decoder.proj.weight");
		l->dproj_b = add(l, 1, S(D), "decoder.proj.bias");
	}
	return teacher_flags(l);
}

void
d2v_layout_free(d2v_layout *l)
{
	free(l->p);
	free(l->blocks);
	free(l->dec_w);
	free(l->dec_b);
	free(l->pos_w);
	free(l->pos_b);
	memset(l, 0, sizeof *l);
}

const d2v_param *
d2v_layout_find(const d2v_layout *l, const char *name)
{
	for (int i = 0; i < l->count; i++)
		if (strcmp(l->p[i].name, name) == 0)
			return &l->p[i];
	return NULL;
}

static void
fill_normal(float *p, size_t n, double std, d2v_rng *r)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (float)(std * d2v_rng_normal(r));
}

static void
fill_uniform(float *p, size_t n, double bound, d2v_rng *r)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (float)((2 * d2v_rng_uniform(r) - 1) * bound);
}

/* N(0, std^2) truncated at one std (BEiT's trunc_normal_ with a = -std,
 * b = std), by rejection. */
static void
fill_trunc(float *p, size_t n, double std, d2v_rng *r)
{
	for (size_t i = 0; i < n; i++) {
		double z;

		do
			z = d2v_rng_normal(r);
		while (fabs(z) > 1);
		p[i] = (float)(std * z);
	}
}

/* The v1 (BEiT) initialisation. */
static void
init_v1(const d2v_layout *l, const d2v_config *c, float *params,
    uint64_t seed)
{
	for (int i = 0; i < l->count; i++) {
		const d2v_param *p = &l->p[i];
		float *w = params + p->offset;
		const char *n = p->name;
		size_t len = strlen(n);
		d2v_rng r;
		int blk;

		d2v_rng_seed(&r, seed, 0x9a7a, (uint64_t)i);
		if (strstr(n, ".gamma_") != NULL) {
			for (size_t k = 0; k < p->size; k++)
				w[k] = (float)c->layer_scale;
		} else if (strstr(n, "norm") != NULL && len > 7 &&
		    strcmp(n + len - 7, ".weight") == 0) {
			for (size_t k = 0; k < p->size; k++)
				w[k] = 1.0f;
		} else if (strstr(n, ".bias") != NULL) {
			/* zero */
		} else {
			fill_trunc(w, p->size, 0.02, &r);
			if (sscanf(n, "blocks.%d.", &blk) == 1 &&
			    (strstr(n, "attn.proj.weight") || strstr(n, "mlp.fc2.weight")))
				for (size_t k = 0; k < p->size; k++)
					w[k] /= (float)sqrt(2.0 * (blk + 1));
		}
	}
}

void
d2v_params_init(const d2v_layout *l, const d2v_config *c, float *params,
    uint64_t seed)
{
	memset(params, 0, l->total * sizeof *params);
	if (d2v_config_is_v1(c) && d2v_config_is_image(c)) {
		init_v1(l, c, params, seed);
		return;
	}
	for (int i = 0; i < l->count; i++) {
		const d2v_param *p = &l->p[i];
		float *w = params + p->offset;
		const char *n = p->name;
		size_t len = strlen(n);
		d2v_rng r;

		d2v_rng_seed(&r, seed, 0x9a7a, (uint64_t)i);
		if (strcmp(n, "patch_embed.weight") == 0) {
			double fan_in = (double)(p->size / (size_t)p->shape[0]);
			double fan_out = (double)p->shape[0];

			fill_uniform(w, p->size, sqrt(6.0 / (fan_in + fan_out)), &r);
		} else if (strcmp(n, "patch_embed.bias") == 0) {
			/* Conv2d default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) */
			fill_uniform(w, p->size, 1.0 / sqrt((double)(c->channels *
			    c->patch * c->patch)), &r);
		} else if (strcmp(n, "cls_token") == 0) {
			fill_normal(w, p->size, 1.0, &r);
		} else if (strcmp(n, "mask_emb") == 0) {
			/* fairseq: uniform_() */
			for (size_t k = 0; k < p->size; k++)
				w[k] = (float)d2v_rng_uniform(&r);
		} else if (strcmp(n, "alibi_scale") == 0) {
			for (size_t k = 0; k < p->size; k++)
				w[k] = 1.0f;
		} else if (strstr(n, "feature_extractor.") == n &&
		    strstr(n, ".conv.weight") != NULL) {
			/* kaiming_normal_: std sqrt(2 / fan_in) */
			fill_normal(w, p->size, sqrt(2.0 / (double)(p->size /
			    (size_t)p->shape[0])), &r);
		} else if (strcmp(n, "embed_positions.weight") == 0) {
			/* rows 0 and 1 (the pad row) are never used: zero */
			fill_normal(w + 2 * p->shape[1], p->size - 2 *
			    (size_t)p->shape[1], 0.02, &r);
		} else if (!d2v_config_is_image(c) &&
		    strncmp(n, "decoder.proj.", 13) == 0 &&
		    !strcmp(c->modality, "text")) {
			/* text keeps init_bert_params on its projection */
			if (strstr(n, ".bias") == NULL)
				fill_normal(w, p->size, 0.02, &r);
		} else if (strncmp(n, "decoder.", 8) == 0 ||
		    strncmp(n, "feature_proj.", 13) == 0 ||
		    strncmp(n, "final_proj.", 11) == 0 ||
		    strncmp(n, "pos_conv.", 9) == 0) {
			/* PyTorch defaults: kaiming_uniform(a=sqrt(5)) gives
			 * U(+-1/sqrt(fan_in)) for weight and bias alike. */
			const d2v_param *wp = strstr(n, ".bias") ? p - 1 : p;
			double fan_in = (double)(wp->size / (size_t)wp->shape[0]);

			fill_uniform(w, p->size, 1.0 / sqrt(fan_in), &r);
		} else if (len > 7 && strstr(n, "norm") != NULL &&
		    strcmp(n + len - 7, ".weight") == 0) {
			for (size_t k = 0; k < p->size; k++)
				w[k] = 1.0f;
		} else if (strstr(n, ".bias") != NULL) {
			/* zero (init_bert_params, LayerNorm bias) */
		} else {
			fill_normal(w, p->size, 0.02, &r);
		}
	}
}
