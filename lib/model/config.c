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
d2v_config_tokens(const d2v_config *c)
{
	int g = c->patch > 0 ? c->image_size / c->patch : 0;

	return g * g;
}

int
d2v_config_check(const d2v_config *c, d2v_err *err)
{
	if (strcmp(c->modality, "image") != 0 || strcmp(c->objective, "v2") != 0)
		return d2v_err_set(err, D2V_EINVAL, "only the data2vec 2.0 image "
		    "model is implemented (got %s %s)", c->objective, c->modality);
	if (c->patch <= 0 || c->image_size <= 0 || c->image_size % c->patch)
		return d2v_err_set(err, D2V_EINVAL, "image size %d is not a "
		    "multiple of the patch size %d", c->image_size, c->patch);
	if (c->channels < 1 || c->channels > 3)
		return d2v_err_set(err, D2V_EINVAL, "channels must be 1 to 3");
	if (c->dim <= 0 || c->heads <= 0 || c->dim % c->heads)
		return d2v_err_set(err, D2V_EINVAL, "%d heads do not divide "
		    "width %d", c->heads, c->dim);
	if (c->dim % 4)
		return d2v_err_set(err, D2V_EINVAL, "width %d is not a multiple "
		    "of 4 (2-D sin-cos positions)", c->dim);
	if (c->mlp_dim <= 0 || c->depth <= 0 || c->prenet_depth < 0)
		return d2v_err_set(err, D2V_EINVAL, "bad depth or MLP size");
	if (c->top_k < 1 || c->top_k > c->depth)
		return d2v_err_set(err, D2V_EINVAL, "top-K %d must be in 1..%d "
		    "(main blocks)", c->top_k, c->depth);
	if (c->decoder_dim <= 0 || c->decoder_layers < 1 ||
	    c->decoder_kernel < 1 || c->decoder_kernel % 2 == 0 ||
	    c->decoder_groups < 1 || c->dim % c->decoder_groups ||
	    c->decoder_dim % c->decoder_groups)
		return d2v_err_set(err, D2V_EINVAL, "decoder: groups %d must "
		    "divide widths %d and %d, kernel must be odd",
		    c->decoder_groups, c->dim, c->decoder_dim);
	if (c->clone < 1 || c->batch < 1)
		return d2v_err_set(err, D2V_EINVAL, "clone and batch must be >= 1");
	for (int i = 0; i < c->channels; i++)
		if (!(c->std[i] > 0))
			return d2v_err_set(err, D2V_EINVAL, "std must be > 0");
	if (c->beta1 < 0 || c->beta1 >= 1 || c->beta2 < 0 || c->beta2 >= 1)
		return d2v_err_set(err, D2V_EINVAL, "Adam betas must be in [0,1)");
	if (c->encoder_dropout < 0 || c->encoder_dropout >= 1 ||
	    c->attention_dropout < 0 || c->attention_dropout >= 1 ||
	    c->activation_dropout < 0 || c->activation_dropout >= 1 ||
	    c->post_mlp_drop < 0 || c->post_mlp_drop >= 1 ||
	    c->drop_path < 0 || c->drop_path >= 1)
		return d2v_err_set(err, D2V_EINVAL, "dropout rates must be in "
		    "[0, 1)");
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
