/* test_model.c - the whole v2 image model: finite differences on every
 * parameter tensor, schedules, checkpoint round trip. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"
#include "rng.h"
#include "t.h"
#include "train/checkpoint.h"
#include "train/optim.h"
#include "train/safetensors.h"

static d2v_config
tiny(void)
{
	d2v_config c;

	d2v_config_preset(&c, "tiny", NULL);
	c.image_size = 12; c.patch = 3; c.channels = 2;
	c.dim = 16; c.heads = 2; c.mlp_dim = 24;
	c.prenet_depth = 1; c.depth = 2; c.top_k = 2;
	c.decoder_dim = 8; c.decoder_layers = 2; c.decoder_groups = 2;
	c.clone = 2;
	c.cls_loss = 0.3; /* larger than the recipe's so the CLS path shows */
	c.mean[1] = 0.5; c.std[1] = 0.3;
	return c;
}

/* B=2 images, M=2 copies, 16 tokens, 10 masked per row. */
static void
inputs(uint8_t *img, uint8_t *mask, float *noise, const d2v_model *m)
{
	d2v_rng r;
	int N = m->N;

	d2v_rng_seed(&r, 5, 0, 0);
	for (int i = 0; i < 2 * 2 * 12 * 12; i++)
		img[i] = (uint8_t)((i * 7 + (i / 12) * 13) % 256 ^ (int)d2v_rng_below(&r, 32));
	for (int row = 0; row < 4; row++) {
		int idx[16];

		for (int n = 0; n < N; n++)
			idx[n] = n;
		d2v_rng_shuffle_int(&r, idx, N);
		for (int n = 0; n < N; n++)
			mask[row * N + idx[n]] = n < 10;
	}
	for (int i = 0; i < 4 * N * m->D; i++)
		noise[i] = (float)(0.01 * d2v_rng_normal(&r));
}

static void
test_gradients(const char *what, double drop)
{
	d2v_config c = tiny();
	d2v_model m;
	d2v_err err = {0};
	d2v_step_out out;
	uint8_t img[576], mask[64];
	float *noise = malloc(4 * 16 * 16 * sizeof(float)), *g;
	d2v_rng r;
	int bad = 0, checked = 0, rc;

	c.encoder_dropout = c.attention_dropout = c.activation_dropout = drop;
	c.post_mlp_drop = drop;
	c.drop_path = drop > 0 ? 0.4 : 0;
	rc = d2v_model_init(&m, &c, d2v_backend_cpu(), &err);
	T_OK(rc == 0, "tiny model initialises (%s)", rc ? err.msg : "ok");
	if (rc)
		return;
	d2v_params_init(&m.lay, &c, m.params, 11);
	/* widen LayerNorm weights and biases away from 1 and 0 */
	d2v_rng_seed(&r, 3, 0, 0);
	for (size_t i = 0; i < m.lay.total; i++)
		m.params[i] += (float)(0.05 * d2v_rng_normal(&r));
	d2v_model_sync_teacher(&m);
	inputs(img, mask, noise, &m);
	rc = d2v_model_step(&m, img, mask, noise, NULL, NULL, 2, 1, &out, &err);
	T_OK(rc == 0 && isfinite(out.loss) && out.loss > 0,
	    "a step gives a finite loss %.6f (reg %.6f, cls %.6f)", out.loss,
	    out.loss_reg, out.loss_cls);
	T_OK(out.n_masked == 40, "40 masked tokens counted");
	g = malloc(m.lay.total * sizeof(float));
	memcpy(g, m.grads, m.lay.total * sizeof(float));
	for (int i = 0; i < m.lay.count; i++) {
		const d2v_param *p = &m.lay.p[i];
		double worst = 0;

		for (int k = 0; k < 3; k++) {
			size_t j = p->offset + (size_t)d2v_rng_below(&r, p->size);
			float save = m.params[j];
			double h = 1e-2, lp, lm, num, e;
			d2v_step_out o2;

			m.params[j] = save + (float)h;
			d2v_model_step(&m, img, mask, noise, NULL, NULL, 2, 1, &o2, &err);
			lp = o2.loss;
			m.params[j] = save - (float)h;
			d2v_model_step(&m, img, mask, noise, NULL, NULL, 2, 1, &o2, &err);
			lm = o2.loss;
			m.params[j] = save;
			num = (lp - lm) / (2 * h);
			e = fabs(num - g[j]) / (fabs(num) + fabs(g[j]) + 1e-3);
			if (e > worst)
				worst = e;
			checked++;
		}
		if (worst > 0.03) {
			bad++;
			printf("# %s: worst relative error %.3g\n", p->name, worst);
		}
	}
	T_OK(bad == 0, "%s: finite differences agree on all %d parameter "
	    "tensors (%d coordinates)", what, m.lay.count, checked);
	if (drop > 0) {
		d2v_step_out o3;
		float *t1 = malloc(4 * 16 * sizeof(float));

		/* the teacher's targets never see dropout */
		d2v_model_step(&m, img, mask, noise, NULL, NULL, 2, 1, &o3, &err);
		memcpy(t1, m.y, 4 * 16 * sizeof(float));
		d2v_model_step(&m, img, mask, noise, NULL, NULL, 2, 99, &o3, &err);
		T_OK(memcmp(t1, m.y, 4 * 16 * sizeof(float)) == 0 &&
		    fabs(o3.loss - out.loss) > 1e-6,
		    "dropout changes the student's loss with the step seed, never "
		    "the targets");
		free(t1);
	}
	free(g);
	free(noise);
	d2v_model_free(&m);
}

