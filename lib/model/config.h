/*
 * config.h - the whole model and training configuration.
 *
 * One struct describes a run: the model sizes, the objective and every
 * hyperparameter.  It is stored as JSON in every checkpoint
 * (d2v_config_to_json / d2v_config_from_json), so a checkpoint alone is
 * enough to resume, run the teacher or evaluate.
 *
 * Presets (d2v_config_preset): tiny 192/12/3, small 384/12/6, base 768/12/12,
 * large 1024/24/16 (dim / blocks / heads); the data2vec 2.0 image base
 * recipe otherwise (DATA2VEC.md §§2.1, 3, 5, 6, 7.4, 8, 9).
 */
#ifndef D2V_CONFIG_H
#define D2V_CONFIG_H

#include <jansson.h>

#include "err.h"

typedef struct d2v_config {
	/* model */
	char modality[16];      /* "image", "audio" or "text" */
	char objective[8];      /* "v2", or "v1" (images) */
	int image_size;         /* H = W */
	int patch;              /* P */
	int channels;           /* C */
	int dim;                /* D */
	int heads;              /* H */
	int mlp_dim;            /* F */
	int prenet_depth;       /* blocks before the main blocks */
	int depth;              /* main blocks */
	int top_k;              /* K: targets from the top K main blocks */
	double norm_eps;        /* encoder LayerNorms */
	int decoder_dim;        /* Dd */
	int decoder_kernel;
	int decoder_layers;
	int decoder_groups;
	int decoder_residual;
	int decoder_proj_layers; /* 1: Linear(Dd, D); 2: Linear(Dd, 2Dd), GELU, Linear(2Dd, D) */
	/* audio: the conv feature encoder (wav2vec 2.0 kernels and strides, C
	 * channels), the conv positional encoder, ALiBi */
	int conv_dim;           /* C */
	int pos_conv_depth, pos_conv_kernel, pos_conv_groups;
	int alibi;
	/* text: token and position tables */
	int vocab;              /* V */
	int max_positions;      /* position table rows - 2 */
	/* targets: the norm of each top-K block's output, "in" (instance
	 * norm over positions) or "ln" (per token); the final norm after
	 * averaging, "ln", "in" or "none" */
	char target_layer_norm[8];
	char target_final_norm[8];
	/* v1: LayerScale init of the pre-LN image blocks, Smooth-L1 beta of
	 * the loss (0: L2) */
	double layer_scale;
	double loss_beta;
	int clone;              /* M masked copies per sample */
	double mask_noise_std;
	double cls_loss;
	double loss_scale;      /* 0: 1/sqrt(D) */
	double mean[3], std[3]; /* input normalisation per channel */
	/* student-only regularisation (0 in the image recipe) */
	double encoder_dropout;    /* after the attention projection */
	double attention_dropout;  /* on the attention probabilities */
	double activation_dropout; /* after the GELU and after fc2 */
	double post_mlp_drop;      /* on the FFN output before its residual */
	double drop_path;          /* stochastic depth, 0 -> this over blocks */
	double embed_dropout;      /* text: after the embedding LayerNorm */
	double context_dropout;    /* audio: after the context LayerNorm */
	double input_dropout;      /* on the encoder output entering the decoder */
	double layerdrop;          /* probability of skipping a main block */
	/* training */
	char lr_schedule[12];   /* "cosine" or "tri_stage" */
	double lr, min_lr;
	long warmup, max_update;
	long hold;              /* tri_stage: updates at the peak after warmup */
	double init_lr_scale, final_lr_scale; /* tri_stage: lr at the start
	                         * of warmup, after the decay, times lr */
	double beta1, beta2, eps, weight_decay, clip_norm;
	double ema_decay, ema_end_decay;
	long ema_anneal_end_step;
	double min_target_var, min_pred_var;
	int batch;              /* B samples per update */
	unsigned long long seed;
} d2v_config;

/* Fills cfg with a preset ("tiny", "small", "base", "large") of the image
 * recipe; D2V_EINVAL for an unknown name. */
int d2v_config_preset(d2v_config *cfg, const char *name, d2v_err *err);
/* Switches cfg (fresh from d2v_config_preset) to the v2 recipe of modality
 * "image", "audio" or "text" (DATA2VEC.md §§2-9): block counts, top-K,
 * decoder, dropouts, optimiser, EMA.  D2V_EINVAL for another modality. */
int d2v_config_modality(d2v_config *cfg, const char *modality, d2v_err *err);
/* Switches cfg (after d2v_config_modality) to the data2vec (v1) recipe
 * of its modality (DATA2VEC.md §§2-9): the whole sequence through the
 * student with masked positions replaced by a learned vector, no decoder;
 * images: BEiT's pre-LN blocks with LayerScale, Smooth-L1 beta 2; audio:
 * post-LN blocks, final_proj, L2, tri-stage lr; text: post-LN blocks, a
 * two-layer regression head, Smooth-L1 beta 4.  "v2" leaves cfg as it is;
 * D2V_EINVAL for another objective. */
int d2v_config_objective(d2v_config *cfg, const char *objective,
    d2v_err *err);
/* 1 for the v1 objective. */
int d2v_config_is_v1(const d2v_config *cfg);
/* 1 for images (CLS token, 2-D decoder), 0 for audio and text. */
int d2v_config_is_image(const d2v_config *cfg);
/* Checks sizes agree (heads divide dim, patch divides size...). */
int d2v_config_check(const d2v_config *cfg, d2v_err *err);
/* Tokens per sample: (image_size / patch)^2 for images; 0 for audio and
 * text, whose length is the sample's. */
int d2v_config_tokens(const d2v_config *cfg);
json_t *d2v_config_to_json(const d2v_config *cfg);
/* Reads every key present in j over the values already in cfg. */
int d2v_config_from_json(d2v_config *cfg, const json_t *j, d2v_err *err);

#endif
