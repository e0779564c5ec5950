/* mask.c - see mask.h.  The reference routine of each function is named
 * above it; its arithmetic (double precision, truncation by int()) is kept
 * so that the counts agree with the reference's for every N. */
#include "mask.h"
#include "model/params.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const strategy_names[D2V_MASK_COUNT] = {
	"inverse-block", "block", "block1d", "span", "random", "bert",
};

const char *
d2v_mask_strategy_name(d2v_mask_strategy s)
{
	return (unsigned)s < D2V_MASK_COUNT ? strategy_names[s] : NULL;
}

int
d2v_mask_strategy_parse(const char *name, d2v_mask_strategy *s)
{
	for (int i = 0; i < D2V_MASK_COUNT; i++) {
		if (strcmp(name, strategy_names[i]) == 0) {
			*s = (d2v_mask_strategy)i;
			return 0;
		}
	}
	return D2V_EINVAL;
}

int
d2v_mask_strategy_is_2d(d2v_mask_strategy s)
{
	return s == D2V_MASK_INVERSE_BLOCK || s == D2V_MASK_BLOCK;
}

void
d2v_mask_config_default(d2v_mask_config *c, d2v_mask_strategy s)
{
	memset(c, 0, sizeof *c);
	c->strategy = s;
	c->min_masks = 1;
	c->min_patches = 16;
	c->min_aspect = 0.3;
	switch (s) {
	case D2V_MASK_INVERSE_BLOCK:
		/* DATA2VEC.md §4.4, config/v2/base_images_only_task.yaml */
		c->prob = 0.8;
		c->adjust = 0.07;
		c->length = 3;
		c->inverse = 1;
		break;
	case D2V_MASK_BLOCK:
		/* §4.1: 120 of 196 (count 0: scaled to N), blocks >= 16,
		 * aspect 0.3 .. 1/0.3; prob is not used */
		c->length = 1;
		break;
	case D2V_MASK_BLOCK1D:
		/* §4.5, config/v2/base_audio_only_task.yaml */
		c->prob = 0.5;
		c->adjust = 0.05;
		c->length = 5;
		break;
	case D2V_MASK_SPAN:
		/* §4.2, config/audio/pretraining/base_librispeech.yaml */
		c->prob = 0.65;
		c->length = 10;
		break;
	case D2V_MASK_RANDOM:
		/* §4.6, config/v2/base_text_only_task.yaml */
		c->prob = 0.48;
		c->length = 1;
		break;
	case D2V_MASK_BERT:
		/* §4.3, the paper's default */
		c->prob = 0.15;
		c->length = 1;
		c->leave_unmasked = 0.1;
		c->random_token = 0.1;
		break;
	default:
		break;
	}
}

void
d2v_mask_config_large(d2v_mask_config *c)
{
	switch (c->strategy) {
	case D2V_MASK_INVERSE_BLOCK:
		c->prob = 0.75;
		c->adjust = 0.10;
		break;
	case D2V_MASK_BLOCK1D:
		c->prob = 0.55;
		c->adjust = 0.1;
		break;
	case D2V_MASK_RANDOM:
		c->prob = 0.5;
		break;
	default:
		break;
	}
}