/* A tiny audio or text model; with drop, every student-only dropout of
 * the modality at 0.2 (layerdrop too). */
static d2v_config
tiny_seq(const char *mod, double drop)
{
	d2v_config c;

	d2v_config_preset(&c, "tiny", NULL);
	d2v_config_modality(&c, mod, NULL);
	c.dim = 16; c.heads = 2; c.mlp_dim = 24;
	c.prenet_depth = 1; c.depth = 2; c.top_k = 2;
	c.decoder_dim = strcmp(mod, "audio") == 0 ? 8 : 16;
	c.decoder_layers = 2; c.decoder_kernel = 3;
	c.decoder_groups = strcmp(mod, "audio") == 0 ? 2 : 1;
	c.clone = 2;
	c.conv_dim = 6; c.pos_conv_depth = 2; c.pos_conv_kernel = 3;
	c.pos_conv_groups = 4;
	c.vocab = 23; c.max_positions = 16;
	c.encoder_dropout = c.attention_dropout = c.post_mlp_drop = drop;
	c.activation_dropout = drop;
	c.embed_dropout = c.context_dropout = c.input_dropout = drop;
	c.layerdrop = drop > 0 ? 0.5 : 0;
	return c;
}

/*
 * Finite differences over every parameter tensor of an audio or a text
 * model, v2 or v1 (obj), with the targets held fixed (the teacher runs
 * without gradient, but its input is the student's local encoder:
 * perturbing those weights would move the targets too).  v1: one mask per
 * sample, different counts per sample; text reads x_masked, with one
 * token replaced by another id (not a loss position).
 */
/* (loss(p_j + h) - loss(p_j - h)) / 2h of a step with targets y; p_j is
 * left at save */
static double
central(d2v_model *m, size_t j, float save, double h, const void *in,
    const uint8_t *mask, const float *noise, const float *y)
{
	d2v_step_out o;
	d2v_err err;
	double lp, lm;

	m->params[j] = save + (float)h;
	d2v_model_step(m, in, mask, noise, y, NULL, 2, 1, &o, &err);
	lp = o.loss;
	m->params[j] = save - (float)h;
	d2v_model_step(m, in, mask, noise, y, NULL, 2, 1, &o, &err);
	lm = o.loss;
	m->params[j] = save;
	return (lp - lm) / (2 * h);
}

