/* config.c - see config.h. */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int
d2v_config_preset(d2v_config *c, const char *name, d2v_err *err)
{
	memset(c, 0, sizeof *c);
	snprintf(c->modality, sizeof c->modality, "image");
	snprintf(c->objective, sizeof c->objective, "v2");
	c->image_size = 224;
	c->patch = 16;
	c->channels = 3;
	c->norm_eps = 1e-6;
	c->decoder_kernel = 3;
	c->decoder_layers = 6;
	c->decoder_groups = 16;
	c->decoder_residual = 1;
	c->decoder_proj_layers = 1;
	c->conv_dim = 512;
	c->pos_conv_depth = 5;
	c->pos_conv_kernel = 19;
	c->pos_conv_groups = 16;
	c->max_positions = 512;
	snprintf(c->target_layer_norm, sizeof c->target_layer_norm, "in");
	snprintf(c->target_final_norm, sizeof c->target_final_norm, "ln");
	snprintf(c->lr_schedule, sizeof c->lr_schedule, "cosine");
	c->init_lr_scale = 0.01;
	c->final_lr_scale = 0.01;
	c->layer_scale = 1e-4;
	c->loss_beta = 0;
	c->clone = 16;
	c->mask_noise_std = 0.01;
	c->cls_loss = 0.01;
	c->loss_scale = 0;
	c->mean[0] = 0.485; c->mean[1] = 0.456; c->mean[2] = 0.406;
	c->std[0] = 0.229; c->std[1] = 0.224; c->std[2] = 0.225;
	c->lr = 1e-3;
	c->min_lr = 0;
	c->warmup = 50040;
	c->max_update = 375300;
	c->beta1 = 0.9;
	c->beta2 = 0.95;
	c->eps = 1e-8;
	c->weight_decay = 0.05;
	c->clip_norm = 4.0;
	c->ema_decay = 0.9998;
	c->ema_end_decay = 0.99999;
	c->ema_anneal_end_step = 100000;
	c->batch = 16;
	c->seed = 1;
	if (strcmp(name, "tiny") == 0) {
		c->dim = 192; c->heads = 3; c->prenet_depth = 2; c->depth = 10;
	} else if (strcmp(name, "small") == 0) {
		c->dim = 384; c->heads = 6; c->prenet_depth = 2; c->depth = 10;
	} else if (strcmp(name, "base") == 0) {
		c->dim = 768; c->heads = 12; c->prenet_depth = 2; c->depth = 10;
	} else if (strcmp(name, "large") == 0) {
		c->dim = 1024; c->heads = 16; c->prenet_depth = 0; c->depth = 24;
		c->decoder_kernel = 5; c->decoder_layers = 3;
		c->lr = 4e-4;
		c->ema_anneal_end_step = 150000;
	} else {
		return d2v_err_set(err, D2V_EINVAL, "unknown preset '%s' "
		    "(tiny, small, base, large)", name);
	}
	c->mlp_dim = 4 * c->dim;
	c->decoder_dim = c->dim;
	c->top_k = strcmp(name, "large") == 0 ? 18 : c->depth;
	return 0;
}

int
d2v_config_is_image(const d2v_config *c)
{
	return strcmp(c->modality, "image") == 0;
}