int
d2v_mask_config_check(const d2v_mask_config *c, d2v_err *err)
{
	const char *s = d2v_mask_strategy_name(c->strategy);

	if (s == NULL)
		return d2v_err_set(err, D2V_EINVAL, "unknown mask strategy %d",
		    (int)c->strategy);
	if (c->strategy != D2V_MASK_BLOCK &&
	    !(c->prob > 0.0 && c->prob < 1.0))
		return d2v_err_set(err, D2V_EINVAL, "%s: the masking "
		    "probability %g is not in (0, 1)", s, c->prob);
	switch (c->strategy) {
	case D2V_MASK_INVERSE_BLOCK:
	case D2V_MASK_BLOCK1D:
		if (!(c->adjust >= 0.0 && c->adjust < 1.0))
			return d2v_err_set(err, D2V_EINVAL, "%s: the adjustment "
			    "%g is not in [0, 1)", s, c->adjust);
		if (c->length < (c->strategy == D2V_MASK_INVERSE_BLOCK ? 2 : 1))
			return d2v_err_set(err, D2V_EINVAL, "%s: block length "
			    "%d is too small (at least %d)", s, c->length,
			    c->strategy == D2V_MASK_INVERSE_BLOCK ? 2 : 1);
		break;
	case D2V_MASK_SPAN:
		if (c->length < 1)
			return d2v_err_set(err, D2V_EINVAL, "span: length %d is "
			    "not positive", c->length);
		if (c->min_masks < 1)
			return d2v_err_set(err, D2V_EINVAL, "span: min_masks %d "
			    "is not positive", c->min_masks);
		break;
	case D2V_MASK_BLOCK:
		if (c->count < 0 || c->min_patches < 1 || c->max_patches < 0)
			return d2v_err_set(err, D2V_EINVAL, "block: patch "
			    "counts must be positive (count %d, min %d, max %d)",
			    c->count, c->min_patches, c->max_patches);
		if (!(c->min_aspect > 0.0) || c->max_aspect < 0.0 ||
		    (c->max_aspect > 0.0 && c->max_aspect < c->min_aspect))
			return d2v_err_set(err, D2V_EINVAL, "block: aspect "
			    "ratios %g .. %g are not 0 < min <= max", c->min_aspect,
			    c->max_aspect);
		break;
	case D2V_MASK_BERT:
		if (c->length < 1)
			return d2v_err_set(err, D2V_EINVAL, "bert: span %d is "
			    "not positive", c->length);
		if (!(c->leave_unmasked >= 0.0 && c->random_token >= 0.0 &&
		    c->leave_unmasked + c->random_token <= 1.0))
			return d2v_err_set(err, D2V_EINVAL, "bert: leave-unmasked "
			    "%g and random-token %g must be >= 0 with a sum <= 1",
			    c->leave_unmasked, c->random_token);
		break;
	default:
		break;
	}
	return 0;
}

int64_t
d2v_mask_block_count(const d2v_mask_config *c, int64_t n)
{
	if (c->count > 0)
		return c->count;
	return (int64_t)llround((double)n * 120.0 / 196.0);
}

int64_t
d2v_mask_audio_frames(int64_t samples)
{
	/* the model's feature encoder (params.h), DATA2VEC.md §2.2 */
	int64_t l = samples;

	for (int i = 0; i < D2V_CONV_LAYERS; i++) {
		if (l < d2v_conv_kernel[i])
			return 0;
		l = (l - d2v_conv_kernel[i]) / d2v_conv_stride[i] + 1;
	}
	return l;
}

/* The count that the exact-count strategies hold every row to: floor(N p)
 * of the reference (int(L * mask_prob)), in the same double arithmetic. */
static int64_t
exact_target(int64_t n, double p)
{
	return (int64_t)((double)n * p);
}