static void
test_seq_gradients(const char *mod, const char *obj, double drop)
{
	d2v_config c = tiny_seq(mod, drop);
	d2v_model m;
	d2v_err err = {0};
	d2v_step_out out, o2;
	int audio = strcmp(mod, "audio") == 0, len = audio ? 3600 : 11;
	int v1 = strcmp(obj, "v1") == 0;
	int N, R, checked = 0, bad = 0;
	float *x = malloc(2 * (size_t)len * sizeof(float)), *noise, *y, *g;
	int32_t ids[22], xm[22];
	uint8_t mask[4 * 64];
	const void *in = audio ? (const void *)x : (const void *)ids;
	char what[32];
	d2v_rng r;

	snprintf(what, sizeof what, "%s %s", obj, mod);
	mod = what;
	if (v1) {
		d2v_config_objective(&c, "v1", NULL);
		c.prenet_depth = 0; c.depth = 3; c.top_k = 2;
		c.loss_beta = audio ? 0 : 0.5; /* both Smooth-L1 branches */
		c.encoder_dropout = c.attention_dropout = c.post_mlp_drop = drop;
		c.activation_dropout = drop;
		c.embed_dropout = audio ? 0 : drop;
		c.context_dropout = audio ? drop : 0;
		c.layerdrop = drop > 0 ? 0.3 : 0;
	}
	R = 2 * c.clone;
	d2v_rng_seed(&r, 11, 0, 0);
	T_OK(d2v_model_init(&m, &c, d2v_backend_cpu(), &err) == 0 &&
	    d2v_model_set_length(&m, len, &err) == 0, "%s model of length %d: "
	    "%d tokens", mod, len, m.N);
	N = m.N;
	d2v_params_init(&m.lay, &c, m.params, 3);
	/* audio: make the ALiBi scales differ from 1 and one negative (its
	 * gradient is then 0, as the clamp says) */
	if (audio) {
		m.params[m.lay.alibi] = 0.7f;
		m.params[m.lay.alibi + 1] = -0.2f;
	}
	d2v_model_sync_teacher(&m);
	for (int i = 0; i < 2 * len; i++)
		x[i] = (float)(sin(i * 0.05 + (i >= len) * 1.3) +
		    0.3 * d2v_rng_normal(&r));
	for (int i = 0; i < 22; i++)
		ids[i] = (int32_t)d2v_rng_below(&r, 23);
	memset(mask, 0, sizeof mask);
	for (int row = 0; row < R; row++) {
		int idx[64];

		for (int n = 0; n < N; n++)
			idx[n] = n;
		d2v_rng_shuffle_int(&r, idx, N);
		for (int n = 0; n < N / 2 - (v1 ? 2 * row : 0); n++)
			mask[row * N + idx[n]] = 1;
	}
	if (v1 && !audio) {
		/* x_masked: <mask> (id 22, outside the ids drawn above) at
		 * the loss positions, one more token replaced by id 5 */
		for (int i = 0; i < 22; i++) {
			ids[i] %= 22;
			xm[i] = mask[i] ? 22 : ids[i];
		}
		for (int b = 0; b < 2; b++)
			for (int n = 0; n < N; n++)
				if (!mask[b * N + n]) {
					xm[b * N + n] = ids[b * N + n] == 5 ? 6 : 5;
					break;
				}
		d2v_model_set_student_ids(&m, xm);
	}
	noise = malloc((size_t)R * N * c.dim * sizeof(float));
	y = malloc(2 * (size_t)N * c.dim * sizeof(float));
	for (int i = 0; i < R * N * c.dim; i++)
		noise[i] = (float)(0.01 * d2v_rng_normal(&r));
	T_OK(d2v_model_step(&m, in, mask, noise, NULL, NULL, 2, 1, &out, &err) == 0 &&
	    isfinite(out.loss) && out.loss > 0, "%s: a step gives a finite loss "
	    "%.6f", mod, out.loss);
	memcpy(y, m.y, 2 * (size_t)N * c.dim * sizeof(float));
	d2v_model_step(&m, in, mask, noise, y, NULL, 2, 1, &out, &err);
	g = malloc(m.lay.total * sizeof(float));
	memcpy(g, m.grads, m.lay.total * sizeof(float));
	for (int i = 0; i < m.lay.count; i++) {
		const d2v_param *p = &m.lay.p[i];
		double worst = 0;

		for (int k = 0; k < 3; k++) {
			size_t j = p->offset + (size_t)d2v_rng_below(&r, p->size);
			float save = m.params[j];
			double h = v1 ? 3e-3 : 5e-3, lp, lm, num, e;

			if (strstr(p->name, "embed_tokens") != NULL) {
				/* a row that the input uses */
				j = p->offset + (size_t)(v1 && k == 2 ? xm[k] :
				    ids[k]) * c.dim +
				    (size_t)d2v_rng_below(&r, c.dim);
				save = m.params[j];
			} else if (strstr(p->name, "embed_positions") != NULL) {
				/* rows 2 .. N+1 are used */
				j = p->offset + (size_t)(2 + k * 3) * c.dim +
				    (size_t)d2v_rng_below(&r, c.dim);
				save = m.params[j];
			}
			m.params[j] = save + (float)h;
			d2v_model_step(&m, in, mask, noise, y, NULL, 2, 1, &o2, &err);
			lp = o2.loss;
			m.params[j] = save - (float)h;
			d2v_model_step(&m, in, mask, noise, y, NULL, 2, 1, &o2, &err);
			lm = o2.loss;
			num = (lp - lm) / (2 * h);
			e = fabs(num - g[j]) / (fabs(num) + fabs(g[j]) + 1e-3);
			if (e > 0.03) {
				/* where the loss curves fast, the h^2 term
				 * of the central difference is the error:
				 * Richardson's (4 D(h/2) - D(h)) / 3 cancels
				 * it (a wrong gradient stays far from both) */
				num = (4 * central(&m, j, save, h / 2, in, mask,
				    noise, y) - num) / 3;
				e = fabs(num - g[j]) / (fabs(num) + fabs(g[j]) +
				    1e-3);
				printf("# %s[%zu]: Richardson's difference "
				    "%.6g\n", p->name, j - p->offset, num);
			}
			m.params[j] = save;
			if (e > 0.03)
				printf("# %s[%zu]: numerical %.6g analytic %.6g\n",
				    p->name, j - p->offset, num, g[j]);
			if (e > worst)
				worst = e;
			checked++;
		}
		if (worst > 0.03) {
			bad++;
			printf("# %s: worst relative error %.3g\n", p->name, worst);
		}
	}
	T_OK(bad == 0, "%s%s: finite differences agree on all %d parameter "
	    "tensors (%d coordinates)", mod, drop > 0 ? " with dropout and "
	    "layerdrop" : "", m.lay.count, checked);
	if (audio && !v1)
		T_OK(g[m.lay.alibi] != 0 && g[m.lay.alibi + 1] == 0,
		    "audio: a positive ALiBi scale has a gradient, a negative "
		    "one (clamped to 0) none");
	if (v1) {
		const d2v_param *me = d2v_layout_find(&m.lay, "mask_emb");
		const d2v_param *emb = d2v_layout_find(&m.lay, "embed_tokens.weight");

		T_OK(d2v_layout_find(&m.lay, audio ? "final_proj.weight" :
		    "regression_head.2.weight") != NULL &&
		    d2v_layout_find(&m.lay, "decoder.proj.weight") == NULL &&
		    d2v_layout_find(&m.lay, "decoder.proj.1.weight") == NULL &&
		    (audio ? me != NULL && g[me->offset] != 0 &&
		    !me->teacher && d2v_layout_find(&m.lay, "alibi_scale") == NULL :
		    g[emb->offset + 22 * (size_t)c.dim] != 0),
		    "%s: the head, no decoder; %s", mod, audio ?
		    "mask_emb has a gradient and is the student's only, no ALiBi" :
		    "the <mask> row of the embedding has a gradient");
	}
	if (drop > 0) {
		d2v_model_step(&m, in, mask, noise, y, NULL, 2, 99, &o2, &err);
		T_OK(fabs(o2.loss - out.loss) > 1e-6, "%s: dropout changes the "
		    "loss with the step seed", mod);
	}
	free(x); free(noise); free(y); free(g);
	d2v_model_free(&m);
}