int
d2v_config_modality(d2v_config *c, const char *mod, d2v_err *err)
{
	int large = c->dim >= 1024;

	if (strcmp(mod, "image") == 0)
		return 0;
	if (strcmp(mod, "audio") != 0 && strcmp(mod, "text") != 0)
		return d2v_err_set(err, D2V_EINVAL, "unknown modality '%s' "
		    "(image, audio, text)", mod);
	snprintf(c->modality, sizeof c->modality, "%s", mod);
	snprintf(c->target_final_norm, sizeof c->target_final_norm, "none");
	c->norm_eps = 1e-5;
	c->cls_loss = 0;
	c->beta2 = 0.98;
	c->eps = 1e-6;
	c->weight_decay = 0.01;
	/* audio and text blocks: dropout 0.1, attention 0.1, post-MLP 0.1 */
	c->encoder_dropout = 0.1;
	c->attention_dropout = 0.1;
	c->post_mlp_drop = 0.1;
	c->input_dropout = 0.1;
	/* no prenet (audio large: 8 of 24, DATA2VEC.md §3.2) */
	c->depth += c->prenet_depth;
	c->prenet_depth = 0;
	if (strcmp(mod, "audio") == 0) {
		if (large) {
			c->prenet_depth = 8;
			c->depth = 16;
		}
		c->top_k = large ? 16 : (c->depth * 2 + 2) / 3;
		c->decoder_dim = large ? c->dim : c->dim / 2;
		c->decoder_kernel = 7;
		c->decoder_layers = 4;
		c->decoder_groups = 16;
		c->decoder_residual = 1;
		c->alibi = 1;
		c->clone = large ? 12 : 8;
		c->loss_scale = 0;
		c->context_dropout = 0.1;
		c->layerdrop = large ? 0 : 0.05;
		c->lr = large ? 4e-4 : 7.5e-4;
		c->clip_norm = large ? 1 : 0;
		c->warmup = large ? 10000 : 8000;
		c->max_update = large ? 600000 : 400000;
		c->ema_decay = large ? 0.9997 : 0.999;
		c->ema_end_decay = large ? 1.0 : 0.99999;
		c->ema_anneal_end_step = large ? 300000 : 75000;
		c->batch = 8;
	} else {
		c->top_k = c->depth;
		if (large) {
			/* text large: LN per layer, IN after averaging (§6) */
			snprintf(c->target_layer_norm, sizeof c->target_layer_norm,
			    "ln");
			snprintf(c->target_final_norm, sizeof c->target_final_norm,
			    "in");
		}
		c->decoder_dim = c->dim;
		c->decoder_kernel = 9;
		c->decoder_layers = 5;
		c->decoder_groups = 1;
		c->decoder_residual = 0;
		c->decoder_proj_layers = 2;
		c->clone = 8;
		c->loss_scale = 1;
		c->embed_dropout = 0.1;
		c->lr = large ? 1e-4 : 2e-4;
		c->clip_norm = 1;
		c->warmup = 4000;
		c->max_update = large ? 600000 : 1000000;
		c->ema_decay = 0.9999;
		c->ema_end_decay = 0.99999;
		c->ema_anneal_end_step = 100000;
		c->batch = 64;
	}
	return 0;
}

int
d2v_config_is_v1(const d2v_config *c)
{
	return strcmp(c->objective, "v1") == 0;
}

int
d2v_config_objective(d2v_config *c, const char *obj, d2v_err *err)
{
	int large = c->dim >= 1024;

	if (strcmp(obj, "v2") == 0)
		return 0;
	if (strcmp(obj, "v1") != 0)
		return d2v_err_set(err, D2V_EINVAL, "unknown objective '%s' (v1, "
		    "v2)", obj);
	snprintf(c->objective, sizeof c->objective, "v1");
	/* every block a main block; no decoder, no CLS loss, one mask; the
	 * batch stays the modality's CPU default (the recipes' 2048 images,
	 * 63 minutes of audio or 256 texts are global batches of 16 GPUs) */
	c->depth += c->prenet_depth;
	c->prenet_depth = 0;
	c->cls_loss = 0;
	c->clone = 1;
	c->input_dropout = 0;
	c->alibi = 0;
	snprintf(c->target_final_norm, sizeof c->target_final_norm, "none");
	if (d2v_config_is_image(c)) {
		/* BEiT-based vision model (data2vec_vision README, ViT-B):
		 * targets the end of the top 6 blocks, LN each and after */
		c->top_k = c->depth >= 6 ? 6 : c->depth;
		snprintf(c->target_layer_norm, sizeof c->target_layer_norm, "ln");
		snprintf(c->target_final_norm, sizeof c->target_final_norm, "ln");
		c->layer_scale = large ? 1e-5 : 1e-4;
		c->loss_beta = 2;
		c->drop_path = 0.25;
		c->lr = large ? 1e-3 : 2e-3;
		c->min_lr = 1e-5;
		c->beta2 = 0.999;
		c->eps = 1e-8;
		c->weight_decay = 0.05;
		c->clip_norm = 3.0;
		/* 10 of 800 epochs of warmup */
		c->max_update = 800;
		c->warmup = 10;
		c->ema_decay = c->ema_end_decay = 0.9998;
		c->ema_anneal_end_step = 1;
	} else if (strcmp(c->modality, "audio") == 0) {
		/* data2vec_audio base: FFN targets of the top 8 of 12, IN each,
		 * L2 x 1/sqrt(D); dropout 0.1 (attention, after it and after
		 * the FFN, after the encoder's LayerNorm), layerdrop 0.05;
		 * tri-stage lr 3% / 90% / 7% */
		c->top_k = (c->depth * 2 + 2) / 3;
		snprintf(c->target_layer_norm, sizeof c->target_layer_norm, "in");
		c->loss_beta = 0;
		c->loss_scale = 0;
		c->encoder_dropout = c->attention_dropout = 0.1;
		c->post_mlp_drop = 0.1;
		c->activation_dropout = 0;
		c->context_dropout = 0.1;
		c->layerdrop = 0.05;
		c->lr = 5e-4;
		c->beta2 = 0.98;
		c->eps = 1e-6;
		c->weight_decay = 0.01;
		c->clip_norm = 0;
		c->max_update = 400000;
		snprintf(c->lr_schedule, sizeof c->lr_schedule, "tri_stage");
		c->warmup = 12000;
		c->hold = 360000;
		c->init_lr_scale = 0.01;
		c->final_lr_scale = 0.05;
		c->ema_decay = 0.999;
		c->ema_end_decay = 0.9999;
		c->ema_anneal_end_step = 30000;
	} else {
		/* data2vec_text base (config/text/pretraining/base.yaml): FFN
		 * targets of the top 10 of 12, LN each, Smooth-L1 beta 4,
		 * loss scale 1; dropout 0.1 (embedding, attention, after it and
		 * after the FFN); cosine lr, 10k of 1M warmup */
		c->top_k = (5 * c->depth + 3) / 6; /* 10 of 12 */
		snprintf(c->target_layer_norm, sizeof c->target_layer_norm, "ln");
		c->loss_beta = 4;
		c->loss_scale = 1;
		c->encoder_dropout = c->attention_dropout = 0.1;
		c->post_mlp_drop = 0.1;
		c->activation_dropout = 0;
		c->embed_dropout = 0.1;
		c->layerdrop = 0;
		c->lr = 2e-4;
		c->beta2 = 0.98;
		c->eps = 1e-6;
		c->weight_decay = 0.01;
		c->clip_norm = 5;
		c->max_update = 1000000;
		c->warmup = 10000;
		c->ema_decay = 0.999;
		c->ema_end_decay = 0.9999;
		c->ema_anneal_end_step = 300000;
	}
	return 0;
}

