/*
 * params.h - the flat parameter buffer and its table of named views.
 *
 * Every parameter of the model lives in one float array, laid out by a
 * table of (name, shape, offset).  Gradients, Adam moments and the EMA
 * teacher are arrays of the same size and layout, so the optimiser and the
 * EMA update are single loops over flat memory (llm.c style).  Names and
 * shapes are PyTorch's (tests/ref/README.md), so a checkpoint reads as the
 * state dict of the reference model.
 */
#ifndef D2V_PARAMS_H
#define D2V_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "err.h"

#define D2V_PARAM_NAME 64

typedef struct d2v_param {
	char name[D2V_PARAM_NAME];
	int rank;
	int64_t shape[8];
	size_t offset;       /* in floats */
	size_t size;         /* in floats */
	int decay;           /* weight decay applies (not rank 1, not .bias) */
	int teacher;         /* in the teacher (before teacher_end): averaged,
	                      * or copied when shared (before teacher_begin) */
} d2v_param;

/* Offsets (in floats) of one block's tensors. */
typedef struct d2v_block_off {
	size_t qkv_w, qkv_b;     /* [3D, D], [3D] */
	size_t proj_w, proj_b;   /* [D, D], [D] */
	size_t norm1_w, norm1_b; /* [D] */
	size_t fc1_w, fc1_b;     /* [F, D], [F] */
	size_t fc2_w, fc2_b;     /* [D, F], [D] */
	size_t norm2_w, norm2_b; /* [D] */
	size_t gamma1, gamma2;   /* v1: LayerScale [D] */
} d2v_block_off;

/* The wav2vec 2.0 feature encoder: (kernel, stride) of its 7 layers. */
#define D2V_CONV_LAYERS 7
extern const int d2v_conv_kernel[D2V_CONV_LAYERS];
extern const int d2v_conv_stride[D2V_CONV_LAYERS];

typedef struct d2v_layout {
	d2v_param *p;            /* count entries */
	int count;
	size_t total;            /* floats */
	/* named offsets for the model code (0 where the modality has none) */
	size_t patch_w, patch_b; /* image: [D, C, P, P], [D] */
	size_t cls;              /* image: [1, 1, D] */
	size_t mask_tok;         /* v1: image [1, 1, D]; audio mask_emb [D] */
	size_t norm_w, norm_b;   /* v1 image: final LayerNorm [D] */
	size_t head_w, head_b;   /* v1: image head, audio final_proj [D, D],
	                          * [D]; text regression_head.0 [2D, D], [2D] */
	size_t head2_w, head2_b; /* v1 text: regression_head.2 [D, 2D], [D] */
	size_t conv_w[D2V_CONV_LAYERS];  /* audio: [C, Cin, k] */
	size_t conv_nw[D2V_CONV_LAYERS], conv_nb[D2V_CONV_LAYERS]; /* [C] */
	size_t fnorm_w, fnorm_b; /* audio: [C] */
	size_t fproj_w, fproj_b; /* audio: [D, C], [D] */
	size_t *pos_w, *pos_b;   /* audio, pos_conv_depth: [D, D/g, k], [D] */
	size_t alibi;            /* audio: [1, 1, H, 1, 1] */
	size_t emb_tok, emb_pos; /* text: [V, D], [max_positions + 2, D] */
	size_t emb_nw, emb_nb;   /* text: [D] */
	int has_ctx;             /* the context LayerNorm exists */
	size_t ctx_w, ctx_b;     /* [D] */
	d2v_block_off *blocks;   /* prenet_depth + depth */
	size_t *dec_w, *dec_b;   /* decoder_layers: [Dd, Cin/G, k(, k)], [Dd] */
	size_t dproj_w, dproj_b; /* [D, Dd], [D]; or [2Dd, Dd], [2Dd] */
	size_t dproj2_w, dproj2_b; /* 2-layer projection: [D, 2Dd], [D] */
	/* [0, teacher_begin): shared with the teacher (copied each update);
	 * [teacher_begin, teacher_end): the teacher's own, averaged */
	size_t teacher_begin, teacher_end;
} d2v_layout;

int d2v_layout_init(d2v_layout *l, const d2v_config *cfg, d2v_err *err);
void d2v_layout_free(d2v_layout *l);
/* The entry named name, or NULL. */
const d2v_param *d2v_layout_find(const d2v_layout *l, const char *name);

/* Initialises params (total floats) as the reference does: Linear and
 * Embedding weights N(0, 0.02) and zero biases (init_bert_params), the patch
 * embedding xavier-uniform on its (D, C*P*P) view, the CLS token N(0, 1),
 * LayerNorms 1 and 0, the audio feature convolutions kaiming-normal, the
 * audio projection, positional convolutions and the decoder convolutions
 * with PyTorch's defaults, the decoder projection with PyTorch's defaults
 * (images, audio) or N(0, 0.02) (text), ALiBi scales 1; v1 audio and
 * text likewise, with mask_emb U[0, 1), final_proj PyTorch's default and
 * the regression head N(0, 0.02).  v1 images (BEiT):
 * weights, CLS and mask tokens truncated N(0, 0.02) at one std, the
 * attention projection and fc2 of block i (1-based) divided by sqrt(2i),
 * LayerScale gammas layer_scale. */
void d2v_params_init(const d2v_layout *l, const d2v_config *cfg,
    float *params, uint64_t seed);

#endif