/* Finite differences over every parameter tensor of the v1 image model
 * (pre-LN, LayerScale, mask token, head, Smooth-L1), masks of different
 * counts per image, with dropout and drop path or without. */
static void
test_v1_gradients(double drop)
{
	d2v_config c = tiny();
	d2v_model m;
	d2v_err err = {0};
	d2v_step_out out, o2;
	uint8_t img[576], mask[32];
	float *g, *y;
	int bad = 0, checked = 0, N;
	d2v_rng r;

	d2v_config_objective(&c, "v1", NULL);
	c.depth = 3; c.top_k = 2;
	c.layer_scale = 0.3;
	c.loss_beta = 0.5; /* both branches of Smooth-L1 show */
	c.drop_path = drop > 0 ? 0.4 : 0;
	c.attention_dropout = drop;
	c.encoder_dropout = c.activation_dropout = c.post_mlp_drop = drop;
	T_OK(d2v_model_init(&m, &c, d2v_backend_cpu(), &err) == 0,
	    "v1 model init%s%s", err.code ? ": " : "", err.code ? err.msg : "");
	N = m.N;
	d2v_params_init(&m.lay, &c, m.params, 4);
	d2v_model_sync_teacher(&m);
	d2v_rng_seed(&r, 9, 0, 0);
	for (int i = 0; i < 576; i++)
		img[i] = (uint8_t)((i * 11 + (i / 12) * 5) % 256 ^ (int)d2v_rng_below(&r, 64));
	for (int i = 0; i < 2 * N; i++)
		mask[i] = d2v_rng_uniform(&r) < (i < N ? 0.3 : 0.6);
	/* targets held fixed from a first pass, the teacher moved away from
	 * the student so that they are not the student's own features */
	for (size_t i = 0; i < m.lay.total; i++)
		m.teacher[i] += (float)(0.05 * d2v_rng_normal(&r));
	T_OK(d2v_model_step(&m, img, mask, NULL, NULL, NULL, 2, 1, &out, &err) == 0 &&
	    isfinite(out.loss) && out.loss > 0, "v1: a step with %ld and %ld "
	    "masked tokens gives a loss %.6f", (long)0, (long)0, out.loss);
	y = malloc(2 * (size_t)N * c.dim * sizeof(float));
	memcpy(y, m.y, 2 * (size_t)N * c.dim * sizeof(float));
	d2v_model_step(&m, img, mask, NULL, y, NULL, 2, 1, &out, &err);
	g = malloc(m.lay.total * sizeof(float));
	memcpy(g, m.grads, m.lay.total * sizeof(float));
	/* per tensor, the derivative along a random unit direction: the
	 * loss (a mean over masked tokens and channels) is small, and one
	 * coordinate's difference would drown in float rounding */
	for (int i = 0; i < m.lay.count; i++) {
		const d2v_param *p = &m.lay.p[i];
		float *v = malloc(p->size * sizeof *v), *save = malloc(p->size * sizeof *save);
		double h = 3e-3, nv = 0, ana = 0, lp, lm, num, e;

		for (size_t k = 0; k < p->size; k++) {
			v[k] = (float)d2v_rng_normal(&r);
			nv += (double)v[k] * v[k];
		}
		/* the key third of a qkv bias has no effect: leave it out */
		if (strstr(p->name, "qkv.bias") != NULL)
			for (int k = c.dim; k < 2 * c.dim; k++) {
				nv -= (double)v[k] * v[k];
				v[k] = 0;
			}
		for (size_t k = 0; k < p->size; k++) {
			v[k] /= (float)sqrt(nv);
			ana += (double)v[k] * g[p->offset + k];
		}
		memcpy(save, m.params + p->offset, p->size * sizeof *save);
		for (size_t k = 0; k < p->size; k++)
			m.params[p->offset + k] = save[k] + (float)h * v[k];
		d2v_model_step(&m, img, mask, NULL, y, NULL, 2, 1, &o2, &err);
		lp = o2.loss;
		for (size_t k = 0; k < p->size; k++)
			m.params[p->offset + k] = save[k] - (float)h * v[k];
		d2v_model_step(&m, img, mask, NULL, y, NULL, 2, 1, &o2, &err);
		lm = o2.loss;
		memcpy(m.params + p->offset, save, p->size * sizeof *save);
		num = (lp - lm) / (2 * h);
		e = fabs(num - ana) / (fabs(num) + fabs(ana) + 1e-4);
		if (e > 0.02) {
			printf("# %s: numerical %.6g analytic %.6g\n", p->name, num, ana);
			bad++;
		}
		checked++;
		free(v);
		free(save);
	}
	T_OK(bad == 0, "v1%s: finite differences agree on all %d parameter "
	    "tensors (%d directions)", drop > 0 ? " with dropout and drop path" :
	    "", m.lay.count, checked);
	T_OK(d2v_layout_find(&m.lay, "mask_token") != NULL &&
	    g[d2v_layout_find(&m.lay, "mask_token")->offset] != 0 &&
	    d2v_layout_find(&m.lay, "decoder.proj.weight") == NULL &&
	    d2v_layout_find(&m.lay, "context_norm.weight") == NULL,
	    "v1: a mask token with a gradient, no decoder, no context norm");
	free(g); free(y);
	d2v_model_free(&m);
}