int
d2v_config_tokens(const d2v_config *c)
{
	int g;

	if (!d2v_config_is_image(c))
		return 0;
	g = c->patch > 0 ? c->image_size / c->patch : 0;

	return g * g;
}

int
d2v_config_check(const d2v_config *c, d2v_err *err)
{
	int image = d2v_config_is_image(c);

	int v1 = d2v_config_is_v1(c);

	if (strcmp(c->objective, "v2") != 0 && !v1)
		return d2v_err_set(err, D2V_EINVAL, "unknown objective '%s' (v1, "
		    "v2)", c->objective);
	if (v1 && c->clone != 1)
		return d2v_err_set(err, D2V_EINVAL, "the v1 objective takes one "
		    "mask per sample (clone 1), not %d", c->clone);
	if (v1 && image && !(c->layer_scale > 0))
		return d2v_err_set(err, D2V_EINVAL, "layer scale must be > 0");
	if (c->loss_beta < 0)
		return d2v_err_set(err, D2V_EINVAL, "loss beta must be >= 0");
	if (!image && strcmp(c->modality, "audio") != 0 &&
	    strcmp(c->modality, "text") != 0)
		return d2v_err_set(err, D2V_EINVAL, "unknown modality '%s' "
		    "(image, audio, text)", c->modality);
	if (image && (c->patch <= 0 || c->image_size <= 0 ||
	    c->image_size % c->patch))
		return d2v_err_set(err, D2V_EINVAL, "image size %d is not a "
		    "multiple of the patch size %d", c->image_size, c->patch);
	if (image && (c->channels < 1 || c->channels > 3))
		return d2v_err_set(err, D2V_EINVAL, "channels must be 1 to 3");
	if (c->dim <= 0 || c->heads <= 0 || c->dim % c->heads)
		return d2v_err_set(err, D2V_EINVAL, "%d heads do not divide "
		    "width %d", c->heads, c->dim);
	if (image && c->dim % 4)
		return d2v_err_set(err, D2V_EINVAL, "width %d is not a multiple "
		    "of 4 (2-D sin-cos positions)", c->dim);
	if (strcmp(c->modality, "audio") == 0 && (c->conv_dim < 1 ||
	    c->pos_conv_depth < 0 || c->pos_conv_kernel < 1 ||
	    c->pos_conv_kernel % 2 == 0 || c->pos_conv_groups < 1 ||
	    c->dim % c->pos_conv_groups))
		return d2v_err_set(err, D2V_EINVAL, "audio: conv width must be "
		    ">= 1, the positional conv kernel odd and its %d groups must "
		    "divide width %d", c->pos_conv_groups, c->dim);
	if (strcmp(c->modality, "text") == 0 && (c->vocab < 1 ||
	    c->max_positions < 1))
		return d2v_err_set(err, D2V_EINVAL, "text: vocabulary %d and "
		    "positions %d must be >= 1", c->vocab, c->max_positions);
	if (c->mlp_dim <= 0 || c->depth <= 0 || c->prenet_depth < 0)
		return d2v_err_set(err, D2V_EINVAL, "bad depth or MLP size");
	if (c->top_k < 1 || c->top_k > c->depth)
		return d2v_err_set(err, D2V_EINVAL, "top-K %d must be in 1..%d "
		    "(main blocks)", c->top_k, c->depth);
	if (!v1 && (c->decoder_dim <= 0 || c->decoder_layers < 1 ||
	    c->decoder_kernel < 1 || c->decoder_kernel % 2 == 0 ||
	    c->decoder_groups < 1 || c->dim % c->decoder_groups ||
	    c->decoder_dim % c->decoder_groups))
		return d2v_err_set(err, D2V_EINVAL, "decoder: groups %d must "
		    "divide widths %d and %d, kernel must be odd",
		    c->decoder_groups, c->dim, c->decoder_dim);
	if (c->decoder_proj_layers < 1 || c->decoder_proj_layers > 2)
		return d2v_err_set(err, D2V_EINVAL, "decoder projection: 1 or 2 "
		    "layers");
	if (strcmp(c->target_final_norm, "ln") != 0 &&
	    strcmp(c->target_final_norm, "in") != 0 &&
	    strcmp(c->target_final_norm, "none") != 0)
		return d2v_err_set(err, D2V_EINVAL, "target_final_norm '%s': ln, "
		    "in or none", c->target_final_norm);
	if (strcmp(c->target_layer_norm, "ln") != 0 &&
	    strcmp(c->target_layer_norm, "in") != 0)
		return d2v_err_set(err, D2V_EINVAL, "target_layer_norm '%s': ln "
		    "or in", c->target_layer_norm);
	if (strcmp(c->lr_schedule, "cosine") != 0 &&
	    strcmp(c->lr_schedule, "tri_stage") != 0)
		return d2v_err_set(err, D2V_EINVAL, "lr_schedule '%s': cosine or "
		    "tri_stage", c->lr_schedule);
	if (strcmp(c->lr_schedule, "tri_stage") == 0 && (c->hold < 0 ||
	    c->warmup + c->hold > c->max_update || !(c->init_lr_scale >= 0) ||
	    !(c->final_lr_scale > 0)))
		return d2v_err_set(err, D2V_EINVAL, "tri_stage: warmup %ld + hold "
		    "%ld must fit in %ld updates, the final lr scale be > 0",
		    c->warmup, c->hold, c->max_update);
	if (c->clone < 1 || c->batch < 1)
		return d2v_err_set(err, D2V_EINVAL, "clone and batch must be >= 1");
	for (int i = 0; image && i < c->channels; i++)
		if (!(c->std[i] > 0))
			return d2v_err_set(err, D2V_EINVAL, "std must be > 0");
	if (c->beta1 < 0 || c->beta1 >= 1 || c->beta2 < 0 || c->beta2 >= 1)
		return d2v_err_set(err, D2V_EINVAL, "Adam betas must be in [0,1)");
	{
		const double p[] = {c->encoder_dropout, c->attention_dropout,
		    c->activation_dropout, c->post_mlp_drop, c->drop_path,
		    c->embed_dropout, c->context_dropout, c->input_dropout,
		    c->layerdrop};

		for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
			if (!(p[i] >= 0 && p[i] < 1))
				return d2v_err_set(err, D2V_EINVAL, "dropout rates "
				    "must be in [0, 1)");
	}
	if (c->max_update < 1 || c->warmup < 0)
		return d2v_err_set(err, D2V_EINVAL, "max_update must be >= 1");
	return 0;
}

