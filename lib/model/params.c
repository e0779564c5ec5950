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
	    (strlen(p->name) >= 5 ? 5 : 0), ".bias") != 0;
	p->teacher = strncmp(p->name, "decoder.", 8) != 0;
	l->total += n;
	return p->offset;
}

#define S(...) ((const int64_t[]){__VA_ARGS__})

int
d2v_layout_init(d2v_layout *l, const d2v_config *c, d2v_err *err)
{
	int nb = c->prenet_depth + c->depth, D = c->dim, F = c->mlp_dim;
	int Dd = c->decoder_dim, G = c->decoder_groups, k = c->decoder_kernel;
	int max = 6 + 12 * nb + 2 * c->decoder_layers + 2;

	memset(l, 0, sizeof *l);
	l->p = calloc((size_t)max, sizeof *l->p);
	l->blocks = calloc((size_t)nb, sizeof *l->blocks);
	l->dec_w = calloc((size_t)c->decoder_layers, sizeof *l->dec_w);
	l->dec_b = calloc((size_t)c->decoder_layers, sizeof *l->dec_b);
	if (!l->p || !l->blocks || !l->dec_w || !l->dec_b) {
		d2v_layout_free(l);
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	}
	l->patch_w = add(l, 4, S(D, c->channels, c->patch, c->patch),
	    "patch_embed.weight");
	l->patch_b = add(l, 1, S(D), "patch_embed.bias");
	l->cls = add(l, 3, S(1, 1, D), "cls_token");
	l->ctx_w = add(l, 1, S(D), "context_norm.weight");
	l->ctx_b = add(l, 1, S(D), "context_norm.bias");
	for (int i = 0; i < nb; i++) {
		d2v_block_off *b = &l->blocks[i];

		b->qkv_w = add(l, 2, S(3 * D, D), "blocks.%d.attn.qkv.weight", i);
		b->qkv_b = add(l, 1, S(3 * D), "blocks.%d.attn.qkv.bias", i);
		b->proj_w = add(l, 2, S(D, D), "blocks.%d.attn.proj.weight", i);
		b->proj_b = add(l, 1, S(D), "blocks.%d.attn.proj.bias", i);
		b->norm1_w = add(l, 1, S(D), "blocks.%d.norm1.weight", i);
		b->norm1_b = add(l, 1, S(D), "blocks.%d.norm1.bias", i);
		b->fc1_w = add(l, 2, S(F, D), "blocks.%d.mlp.fc1.weight", i);
		b->fc1_b = add(l, 1, S(F), "blocks.%d.mlp.fc1.bias", i);
		b->fc2_w = add(l, 2, S(D, F), "blocks.%d.mlp.fc2.weight", i);
		b->fc2_b = add(l, 1, S(D), "blocks.%d.mlp.fc2.bias", i);
		b->norm2_w = add(l, 1, S(D), "blocks.%d.norm2.weight", i);
		b->norm2_b = add(l, 1, S(D), "blocks.%d.norm2.bias", i);
	}
	l->teacher_end = l->total;
	for (int j = 0; j < c->decoder_layers; j++) {
		int cin = j == 0 ? D : Dd;

		l->dec_w[j] = add(l, 4, S(Dd, cin / G, k, k),
		    "decoder.layers.%d.conv.weight", j);
		l->dec_b[j] = add(l, 1, S(Dd), "decoder.layers.%d.conv.bias", j);
	}
	l->dproj_w = add(l, 2, S(D, Dd), "decoder.proj.weight");
	l->dproj_b = add(l, 1, S(D), "decoder.proj.bias");
	return 0;
}

void
d2v_layout_free(d2v_layout *l)
{
	free(l->p);
	free(l->blocks);
	free(l->dec_w);
	free(l->dec_b);
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

void
d2v_params_init(const d2v_layout *l, const d2v_config *c, float *params,
    uint64_t seed)
{
	memset(params, 0, l->total * sizeof *params);
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
		} else if (strncmp(n, "decoder.", 8) == 0) {
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