/* The text large recipe's targets: LayerNorm per layer, then instance
 * norm over positions after averaging (DATA2VEC.md §6). */
static void
test_target_norms(void)
{
	d2v_config c = tiny_seq("text", 0);
	d2v_model m;
	d2v_err err = {0};
	int32_t ids[22];
	float y[2 * 11 * 16];
	double worst = 0;

	snprintf(c.target_layer_norm, sizeof c.target_layer_norm, "ln");
	snprintf(c.target_final_norm, sizeof c.target_final_norm, "in");
	for (int i = 0; i < 22; i++)
		ids[i] = (i * 7) % 23;
	T_OK(d2v_model_init(&m, &c, d2v_backend_cpu(), &err) == 0 &&
	    d2v_model_set_length(&m, 11, &err) == 0, "text model, ln/in targets");
	d2v_params_init(&m.lay, &c, m.params, 8);
	d2v_model_sync_teacher(&m);
	T_OK(d2v_model_targets(&m, m.teacher, ids, 2, y, NULL, &err) == 0,
	    "targets of 2 texts");
	for (int b = 0; b < 2; b++)
		for (int d = 0; d < 16; d++) {
			double s = 0, s2 = 0;

			for (int n = 0; n < 11; n++) {
				double v = y[(b * 11 + n) * 16 + d];

				s += v;
				s2 += v * v;
			}
			s /= 11;
			worst = fmax(worst, fmax(fabs(s), fabs(s2 / 11 - s * s - 1)));
		}
	T_OK(worst < 1e-3, "instance norm after averaging: every channel of "
	    "every text has mean 0 and variance 1 over positions (worst %.2g)",
	    worst);
	d2v_model_free(&m);
	T_OK(d2v_config_preset(&c, "large", NULL) == 0 &&
	    d2v_config_modality(&c, "text", NULL) == 0 &&
	    !strcmp(c.target_layer_norm, "ln") &&
	    !strcmp(c.target_final_norm, "in"), "the text large recipe: ln "
	    "per layer, in after averaging");
}