static void add_dropout(json_t *j, const d2v_config *c);

json_t *
d2v_config_to_json(const d2v_config *c)
{
	json_t *mean = json_array(), *std = json_array(), *j;

	for (int i = 0; i < c->channels; i++) {
		json_array_append_new(mean, json_real(c->mean[i]));
		json_array_append_new(std, json_real(c->std[i]));
	}
	j = json_pack("{s:s,s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:f,"
	    "s:i,s:i,s:i,s:i,s:b,s:i,s:f,s:f,s:f,s:o,s:o,"
	    "s:f,s:f,s:I,s:I,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:I,s:f,s:f,s:i,s:I}",
	    "modality", c->modality, "objective", c->objective,
	    "image_size", c->image_size, "patch", c->patch,
	    "channels", c->channels, "dim", c->dim, "heads", c->heads,
	    "mlp_dim", c->mlp_dim, "prenet_depth", c->prenet_depth,
	    "depth", c->depth, "top_k", c->top_k, "norm_eps", c->norm_eps,
	    "decoder_dim", c->decoder_dim, "decoder_kernel", c->decoder_kernel,
	    "decoder_layers", c->decoder_layers,
	    "decoder_groups", c->decoder_groups,
	    "decoder_residual", c->decoder_residual, "clone", c->clone,
	    "mask_noise_std", c->mask_noise_std, "cls_loss", c->cls_loss,
	    "loss_scale", c->loss_scale, "mean", mean, "std", std,
	    "lr", c->lr, "min_lr", c->min_lr, "warmup", (json_int_t)c->warmup,
	    "max_update", (json_int_t)c->max_update, "beta1", c->beta1,
	    "beta2", c->beta2, "eps", c->eps, "weight_decay", c->weight_decay,
	    "clip_norm", c->clip_norm, "ema_decay", c->ema_decay,
	    "ema_end_decay", c->ema_end_decay,
	    "ema_anneal_end_step", (json_int_t)c->ema_anneal_end_step,
	    "min_target_var", c->min_target_var,
	    "min_pred_var", c->min_pred_var, "batch", c->batch,
	    "seed", (json_int_t)c->seed);
	if (j != NULL)
		add_dropout(j, c);
	return j;
}