int
d2v_mask_check_size(const d2v_mask_config *c, int64_t gh, int64_t gw,
    d2v_err *err)
{
	const char *s = d2v_mask_strategy_name(c->strategy);
	int64_t n = gh * gw, masked = -1;

	if (gh < 1 || gw < 1)
		return d2v_err_set(err, D2V_EINVAL, "no tokens to mask");
	switch (c->strategy) {
	case D2V_MASK_INVERSE_BLOCK:
	case D2V_MASK_BLOCK1D: {
		double p = c->inverse ? 1.0 - c->prob : c->prob;
		int64_t t = exact_target(n, p);

		masked = c->inverse ? n - t : t;
		break;
	}
	case D2V_MASK_RANDOM:
		masked = n - exact_target(n, 1.0 - c->prob);
		break;
	case D2V_MASK_SPAN:
		if (n <= c->length)
			return d2v_err_set(err, D2V_EINVAL, "%lld tokens are "
			    "too few for span masking with spans of %d",
			    (long long)n, c->length);
		break;
	case D2V_MASK_BLOCK:
		if (gh < 2 || gw < 2)
			return d2v_err_set(err, D2V_EINVAL, "a %lldx%lld grid is "
			    "too small for block masking (at least 2x2)",
			    (long long)gh, (long long)gw);
		if (d2v_mask_block_count(c, n) < 1)
			return d2v_err_set(err, D2V_EINVAL, "%lld tokens are "
			    "too few for block masking: it would mask none",
			    (long long)n);
		if (d2v_mask_block_count(c, n) >= n)
			return d2v_err_set(err, D2V_EINVAL, "block masking of %lld "
			    "of %lld patches would mask all of them: --count must "
			    "be below the patch count", (long long)
			    d2v_mask_block_count(c, n), (long long)n);
		if (c->min_patches > d2v_mask_block_count(c, n))
			return d2v_err_set(err, D2V_EINVAL, "--min-patches %d is "
			    "above the %lld patches to mask: the rectangles drawn "
			    "would not fit the count, and the masks would be "
			    "empty; lower --min-patches", c->min_patches,
			    (long long)d2v_mask_block_count(c, n));
		if (c->max_patches > 0 && c->max_patches < c->min_patches)
			return d2v_err_set(err, D2V_EINVAL, "--max-patches %d is "
			    "below --min-patches %d", c->max_patches,
			    c->min_patches);
		break;
	default:
		break;
	}
	if (masked >= 0 && masked < 1)
		return d2v_err_set(err, D2V_EINVAL, "%lld tokens are too few "
		    "for %s at probability %g: it would mask none of them",
		    (long long)n, s, c->prob);
	if (masked >= n)
		return d2v_err_set(err, D2V_EINVAL, "%lld tokens are too few "
		    "for %s at probability %g: it would mask all of them",
		    (long long)n, s, c->prob);
	return 0;
}

/* ---- helpers ---------------------------------------------------------- */

static int64_t
row_count(const uint8_t *row, int64_t n)
{
	int64_t k = 0;

	for (int64_t i = 0; i < n; i++)
		k += row[i];
	return k;
}

/*
 * Sets k positions chosen uniformly without replacement among those with
 * row[i] == from to 1 - from (torch.multinomial over a 0/1 weight vector
 * without replacement, numpy choice(replace=False)).  idx is scratch (N).
 */
static void
flip_some(uint8_t *row, int64_t n, uint8_t from, int64_t k, d2v_rng *r,
    int64_t *idx)
{
	int64_t c = 0;

	for (int64_t i = 0; i < n; i++)
		if (row[i] == from)
			idx[c++] = i;
	if (k > c)
		k = c;
	for (int64_t t = 0; t < k; t++) {
		int64_t j = t + (int64_t)d2v_rng_below(r, (uint64_t)(c - t));
		int64_t v = idx[j];

		idx[j] = idx[t];
		idx[t] = v;
		row[v] = (uint8_t)(1 - from);
	}
}

/* The first k of a uniform random permutation of [0, range) into out
 * (numpy choice(range, k, replace=False)); idx is scratch (range). */
static void
choose_distinct(int64_t range, int64_t k, d2v_rng *r, int64_t *idx,
    int64_t *out)
{
	for (int64_t i = 0; i < range; i++)
		idx[i] = i;
	for (int64_t t = 0; t < k; t++) {
		int64_t j = t + (int64_t)d2v_rng_below(r, (uint64_t)(range - t));
		int64_t v = idx[j];

		idx[j] = idx[t];
		idx[t] = v;
		out[t] = v;
	}
}

/* require_same_masks of compute_block_mask_*: trim to, or fill up to,
 * exactly target ones. */
static void
exact_count(uint8_t *row, int64_t n, int64_t target, d2v_rng *r,
    int64_t *idx)
{
	int64_t k = row_count(row, n);

	if (k > target)
		flip_some(row, n, 1, k - target, r, idx);
	else if (k < target)
		flip_some(row, n, 0, target - k, r, idx);
}