/* A safetensors file whose f32 tensor follows 3 bytes of u8 (the format
 * does not align): d2v_st_get hands out aligned data all the same. */
static void
test_st_unaligned(void)
{
	const char *h = "{\"a\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]},"
	    "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[3,11]}}";
	char path[] = "/tmp/d2v-st-XXXXXX";
	int fd = mkstemp(path);
	uint64_t hl = strlen(h);
	float v[2] = {1.5f, -2.25f};
	unsigned char u[3] = {7, 8, 9};
	d2v_st st;
	d2v_err err = {0};
	const float *b;
	const unsigned char *a;
	size_t nb = 0;

	T_OK(fd >= 0 && write(fd, &hl, 8) == 8 &&
	    write(fd, h, hl) == (ssize_t)hl && write(fd, u, 3) == 3 &&
	    write(fd, v, 8) == 8 && close(fd) == 0, "an unaligned safetensors "
	    "file written");
	T_OK(d2v_st_load(&st, path, &err) == 0, "it loads%s%s", err.code ?
	    ": " : "", err.code ? err.msg : "");
	b = d2v_st_get(&st, "b", "F32", NULL, NULL, &nb, &err);
	a = d2v_st_get(&st, "a", "U8", NULL, NULL, NULL, &err);
	T_OK(b != NULL && (uintptr_t)b % 4 == 0 && nb == 8 && b[0] == 1.5f &&
	    b[1] == -2.25f && a != NULL && a[0] == 7 && a[2] == 9,
	    "its f32 tensor comes back aligned and intact, the u8 one too");
	d2v_st_free(&st);
	unlink(path);
}

