/*
 * mask.h - the masking strategies of data2vec (v1) and data2vec 2.0 (v2).
 *
 * A mask says which tokens of a sample the student must predict: a row of N
 * bytes, 1 = masked.  d2v draws M rows ("copies", v2's clone_batch) per
 * sample; the rows of one sample are a (M, N) buffer, row-major.  The
 * algorithms and their numbers are the reference's (../shared/DATA2VEC.md
 * §4; fairseq data_utils.py, BEiT masking_generator.py, fairseq
 * mask_tokens_dataset.py and data2vec2 base.py), including their quirks:
 * centres drawn with replacement and clamped at the border, the exact-count
 * trim and fill, the span equalisation to the smallest row.
 *
 * Letters: M rows (copies) of one sample; N tokens per row; for the 2-D
 * strategies the tokens are a GH x GW grid in row-major order (N = GH*GW,
 * square in the reference: GH = GW = image size / patch).
 *
 *     d2v_mask_config c;
 *     d2v_mask_config_default(&c, D2V_MASK_INVERSE_BLOCK);   // R 0.8, A 0.07, 3
 *     d2v_rng rng[16];
 *     for (int m = 0; m < 16; m++)
 *         d2v_rng_seed(&rng[m], seed, record_index, m);      // row m's stream
 *     uint8_t mask[16 * 196];                                // mask is (M, N)
 *     if (d2v_mask_rows(&c, 14, 14, 16, rng, mask, &err) < 0) ...
 *     // every row now has exactly 157 ones
 *
 * Row m is drawn from rng[m] alone, so the masks of a sample depend on the
 * keys of its generators and nothing else; only span masking's equalisation
 * looks across the rows (to the smallest row count, as the reference does
 * across its batch).
 *
 * The strategies:
 *   inverse-block  v2 images (compute_block_mask_2d, inverse_mask): pick
 *                  n_c = floor(N (1-R+A) / B^2) centres with replacement,
 *                  keep the B x B block around each (clamped to the grid),
 *                  trim or fill to exactly floor(N (1-R)) kept, invert.
 *   block          v1 images (BEiT MaskingGenerator): rectangles of area
 *                  U(min, budget) and log-uniform aspect until `count`
 *                  patches are masked or ten attempts add nothing.
 *   block1d        v2 audio (compute_block_mask_1d): n_c = floor(N (R+A)/L)
 *                  centres, spans of L clamped to [0, N-1], exactly
 *                  floor(N R) masked.
 *   span           v1 audio (compute_mask_indices, static lengths): per row
 *                  max(min_masks, floor(R N / L + u)) distinct starts, spans
 *                  of L; rows trimmed to the smallest row count.
 *   random         v2 text (random_masking): exactly N - floor(N (1-R))
 *                  masked, a uniform subset.
 *   bert           v1 text (MaskTokensDataset): floor(R N / L + u) distinct
 *                  starts in [0, N), spans of L; of the selected tokens a
 *                  fraction becomes <mask>, some a random id, some stay.
 */
#ifndef D2V_MASK_H
#define D2V_MASK_H

#include <stdint.h>

#include "err.h"
#include "rng.h"

typedef enum d2v_mask_strategy {
	D2V_MASK_INVERSE_BLOCK,  /* v2 image */
	D2V_MASK_BLOCK,          /* v1 image (BEiT) */
	D2V_MASK_BLOCK1D,        /* v2 audio */
	D2V_MASK_SPAN,           /* v1 audio */
	D2V_MASK_RANDOM,         /* v2 text */
	D2V_MASK_BERT,           /* v1 text */
	D2V_MASK_COUNT
} d2v_mask_strategy;

/* "inverse-block", "block", "block1d", "span", "random", "bert". */
const char *d2v_mask_strategy_name(d2v_mask_strategy s);
/* Parses a strategy name; 0, or D2V_EINVAL for an unknown one. */
int d2v_mask_strategy_parse(const char *name, d2v_mask_strategy *s);
/* 1 for the strategies over a 2-D grid (inverse-block, block). */
int d2v_mask_strategy_is_2d(d2v_mask_strategy s);

/*
 * Every parameter of every strategy; a strategy reads only its own (the
 * reference's names in brackets).  d2v_mask_config_default() fills the
 * reference's values for base models.
 */
typedef struct d2v_mask_config {
	d2v_mask_strategy strategy;
	/* R [mask_prob]: inverse-block 0.8, block1d 0.5, span 0.65,
	 * random 0.48, bert 0.15.  In (0, 1). */
	double prob;
	/* A [mask_prob_adjust]: inverse-block 0.07, block1d 0.05. */
	double adjust;
	/* [mask_length]: block width B (inverse-block 3, >= 2), span length
	 * (block1d 5, span 10), bert's mask_multiple_length (1). */
	int length;
	/* [inverse_mask]: the blocks mark what is KEPT (inverse-block 1,
	 * block1d 0). */
	int inverse;
	/* span [min_masks]: at least this many spans per row (1). */
	int min_masks;
	/* block (BEiT): [num_masking_patches] patches to mask (0: 120 of 196,
	 * scaled to other grids as round(N 120/196)); [min_num_patches] 16;
	 * [max_num_patches] per rectangle (0: N); aspect ratios 0.3 .. 1/0.3
	 * (max_aspect 0: 1/min_aspect). */
	int count, min_patches, max_patches;
	double min_aspect, max_aspect;
	/* bert: [leave_unmasked_prob] 0.1 and [random_token_prob] 0.1 of the
	 * selected tokens; the released config (span 4, R 0.35) uses 0, 0. */
	double leave_unmasked, random_token;
} d2v_mask_config;