/* The regularisation keys, added after the pack above (jansson's pack
 * format has a practical length). */
static void
add_dropout(json_t *j, const d2v_config *c)
{
	json_object_set_new(j, "encoder_dropout", json_real(c->encoder_dropout));
	json_object_set_new(j, "attention_dropout", json_real(c->attention_dropout));
	json_object_set_new(j, "activation_dropout", json_real(c->activation_dropout));
	json_object_set_new(j, "post_mlp_drop", json_real(c->post_mlp_drop));
	json_object_set_new(j, "drop_path", json_real(c->drop_path));
	json_object_set_new(j, "embed_dropout", json_real(c->embed_dropout));
	json_object_set_new(j, "context_dropout", json_real(c->context_dropout));
	json_object_set_new(j, "input_dropout", json_real(c->input_dropout));
	json_object_set_new(j, "layerdrop", json_real(c->layerdrop));
	json_object_set_new(j, "decoder_proj_layers",
	    json_integer(c->decoder_proj_layers));
	json_object_set_new(j, "target_final_norm",
	    json_string(c->target_final_norm));
	json_object_set_new(j, "target_layer_norm",
	    json_string(c->target_layer_norm));
	json_object_set_new(j, "lr_schedule", json_string(c->lr_schedule));
	if (strcmp(c->lr_schedule, "tri_stage") == 0) {
		json_object_set_new(j, "hold", json_integer(c->hold));
		json_object_set_new(j, "init_lr_scale", json_real(c->init_lr_scale));
		json_object_set_new(j, "final_lr_scale",
		    json_real(c->final_lr_scale));
	}
	if (d2v_config_is_v1(c)) {
		json_object_set_new(j, "layer_scale", json_real(c->layer_scale));
		json_object_set_new(j, "loss_beta", json_real(c->loss_beta));
	}
	if (strcmp(c->modality, "audio") == 0) {
		json_object_set_new(j, "conv_dim", json_integer(c->conv_dim));
		json_object_set_new(j, "pos_conv_depth",
		    json_integer(c->pos_conv_depth));
		json_object_set_new(j, "pos_conv_kernel",
		    json_integer(c->pos_conv_kernel));
		json_object_set_new(j, "pos_conv_groups",
		    json_integer(c->pos_conv_groups));
		json_object_set_new(j, "alibi", json_boolean(c->alibi));
	}
	if (strcmp(c->modality, "text") == 0) {
		json_object_set_new(j, "vocab", json_integer(c->vocab));
		json_object_set_new(j, "max_positions",
		    json_integer(c->max_positions));
	}
}