/* The paired normal draws of the decoder noise: both halves N(0, 1),
 * uncorrelated. */
static void
test_normal_pairs(void)
{
	d2v_rng r;
	double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
	int n = 200000;

	d2v_rng_seed(&r, 3, 1, 4);
	for (int i = 0; i < n; i++) {
		double a, b;

		d2v_rng_normal2(&r, &a, &b);
		sa += a; sb += b; saa += a * a; sbb += b * b; sab += a * b;
	}
	sa /= n; sb /= n; saa /= n; sbb /= n; sab /= n;
	T_OK(fabs(sa) < 0.01 && fabs(sb) < 0.01 && fabs(saa - 1) < 0.02 &&
	    fabs(sbb - 1) < 0.02 && fabs(sab) < 0.01, "normal pairs: means "
	    "%.3f %.3f, variances %.3f %.3f, covariance %.3f", sa, sb, saa, sbb,
	    sab);
}

/* Lengths outside what the model takes. */
static void
test_lengths(void)
{
	d2v_config a = tiny_seq("audio", 0), t = tiny_seq("text", 0);
	d2v_model m;
	d2v_err err = {0};

	d2v_model_init(&m, &a, d2v_backend_cpu(), &err);
	T_OK(d2v_model_set_length(&m, 399, &err) == D2V_EINVAL &&
	    strstr(err.msg, "receptive field"), "audio of 399 samples is "
	    "refused: %s", err.msg);
	T_OK(d2v_model_set_length(&m, 400, &err) == 0 && m.N == 1,
	    "400 samples give one frame");
	T_OK(d2v_model_set_length(&m, 16000, &err) == 0 && m.N == 49,
	    "16000 samples give 49 frames");
	d2v_model_free(&m);
	d2v_model_init(&m, &t, d2v_backend_cpu(), &err);
	T_OK(d2v_model_set_length(&m, 17, &err) == D2V_EINVAL &&
	    strstr(err.msg, "position table"), "text of 17 tokens with 16 "
	    "positions is refused: %s", err.msg);
	T_OK(d2v_model_set_length(&m, 16, &err) == 0, "16 tokens fit");
	d2v_model_free(&m);
}

static void
test_unequal_mask(void)
{
	d2v_config c = tiny();
	d2v_model m;
	d2v_err err = {0};
	d2v_step_out out;
	uint8_t img[576] = {0}, mask[64] = {0};

	d2v_model_init(&m, &c, d2v_backend_cpu(), &err);
	for (int row = 0; row < 4; row++)
		for (int n = 0; n < 8 + (row == 2); n++)
			mask[row * 16 + n] = 1;
	T_OK(d2v_model_step(&m, img, mask, NULL, NULL, NULL, 2, 1, &out, &err) == D2V_EINVAL &&
	    strstr(err.msg, "row 2"), "rows with unequal counts are refused: %s",
	    err.msg);
	d2v_model_free(&m);
}