static int64_t
clamp64(int64_t v, int64_t lo, int64_t hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

static int
nomem(d2v_err *err)
{
	return d2v_err_set(err, D2V_ENOMEM, "out of memory");
}

/* ---- strategies ------------------------------------------------------- */

/* data_utils.py compute_block_mask_2d, non_overlapping and expand_adjcent
 * off, mask_dropout 0.  row is (GH*GW). */
int
d2v_mask_block2d(const d2v_mask_config *c, int64_t gh, int64_t gw,
    d2v_rng *r, uint8_t *row, d2v_err *err)
{
	int64_t n = gh * gw, nc, off = c->length / 2;
	int64_t *idx;   /* scratch (N) */
	double p = c->inverse ? 1.0 - c->prob : c->prob;

	if (d2v_mask_check_size(c, gh, gw, err) < 0)
		return err ? err->code : D2V_EINVAL;
	if ((idx = malloc((size_t)n * sizeof *idx)) == NULL)
		return nomem(err);
	/* int(L * ((mask_prob + mask_prob_adjust) / mask_length**2)) centres,
	 * uniform over [0, L) with replacement (torch.randint) */
	nc = (int64_t)((double)n * ((p + c->adjust) /
	    (double)(c->length * c->length)));
	memset(row, 0, (size_t)n);
	for (int64_t k = 0; k < nc; k++) {
		int64_t ctr = (int64_t)d2v_rng_below(r, (uint64_t)n);
		int64_t cy = ctr / gw, cx = ctr % gw;

		/* the B x B block, each coordinate clamped to the grid */
		for (int i = 0; i < c->length; i++) {
			int64_t y = clamp64(cy + i - off, 0, gh - 1);

			for (int j = 0; j < c->length; j++)
				row[y * gw + clamp64(cx + j - off, 0, gw - 1)] = 1;
		}
	}
	exact_count(row, n, exact_target(n, p), r, idx);
	if (c->inverse)
		for (int64_t i = 0; i < n; i++)
			row[i] ^= 1;
	free(idx);
	return 0;
}

/* data_utils.py compute_block_mask_1d, as above.  row is (N). */
int
d2v_mask_block1d(const d2v_mask_config *c, int64_t n, d2v_rng *r,
    uint8_t *row, d2v_err *err)
{
	int64_t nc, off = c->length / 2;
	int64_t *idx;   /* scratch (N) */
	double p = c->inverse ? 1.0 - c->prob : c->prob;

	if (d2v_mask_check_size(c, 1, n, err) < 0)
		return err ? err->code : D2V_EINVAL;
	if ((idx = malloc((size_t)n * sizeof *idx)) == NULL)
		return nomem(err);
	nc = (int64_t)((double)n * ((p + c->adjust) / (double)c->length));
	memset(row, 0, (size_t)n);
	for (int64_t k = 0; k < nc; k++) {
		int64_t ctr = (int64_t)d2v_rng_below(r, (uint64_t)n);

		for (int i = 0; i < c->length; i++)
			row[clamp64(ctr + i - off, 0, n - 1)] = 1;
	}
	exact_count(row, n, exact_target(n, p), r, idx);
	if (c->inverse)
		for (int64_t i = 0; i < n; i++)
			row[i] ^= 1;
	free(idx);
	return 0;
}

/* base.py random_masking: keep len_keep = int(L * (1 - mask_ratio)) tokens
 * chosen uniformly (the argsort of uniform noise), mask the rest. */
int
d2v_mask_random(const d2v_mask_config *c, int64_t n, d2v_rng *r,
    uint8_t *row, d2v_err *err)
{
	int64_t *idx;   /* scratch (N) */

	if (d2v_mask_check_size(c, 1, n, err) < 0)
		return err ? err->code : D2V_EINVAL;
	if ((idx = malloc((size_t)n * sizeof *idx)) == NULL)
		return nomem(err);
	memset(row, 1, (size_t)n);
	flip_some(row, n, 1, exact_target(n, 1.0 - c->prob), r, idx);
	free(idx);
	return 0;
}

/* beit/masking_generator.py MaskingGenerator.__call__ and _mask.
 * Python's random.uniform(a, b) is a + (b - a) u, randint is inclusive,
 * round() is round-half-even (rint in the default rounding mode). */
int
d2v_mask_beit(const d2v_mask_config *c, int64_t gh, int64_t gw, d2v_rng *r,
    uint8_t *row, d2v_err *err)
{
	int64_t n = gh * gw, count, maxp, done = 0;
	double la0, la1;

	if (d2v_mask_check_size(c, gh, gw, err) < 0)
		return err ? err->code : D2V_EINVAL;
	count = d2v_mask_block_count(c, n);
	maxp = c->max_patches > 0 ? c->max_patches : n;
	la0 = log(c->min_aspect);
	la1 = log(c->max_aspect > 0.0 ? c->max_aspect : 1.0 / c->min_aspect);
	memset(row, 0, (size_t)n);
	while (done < count) {
		int64_t budget = count - done < maxp ? count - done : maxp;
		int64_t delta = 0;

		for (int attempt = 0; attempt < 10; attempt++) {
			double area = c->min_patches +
			    ((double)budget - c->min_patches) *
			    d2v_rng_uniform(r);
			double a = exp(la0 + (la1 - la0) * d2v_rng_uniform(r));
			int64_t h = (int64_t)rint(sqrt(area * a));
			int64_t w = (int64_t)rint(sqrt(area / a));

			if (w < gw && h < gh) {
				int64_t top = (int64_t)d2v_rng_below(r,
				    (uint64_t)(gh - h + 1));
				int64_t left = (int64_t)d2v_rng_below(r,
				    (uint64_t)(gw - w + 1));
				int64_t had = 0, fresh;

				for (int64_t y = top; y < top + h; y++)
					had += row_count(row + y * gw + left, w);
				fresh = h * w - had;
				if (fresh > 0 && fresh <= budget) {
					for (int64_t y = top; y < top + h; y++)
						memset(row + y * gw + left, 1,
						    (size_t)w);
					delta += fresh;
				}
				if (delta > 0)
					break;
			}
		}
		if (delta == 0)
			break;
		done += delta;
	}
	return 0;
}

/* data_utils.py compute_mask_indices as data2vec_audio.py apply_mask calls
 * it: static lengths, min_masks, no_overlap false, require_same_masks
 * true (trim to the smallest row), mask_dropout 0, num_mask_ver 2,
 * idc_select_ver 1.  mask is (M, N). */
int
d2v_mask_span(const d2v_mask_config *c, int64_t n, int M, d2v_rng *rng,
    uint8_t *mask, d2v_err *err)
{
	int64_t *idx;      /* scratch (N + 1): the candidate starts */
	int64_t *starts;   /* (N + 1): the chosen starts of one row */
	int64_t *counts;   /* (M): masked per row before the trim */
	int64_t target = -1;
	int rc = 0;

	if (d2v_mask_check_size(c, 1, n, err) < 0)
		return err ? err->code : D2V_EINVAL;
	idx = malloc((size_t)(n + 1) * sizeof *idx);
	starts = malloc((size_t)(n + 1) * sizeof *starts);
	counts = malloc((size_t)(M > 0 ? M : 1) * sizeof *counts);
	if (idx == NULL || starts == NULL || counts == NULL) {
		rc = nomem(err);
		goto out;
	}
	for (int m = 0; m < M; m++) {
		uint8_t *row = mask + (int64_t)m * n;
		/* int(mask_prob * sz / float(mask_length) + rng.random()) */
		int64_t num = (int64_t)(c->prob * (double)n /
		    (double)c->length + d2v_rng_uniform(&rng[m]));
		int64_t min_len = c->length, range;

		if (num < c->min_masks)
			num = c->min_masks;
		if (n - min_len <= num)
			min_len = n - num - 1;
		range = n - min_len;
		if (num > range || range > n + 1) {
			rc = d2v_err_set(err, D2V_EINVAL, "%lld spans do not "
			    "fit in %lld tokens", (long long)num, (long long)n);
			goto out;
		}
		choose_distinct(range, num, &rng[m], idx, starts);
		memset(row, 0, (size_t)n);
		for (int64_t k = 0; k < num; k++)
			for (int64_t o = 0; o < c->length &&
			    starts[k] + o < n; o++)
				row[starts[k] + o] = 1;
		counts[m] = row_count(row, n);
		if (counts[m] >= n) {
			rc = d2v_err_set(err, D2V_EINVAL, "the entire sequence "
			    "is masked (copy %d of %lld tokens)", m,
			    (long long)n);
			goto out;
		}
		if (target < 0 || counts[m] < target)
			target = counts[m];
	}
	/* rows above the smallest count keep a uniform subset of its size */
	for (int m = 0; m < M; m++)
		if (counts[m] > target)
			flip_some(mask + (int64_t)m * n, n, 1,
			    counts[m] - target, &rng[m], idx);
out:
	free(idx);
	free(starts);
	free(counts);
	return rc;
}

int
d2v_mask_rows(const d2v_mask_config *c, int64_t gh, int64_t gw, int M,
    d2v_rng *rng, uint8_t *mask, d2v_err *err)
{
	int64_t n = gh * gw;
	int rc = 0;

	if (d2v_mask_check_size(c, gh, gw, err) < 0)
		return err ? err->code : D2V_EINVAL;
	if (c->strategy == D2V_MASK_SPAN)
		return d2v_mask_span(c, n, M, rng, mask, err);
	for (int m = 0; m < M && rc == 0; m++) {
		uint8_t *row = mask + (int64_t)m * n;

		switch (c->strategy) {
		case D2V_MASK_INVERSE_BLOCK:
			rc = d2v_mask_block2d(c, gh, gw, &rng[m], row, err);
			break;
		case D2V_MASK_BLOCK:
			rc = d2v_mask_beit(c, gh, gw, &rng[m], row, err);
			break;
		case D2V_MASK_BLOCK1D:
			rc = d2v_mask_block1d(c, n, &rng[m], row, err);
			break;
		case D2V_MASK_RANDOM:
			rc = d2v_mask_random(c, n, &rng[m], row, err);
			break;
		default:
			rc = d2v_err_set(err, D2V_EINVAL, "%s masking needs the "
			    "token ids (d2v_mask_bert)",
			    d2v_mask_strategy_name(c->strategy) ?
			    d2v_mask_strategy_name(c->strategy) : "unknown");
			break;
		}
	}
	return rc;
}

static int
is_special(const d2v_mask_vocab *v, int64_t id)
{
	for (int i = 0; i < v->nspecial; i++)
		if (v->special[i] == id)
			return 1;
	return 0;
}

/* fairseq/data/mask_tokens_dataset.py MaskTokensDataset.__getitem__, no
 * whole-word masking, mask_stdev 0, uniform replacement weights over the
 * non-special ids.  x, row and xm are (N). */
int
d2v_mask_bert(const d2v_mask_config *c, const d2v_mask_vocab *v,
    const int32_t *x, int64_t n, d2v_rng *r, uint8_t *row, int32_t *xm,
    d2v_err *err)
{
	double either = c->random_token + c->leave_unmasked;
	int64_t num, ordinary = v->size;
	int64_t *idx;      /* scratch (N) */
	int64_t *starts;   /* (N): the chosen span starts */
	int rc = 0;

	if (n < 1)
		return d2v_err_set(err, D2V_EINVAL, "no tokens to mask");
	if (v->mask < 0 || v->mask >= v->size)
		return d2v_err_set(err, D2V_EINVAL, "the mask id %d is not in "
		    "the vocabulary of %lld", (int)v->mask, (long long)v->size);
	for (int i = 0; i < v->nspecial; i++) {
		int dup = 0;

		for (int j = 0; j < i; j++)
			dup |= v->special[j] == v->special[i];
		if (!dup && v->special[i] >= 0 && v->special[i] < v->size)
			ordinary--;
	}
	if (c->random_token > 0.0 && ordinary < 1)
		return d2v_err_set(err, D2V_EINVAL, "the vocabulary of %lld has "
		    "no ordinary id to draw", (long long)v->size);
	for (int64_t i = 0; i < n; i++) {
		if (x[i] < 0 || x[i] >= v->size)
			return d2v_err_set(err, D2V_EINVAL, "token %lld: id %d "
			    "is outside the vocabulary of %lld", (long long)i,
			    (int)x[i], (long long)v->size);
		if (x[i] == v->mask)
			return d2v_err_set(err, D2V_EINVAL, "token %lld is "
			    "already the mask id %d", (long long)i, (int)v->mask);
	}
	idx = malloc((size_t)n * sizeof *idx);
	starts = malloc((size_t)n * sizeof *starts);
	if (idx == NULL || starts == NULL) {
		rc = nomem(err);
		goto out;
	}
	/* int(mask_prob * sz / float(mask_multiple_length) + rand()),
	 * starts choice(sz, num, replace=False), spans cut at the end */
	num = (int64_t)(c->prob * (double)n / (double)c->length +
	    d2v_rng_uniform(r));
	if (num > n)
		num = n;
	choose_distinct(n, num, r, idx, starts);
	memset(row, 0, (size_t)n);
	for (int64_t k = 0; k < num; k++)
		for (int64_t o = 0; o < c->length && starts[k] + o < n; o++)
			row[starts[k] + o] = 1;
	/* per selected token: rand_or_unmask with probability random +
	 * leave, then unmask with probability leave / (random + leave) */
	for (int64_t i = 0; i < n; i++) {
		int unmask = 0, rnd = 0;

		xm[i] = x[i];
		if (!row[i])
			continue;
		if (either > 0.0 && d2v_rng_uniform(r) < either) {
			if (c->random_token == 0.0)
				unmask = 1;
			else if (c->leave_unmasked == 0.0)
				rnd = 1;
			else if (d2v_rng_uniform(r) <
			    c->leave_unmasked / either)
				unmask = 1;
			else
				rnd = 1;
		}
		if (rnd) {
			int64_t id;

			do
				id = (int64_t)d2v_rng_below(r,
				    (uint64_t)v->size);
			while (is_special(v, id));
			xm[i] = (int32_t)id;
		} else if (!unmask) {
			xm[i] = v->mask;
		}
	}
out:
	free(idx);
	free(starts);
	return rc;
}

void
d2v_mask_crop(uint8_t *out, const uint8_t *in, int rows, int64_t n_in,
    int64_t off, int64_t n)
{
	for (int r = 0; r < rows; r++)
		memcpy(out + (size_t)r * (size_t)n, in + (size_t)r * (size_t)n_in +
		    off, (size_t)n);
}

int64_t
d2v_mask_equalize(uint8_t *mask, int rows, int64_t n, d2v_rng *r)
{
	int64_t target = n;

	for (int i = 0; i < rows; i++) {
		int64_t c = 0;

		for (int64_t j = 0; j < n; j++)
			c += mask[(size_t)i * n + j] != 0;
		if (c < target)
			target = c;
	}
	for (int i = 0; i < rows; i++) {
		uint8_t *row = mask + (size_t)i * n;
		int64_t c = 0;

		for (int64_t j = 0; j < n; j++)
			c += row[j] != 0;
		/* unmask c - target of the c masked positions, each chosen
		 * uniformly among those still masked */
		for (; c > target; c--) {
			int64_t k = (int64_t)d2v_rng_below(r, (uint64_t)c), j;

			for (j = 0; j < n; j++)
				if (row[j] && k-- == 0)
					break;
			row[j] = 0;
		}
	}
	return target;
}