/* The reference's base-model defaults for strategy s. */
void d2v_mask_config_default(d2v_mask_config *c, d2v_mask_strategy s);
/* The large-model values where they differ (inverse-block R 0.75 A 0.10,
 * block1d R 0.55 A 0.1, random R 0.5); other strategies are unchanged. */
void d2v_mask_config_large(d2v_mask_config *c);
/* Checks the ranges: prob in (0, 1), adjust in [0, 1), length >= 1
 * (>= 2 for inverse-block), leave_unmasked + random_token <= 1, ...
 * Returns 0 or D2V_EINVAL naming the parameter. */
int d2v_mask_config_check(const d2v_mask_config *c, d2v_err *err);

/* BEiT's num_masking_patches for n tokens: c->count, or round(n 120/196)
 * when c->count is 0 (120 at 14 x 14). */
int64_t d2v_mask_block_count(const d2v_mask_config *c, int64_t n);

/*
 * Frames of the conv feature encoder (kernels 10,3,3,3,3,2,2, strides
 * 5,2,2,2,2,2,2, no padding: L = floor((L - k) / s) + 1 per layer) for a
 * waveform of `samples` samples; 0 when it is shorter than the receptive
 * field (400 samples).  160000 samples (10 s at 16 kHz) give 499 frames.
 */
int64_t d2v_mask_audio_frames(int64_t samples);

/*
 * Whether a GH x GW grid (GH = 1 for 1-D strategies; N = GH*GW) is big
 * enough for the strategy to mask something and leave something: 0, or
 * D2V_EINVAL with a message such as "4 tokens are too few for
 * inverse-block: it would mask all of them".  Deterministic: depends on
 * the config and the size only.
 */
int d2v_mask_check_size(const d2v_mask_config *c, int64_t gh, int64_t gw,
    d2v_err *err);

/*
 * The masks of one sample: M rows of N = GH*GW, row m drawn from rng[m].
 * mask is (M, N), fully written.  For every strategy but bert (which needs
 * the ids: d2v_mask_bert).  GH is 1 for the 1-D strategies.  Returns 0 or
 * a negative code: D2V_EINVAL when the size is too small (see
 * d2v_mask_check_size) or when span masking covers a whole row (the
 * reference's "the entire sequence is masked"), D2V_ENOMEM.
 */
int d2v_mask_rows(const d2v_mask_config *c, int64_t gh, int64_t gw, int M,
    d2v_rng *rng, uint8_t *mask, d2v_err *err);

/* The single-row algorithms behind d2v_mask_rows; row is (N). */
int d2v_mask_block2d(const d2v_mask_config *c, int64_t gh, int64_t gw,
    d2v_rng *r, uint8_t *row, d2v_err *err);
int d2v_mask_beit(const d2v_mask_config *c, int64_t gh, int64_t gw,
    d2v_rng *r, uint8_t *row, d2v_err *err);
int d2v_mask_block1d(const d2v_mask_config *c, int64_t n, d2v_rng *r,
    uint8_t *row, d2v_err *err);
int d2v_mask_random(const d2v_mask_config *c, int64_t n, d2v_rng *r,
    uint8_t *row, d2v_err *err);
/* Span masking over M rows, with the equalisation; mask is (M, N). */
int d2v_mask_span(const d2v_mask_config *c, int64_t n, int M, d2v_rng *rng,
    uint8_t *mask, d2v_err *err);

/* The ids bert masking needs. */
typedef struct d2v_mask_vocab {
	int64_t size;          /* V: valid ids are 0 .. V-1 */
	int32_t mask;          /* the <mask> id, in [0, V) */
	int32_t special[8];    /* ids never drawn as random replacements */
	int nspecial;          /* (bos, eos, pad, unk, mask; fairseq's nspecial) */
} d2v_mask_vocab;

/*
 * BERT masking of one row of ids (MaskTokensDataset).  x is (N), the ids;
 * row is (N), set to 1 at every selected token (replaced or not); xm is
 * (N), x with the selected tokens replaced: <mask> for most, a uniform
 * non-special id for a random_token share, unchanged for a leave_unmasked
 * share (the split is drawn per token, as the reference does).  Returns 0,
 * or D2V_EINVAL when x holds an id outside [0, V) or the mask id itself.
 */
int d2v_mask_bert(const d2v_mask_config *c, const d2v_mask_vocab *v,
    const int32_t *x, int64_t n, d2v_rng *r, uint8_t *row, int32_t *xm,
    d2v_err *err);

/*
 * Batching samples of different lengths (audio, text): each of `rows` rows
 * of n_in positions keeps positions [off, off + n) into out (rows, n).
 */
void d2v_mask_crop(uint8_t *out, const uint8_t *in, int rows, int64_t n_in,
    int64_t off, int64_t n);
/*
 * Equalises the masked count of rows (rows, n) to the smallest row's: a row
 * with more masked positions unmasks a uniformly drawn subset of them (the
 * reference's require_same_masks trim, DATA2VEC.md §4.7).  Returns the
 * masked count every row then has.
 */
int64_t d2v_mask_equalize(uint8_t *mask, int rows, int64_t n, d2v_rng *r);

#endif