static void
test_schedules(void)
{
	d2v_config c = tiny();

	c.lr = 1e-3; c.min_lr = 0; c.warmup = 10; c.max_update = 110;
	c.ema_decay = 0.9998; c.ema_end_decay = 0.99999; c.ema_anneal_end_step = 100;
	T_OK(d2v_lr(&c, 0) == 0 && fabs(d2v_lr(&c, 5) - 5e-4) < 1e-12 &&
	    fabs(d2v_lr(&c, 10) - 1e-3) < 1e-12 && fabs(d2v_lr(&c, 60) - 5e-4) < 1e-12,
	    "cosine: 0 at step 0, linear warmup, peak, half-way at the middle");
	T_OK(fabs(d2v_tau(&c, 0) - 0.9998) < 1e-12 &&
	    fabs(d2v_tau(&c, 50) - (0.99999 - 0.00019 * 0.5)) < 1e-12 &&
	    d2v_tau(&c, 100) == 0.99999 && d2v_tau(&c, 1000) == 0.99999,
	    "tau anneals linearly, then stays at the end value");
	{
		float g[3] = {3, 4, 0};
		double n = d2v_clip_grads(d2v_backend_cpu(), g, 3, 1.0);

		T_OK(n == 5 && fabs(g[0] - 0.6f) < 1e-6 && fabs(g[1] - 0.8f) < 1e-6,
		    "clipping returns the norm and rescales to the limit");
	}
}

static void
test_checkpoint(void)
{
	d2v_config c = tiny();
	d2v_model m, m2;
	d2v_err err = {0};
	d2v_rng r, r2;
	long step = 0;
	char path[] = "/tmp/d2v-ck-XXXXXX";
	int fd = mkstemp(path), same;

	close(fd);
	d2v_model_init(&m, &c, d2v_backend_cpu(), &err);
	d2v_params_init(&m.lay, &c, m.params, 2);
	for (size_t i = 0; i < m.lay.total; i++) {
		m.teacher[i] = m.params[i] * 0.5f;
		m.m[i] = (float)i;
		m.v[i] = 1.0f / (float)(i + 1);
	}
	d2v_rng_seed(&r, 77, 1, 2);
	T_OK(d2v_checkpoint_save(path, &m, 1234, &r, &err) == 0,
	    "checkpoint saves");
	T_OK(d2v_checkpoint_load(path, &m2, d2v_backend_cpu(), &step, &r2, &err) == 0,
	    "checkpoint loads (%s)", err.code ? err.msg : "ok");
	same = step == 1234 && memcmp(&r, &r2, sizeof r) == 0 &&
	    m2.lay.total == m.lay.total &&
	    !memcmp(m.params, m2.params, m.lay.total * 4) &&
	    !memcmp(m.teacher, m2.teacher, m.lay.teacher_end * 4) &&
	    !memcmp(m.m, m2.m, m.lay.total * 4) && !memcmp(m.v, m2.v, m.lay.total * 4) &&
	    m2.cfg.dim == 16 && m2.cfg.decoder_groups == 2 && m2.cfg.mean[1] == 0.5;
	T_OK(same, "every buffer, the step, the RNG and the config round-trip");
	d2v_model_free(&m2);
	T_OK(d2v_checkpoint_save("/nonexistent-dir/ck.safetensors", &m, 1, &r,
	    &err) == D2V_EIO, "a checkpoint in a missing directory fails: %s",
	    err.msg);
	unlink(path);
	d2v_model_free(&m);
}

int
main(void)
{
	test_gradients("no dropout", 0);
	test_gradients("dropout 0.2 everywhere, drop path 0.4", 0.2);
	test_seq_gradients("audio", "v2", 0);
	test_seq_gradients("audio", "v2", 0.2);
	test_seq_gradients("text", "v2", 0);
	test_seq_gradients("text", "v2", 0.2);
	test_seq_gradients("audio", "v1", 0);
	test_seq_gradients("audio", "v1", 0.2);
	test_seq_gradients("text", "v1", 0);
	test_seq_gradients("text", "v1", 0.2);
	test_lengths();
	test_normal_pairs();
	test_st_unaligned();
	test_target_norms();
	test_v1_gradients(0);
	test_v1_gradients(0.2);
	test_unequal_mask();
	test_schedules();
	test_checkpoint();
	return T_DONE();
}