static int
get_num(const json_t *j, const char *k, double *out, d2v_err *err)
{
	json_t *v = json_object_get(j, k);

	if (v == NULL)
		return 0;
	if (!json_is_number(v))
		return d2v_err_set(err, D2V_EFORMAT, "config: %s is not a "
		    "number", k);
	*out = json_number_value(v);
	return 0;
}

#define NUM(field, conv) do {                                             \
	double _v = NAN;                                                   \
	if (get_num(j, #field, &_v, err) < 0) return err->code;            \
	if (!isnan(_v)) c->field = (conv)_v;                               \
} while (0)

int
d2v_config_from_json(d2v_config *c, const json_t *j, d2v_err *err)
{
	const char *s;
	json_t *a, *v;
	size_t i;

	if (!json_is_object(j))
		return d2v_err_set(err, D2V_EFORMAT, "config is not a JSON object");
	if ((s = json_string_value(json_object_get(j, "modality"))) != NULL)
		snprintf(c->modality, sizeof c->modality, "%s", s);
	if ((s = json_string_value(json_object_get(j, "objective"))) != NULL)
		snprintf(c->objective, sizeof c->objective, "%s", s);
	NUM(image_size, int); NUM(patch, int); NUM(channels, int);
	NUM(dim, int); NUM(heads, int); NUM(mlp_dim, int);
	NUM(prenet_depth, int); NUM(depth, int); NUM(top_k, int);
	NUM(norm_eps, double); NUM(decoder_dim, int); NUM(decoder_kernel, int);
	NUM(decoder_layers, int); NUM(decoder_groups, int);
	if ((v = json_object_get(j, "decoder_residual")) != NULL)
		c->decoder_residual = json_is_true(v) ||
		    (json_is_integer(v) && json_integer_value(v) != 0);
	NUM(clone, int); NUM(mask_noise_std, double); NUM(cls_loss, double);
	NUM(loss_scale, double); NUM(lr, double); NUM(min_lr, double);
	NUM(warmup, long); NUM(max_update, long); NUM(beta1, double);
	NUM(beta2, double); NUM(eps, double); NUM(weight_decay, double);
	NUM(clip_norm, double); NUM(ema_decay, double);
	NUM(ema_end_decay, double); NUM(ema_anneal_end_step, long);
	NUM(min_target_var, double); NUM(min_pred_var, double);
	NUM(batch, int); NUM(seed, unsigned long long);
	NUM(encoder_dropout, double); NUM(attention_dropout, double);
	NUM(activation_dropout, double); NUM(post_mlp_drop, double);
	NUM(drop_path, double);
	NUM(embed_dropout, double); NUM(context_dropout, double);
	NUM(input_dropout, double); NUM(layerdrop, double);
	NUM(decoder_proj_layers, int); NUM(conv_dim, int);
	NUM(pos_conv_depth, int); NUM(pos_conv_kernel, int);
	NUM(pos_conv_groups, int); NUM(vocab, int); NUM(max_positions, int);
	NUM(layer_scale, double); NUM(loss_beta, double);
	if ((v = json_object_get(j, "alibi")) != NULL)
		c->alibi = json_is_true(v) ||
		    (json_is_integer(v) && json_integer_value(v) != 0);
	if ((s = json_string_value(json_object_get(j, "target_final_norm"))) != NULL)
		snprintf(c->target_final_norm, sizeof c->target_final_norm, "%s", s);
	if ((s = json_string_value(json_object_get(j, "target_layer_norm"))) != NULL)
		snprintf(c->target_layer_norm, sizeof c->target_layer_norm, "%s", s);
	else if (d2v_config_is_v1(c) && d2v_config_is_image(c))
		/* checkpoints from before the key: v1 images LN */
		snprintf(c->target_layer_norm, sizeof c->target_layer_norm, "ln");
	if ((s = json_string_value(json_object_get(j, "lr_schedule"))) != NULL)
		snprintf(c->lr_schedule, sizeof c->lr_schedule, "%s", s);
	NUM(hold, long); NUM(init_lr_scale, double); NUM(final_lr_scale, double);
	a = json_object_get(j, "mean");
	json_array_foreach(a, i, v)
		if (i < 3 && json_is_number(v))
			c->mean[i] = json_number_value(v);
	a = json_object_get(j, "std");
	json_array_foreach(a, i, v)
		if (i < 3 && json_is_number(v))
			c->std[i] = json_number_value(v);
	return 0;
}
