/*
 * test_mask.c - the masking strategies (lib/mask.c) against the reference.
 *
 * Exact counts are checked on every row.  Distributions are compared with
 * tests/ref/mask_ref.json, statistics of the reference's own routines
 * (tests/ref/mask_ref.py): each mean must agree within 5 standard errors.
 * Every statistic here is computed as mask_ref.py computes it.
 */
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <jansson.h>

#include "mask.h"
#include "stream.h"
#include "t.h"

#define MAXN 1024

static json_t *ref;

/* ---- statistics (as mask_ref.py) ----------------------------------------- */

typedef struct acc {
	double sum, sum2;
	long n;
} acc;

static void
add(acc *a, double v)
{
	a->sum += v;
	a->sum2 += v * v;
	a->n++;
}

static double mean(const acc *a) { return a->n ? a->sum / a->n : NAN; }

static double
sd(const acc *a)
{
	double m = mean(a), v = a->sum2 / a->n - m * m;

	return v > 0 ? sqrt(v) : 0.0;
}

/* Compares a C statistic with the reference's: within 5 standard errors
 * of the difference (exactly equal when both have no spread). */
static void
versus(const char *group, const char *stat, const acc *a)
{
	json_t *r = json_object_get(json_object_get(ref, group), stat);
	double rm = json_number_value(json_object_get(r, "mean"));
	double rs = json_number_value(json_object_get(r, "sd"));
	double rn = json_number_value(json_object_get(r, "n"));
	double se, z;

	if (r == NULL || rn <= 0) {
		T_OK(0, "%s.%s: no reference value in mask_ref.json", group, stat);
		return;
	}
	se = sqrt(rs * rs / rn + sd(a) * sd(a) / a->n);
	z = se > 0 ? fabs(mean(a) - rm) / se : (mean(a) == rm ? 0 : INFINITY);
	T_OK(z < 5.0, "%s %s: d2v %.5g (%ld rows), reference %.5g (%.0f rows), "
	    "z = %.2f", group, stat, mean(a), a->n, rm, rn, z);
}

typedef struct stats2 {
	acc count, win3, border, isolated, comps, big16, full;
} stats2;

/* g is (d, d), 1 = masked. */
static void
stat2d(stats2 *s, const uint8_t *g, int d, int target)
{
	uint8_t inwin[MAXN] = {0}, seen[MAXN] = {0};
	int stack[MAXN], nvis = 0, masked = 0, ring = 0, iso = 0, inw = 0;
	int comps = 0, big = 0;

	for (int y = 0; y + 2 < d; y++)
		for (int x = 0; x + 2 < d; x++) {
			int all = 1;

			for (int i = 0; i < 3; i++)
				for (int j = 0; j < 3; j++)
					all &= !g[(y + i) * d + x + j];
			if (all)
				for (int i = 0; i < 3; i++)
					for (int j = 0; j < 3; j++)
						inwin[(y + i) * d + x + j] = 1;
		}
	for (int y = 0; y < d; y++)
		for (int x = 0; x < d; x++) {
			int k = y * d + x, nb = 0;

			if (g[k]) {
				masked++;
				continue;
			}
			nvis++;
			inw += inwin[k];
			ring += y == 0 || y == d - 1 || x == 0 || x == d - 1;
			nb += y > 0 && !g[k - d];
			nb += y < d - 1 && !g[k + d];
			nb += x > 0 && !g[k - 1];
			nb += x < d - 1 && !g[k + 1];
			iso += nb == 0;
		}
	for (int k0 = 0; k0 < d * d; k0++) {
		int sp = 0, n = 0;

		if (!g[k0] || seen[k0])
			continue;
		seen[k0] = 1;
		stack[sp++] = k0;
		while (sp > 0) {
			int k = stack[--sp], y = k / d, x = k % d;
			int nbr[4] = {y > 0 ? k - d : -1, y < d - 1 ? k + d : -1,
			    x > 0 ? k - 1 : -1, x < d - 1 ? k + 1 : -1};

			n++;
			for (int i = 0; i < 4; i++)
				if (nbr[i] >= 0 && g[nbr[i]] && !seen[nbr[i]]) {
					seen[nbr[i]] = 1;
					stack[sp++] = nbr[i];
				}
		}
		comps++;
		if (n >= 16)
			big += n;
	}
	add(&s->count, masked);
	add(&s->win3, nvis ? (double)inw / nvis : 0.0);
	add(&s->border, ring);
	add(&s->isolated, iso);
	add(&s->comps, comps);
	add(&s->big16, masked ? (double)big / masked : 0.0);
	add(&s->full, masked == target);
}

typedef struct stats1 {
	acc count, frac, runs, long5, edges;
} stats1;

static void
stat1d(stats1 *s, const uint8_t *r, int n)
{
	int runs = 0, long5 = 0, cur = 0, c = 0;

	for (int i = 0; i <= n; i++) {
		if (i < n && r[i]) {
			cur++;
			c++;
		} else {
			if (cur) {
				runs++;
				if (cur >= 5)
					long5 += cur;
			}
			cur = 0;
		}
	}
	add(&s->count, c);
	add(&s->frac, (double)c / n);
	add(&s->runs, runs);
	add(&s->long5, c ? (double)long5 / c : 0.0);
	add(&s->edges, r[0] + r[n - 1]);
}

static int
row_ones(const uint8_t *r, int n)
{
	int c = 0;

	for (int i = 0; i < n; i++)
		c += r[i];
	return c;
}

static void
seed_rows(d2v_rng *rng, int M, uint64_t seed, uint64_t rec)
{
	for (int m = 0; m < M; m++)
		d2v_rng_seed(&rng[m], seed, rec, (uint64_t)m);
}

/* 1 when all M rows of (M, n) are pairwise different. */
static int
rows_differ(const uint8_t *mask, int M, int n)
{
	for (int a = 0; a < M; a++)
		for (int b = a + 1; b < M; b++)
			if (memcmp(mask + a * n, mask + b * n, (size_t)n) == 0)
				return 0;
	return 1;
}

/* ---- strategies ------------------------------------------------------------ */

static void
test_basics(void)
{
	d2v_mask_config c;
	d2v_mask_strategy s;
	d2v_err err = {0};

	T_OK(d2v_mask_audio_frames(160000) == 499, "10 s of audio is 499 frames "
	    "(%lld)", (long long)d2v_mask_audio_frames(160000));
	T_OK(d2v_mask_audio_frames(320000) == 999, "320000 samples are 999 "
	    "frames (DATA2VEC.md §2.2)");
	T_OK(d2v_mask_audio_frames(400) == 1 && d2v_mask_audio_frames(399) == 0,
	    "400 samples are one frame, 399 none");
	T_OK(d2v_mask_audio_frames(32000) == 99, "2 s are 99 frames");
	for (int i = 0; i < D2V_MASK_COUNT; i++)
		T_OK(d2v_mask_strategy_parse(d2v_mask_strategy_name(i), &s) == 0
		    && (int)s == i, "strategy name %s round-trips",
		    d2v_mask_strategy_name(i));
	T_OK(d2v_mask_strategy_parse("inverse_block", &s) == D2V_EINVAL,
	    "an unknown strategy name is refused");

	for (int i = 0; i < D2V_MASK_COUNT; i++) {
		d2v_mask_config_default(&c, i);
		T_OK(d2v_mask_config_check(&c, &err) == 0, "%s defaults are valid",
		    d2v_mask_strategy_name(i));
	}
	{
		double bad[] = {0.0, 1.0, -0.1, 1.5, NAN};

		for (int i = 0; i < 5; i++) {
			d2v_mask_config_default(&c, D2V_MASK_INVERSE_BLOCK);
			c.prob = bad[i];
			T_OK(d2v_mask_config_check(&c, &err) == D2V_EINVAL &&
			    strstr(err.msg, "not in (0, 1)"), "ratio %g is refused: "
			    "%s", bad[i], err.msg);
		}
	}
	d2v_mask_config_default(&c, D2V_MASK_INVERSE_BLOCK);
	c.length = 1;
	T_OK(d2v_mask_config_check(&c, &err) == D2V_EINVAL, "inverse-block needs "
	    "blocks of at least 2 (the reference asserts it)");
	d2v_mask_config_default(&c, D2V_MASK_BERT);
	c.leave_unmasked = 0.6;
	c.random_token = 0.6;
	T_OK(d2v_mask_config_check(&c, &err) == D2V_EINVAL, "bert shares above "
	    "1 are refused");

	d2v_mask_config_default(&c, D2V_MASK_INVERSE_BLOCK);
	T_OK(d2v_mask_check_size(&c, 2, 2, &err) == D2V_EINVAL &&
	    strstr(err.msg, "all of them"), "a 2x2 grid is too small for "
	    "inverse-block: %s", err.msg);
	T_OK(d2v_mask_check_size(&c, 14, 14, &err) == 0, "14x14 is fine");
	d2v_mask_config_default(&c, D2V_MASK_SPAN);
	T_OK(d2v_mask_check_size(&c, 1, 10, &err) == D2V_EINVAL,
	    "10 frames are too few for spans of 10: %s", err.msg);
	d2v_mask_config_default(&c, D2V_MASK_BLOCK1D);
	T_OK(d2v_mask_check_size(&c, 1, 1, &err) == D2V_EINVAL,
	    "one frame is too few for block1d: %s", err.msg);
	d2v_mask_config_default(&c, D2V_MASK_BLOCK);
	T_OK(d2v_mask_block_count(&c, 196) == 120, "block masks 120 of 196");
	T_OK(d2v_mask_block_count(&c, 49) == 30, "and round(49 120/196) = 30 "
	    "of 49 (%lld)", (long long)d2v_mask_block_count(&c, 49));
}

static void
test_inverse_block(int large)
{
	enum { M = 16, N = 196, RECS = 1250 };
	const char *grp = large ? "inverse_block_large" : "inverse_block_base";
	int want = large ? 147 : 157, exact = 1, differ = 1;
	static uint8_t mask[M * N];
	d2v_mask_config c;
	d2v_rng rng[M];
	stats2 s = {0};
	d2v_err err = {0};

	d2v_mask_config_default(&c, D2V_MASK_INVERSE_BLOCK);
	if (large)
		d2v_mask_config_large(&c);
	for (int i = 0; i < RECS; i++) {
		seed_rows(rng, M, 42, (uint64_t)i);
		if (d2v_mask_rows(&c, 14, 14, M, rng, mask, &err) < 0) {
			T_OK(0, "%s: %s", grp, err.msg);
			return;
		}
		for (int m = 0; m < M; m++) {
			exact &= row_ones(mask + m * N, N) == want;
			stat2d(&s, mask + m * N, 14, want);
		}
		differ &= rows_differ(mask, M, N);
	}
	T_OK(exact, "%s: every one of %d rows has exactly %d of 196 masked", grp,
	    RECS * M, want);
	T_OK(differ, "%s: the 16 copies of each record all differ", grp);
	versus(grp, "count", &s.count);
	versus(grp, "win3", &s.win3);
	versus(grp, "border", &s.border);
	versus(grp, "isolated", &s.isolated);
	if (!large) {
		/* the structure is real: random masking of the same count puts
		 * few visible tokens in whole visible 3x3 windows */
		stats2 rs = {0};

		d2v_mask_config_default(&c, D2V_MASK_RANDOM);
		c.prob = 0.8;
		for (int i = 0; i < 200; i++) {
			seed_rows(rng, 1, 42, (uint64_t)i);
			d2v_mask_rows(&c, 1, N, 1, rng, mask, &err);
			stat2d(&rs, mask, 14, 0);
		}
		T_OK(mean(&s.win3) > 0.55 && mean(&rs.win3) < 0.1, "visible tokens "
		    "come mostly in 3x3 neighbourhoods: %.3f of them (random "
		    "masking: %.3f)", mean(&s.win3), mean(&rs.win3));
	}
}

static void
test_inverse_block_counts(void)
{
	d2v_mask_config c;
	d2v_rng rng[4];
	uint8_t mask[4 * 400];
	d2v_err err = {0};
	int ok = 1;

	/* the count is N - int(N * (1 - R)) in double arithmetic, as the
	 * reference's int(L * mask_prob) after mask_prob = 1 - mask_prob */
	d2v_mask_config_default(&c, D2V_MASK_INVERSE_BLOCK);
	for (int d = 3; d <= 20; d++) {
		int n = d * d, want = n - (int)((double)n * (1.0 - 0.8));

		seed_rows(rng, 4, 7, (uint64_t)d);
		if (d2v_mask_rows(&c, d, d, 4, rng, mask, &err) < 0) {
			ok = 0;
			break;
		}
		for (int m = 0; m < 4; m++)
			ok &= row_ones(mask + m * n, n) == want;
	}
	T_OK(ok, "inverse-block: exact counts on every grid from 3x3 to 20x20");
	T_OK(20 * 20 - (int)(400 * (1.0 - 0.8)) == 321, "(1 - 0.8 is below 0.2: "
	    "400 tokens keep 79, as in the reference)");
	/* 28/4 = 7x7: 49 - int(9.8) = 40 */
	seed_rows(rng, 1, 7, 0);
	d2v_mask_rows(&c, 7, 7, 1, rng, mask, &err);
	T_OK(row_ones(mask, 49) == 40, "28-pixel images with patch 4 mask 40 of 49");
}

static void
test_block1d(int n, const char *grp)
{
	enum { M = 8 };
	int recs = 20000 / M, want = (int)(n * 0.5), exact = 1, differ = 1;
	uint8_t mask[M * 512];
	d2v_mask_config c;
	d2v_rng rng[M];
	stats1 s = {0};
	d2v_err err = {0};

	d2v_mask_config_default(&c, D2V_MASK_BLOCK1D);
	for (int i = 0; i < recs; i++) {
		seed_rows(rng, M, 3, (uint64_t)i);
		if (d2v_mask_rows(&c, 1, n, M, rng, mask, &err) < 0) {
			T_OK(0, "%s: %s", grp, err.msg);
			return;
		}
		for (int m = 0; m < M; m++) {
			exact &= row_ones(mask + m * n, n) == want;
			stat1d(&s, mask + m * n, n);
		}
		differ &= rows_differ(mask, M, n);
	}
	T_OK(exact, "%s: every row has exactly %d of %d masked", grp, want, n);
	T_OK(differ, "%s: the copies of each record differ", grp);
	versus(grp, "runs", &s.runs);
	versus(grp, "long5", &s.long5);
	versus(grp, "edges", &s.edges);
}

static void
test_span(int n, int M, const char *grp)
{
	int recs = 20000 / M, same = 1, differ = 1;
	uint8_t mask[8 * 512];
	d2v_mask_config c;
	d2v_rng rng[8];
	stats1 s = {0};
	d2v_err err = {0};

	/* with M > 1 the statistics are per-record means over the copies,
	 * which share one count (mask_ref.py does the same) */
	d2v_mask_config_default(&c, D2V_MASK_SPAN);
	for (int i = 0; i < recs; i++) {
		stats1 r = {0};

		seed_rows(rng, M, 5, (uint64_t)i);
		if (d2v_mask_rows(&c, 1, n, M, rng, mask, &err) < 0) {
			T_OK(0, "%s: %s", grp, err.msg);
			return;
		}
		for (int m = 0; m < M; m++) {
			same &= row_ones(mask + m * n, n) == row_ones(mask, n);
			stat1d(&r, mask + m * n, n);
		}
		add(&s.frac, mean(&r.frac));
		add(&s.runs, mean(&r.runs));
		add(&s.edges, mean(&r.edges));
		if (M > 1)
			differ &= rows_differ(mask, M, n);
	}
	if (M > 1) {
		T_OK(same, "%s: the copies of a record have equal counts (trimmed "
		    "to the smallest)", grp);
		T_OK(differ, "%s: the copies of each record differ", grp);
	}
	versus(grp, "frac", &s.frac);
	versus(grp, "runs", &s.runs);
	if (M == 1)
		versus(grp, "edges", &s.edges);
	if (n == 499 && M == 1)
		T_OK(fabs(mean(&s.frac) - 0.49) < 0.01, "v1 span coverage is near "
		    "49%%: %.2f%%", 100 * mean(&s.frac));
}

static void
test_block(void)
{
	enum { ROWS = 5000 };
	uint8_t mask[196];
	d2v_mask_config c;
	d2v_rng rng;
	stats2 s = {0};
	d2v_err err = {0};
	int most = 1;

	d2v_mask_config_default(&c, D2V_MASK_BLOCK);
	for (int i = 0; i < ROWS; i++) {
		seed_rows(&rng, 1, 9, (uint64_t)i);
		if (d2v_mask_rows(&c, 14, 14, 1, &rng, mask, &err) < 0) {
			T_OK(0, "block: %s", err.msg);
			return;
		}
		most &= row_ones(mask, 196) <= 120;
		stat2d(&s, mask, 14, 120);
	}
	T_OK(most, "block: no row masks more than 120 of 196");
	T_OK(fabs(mean(&s.count) / 196 - 0.60) < 0.02, "v1 block masks near 60%%: "
	    "%.2f%%", 100 * mean(&s.count) / 196);
	T_OK(mean(&s.big16) > 0.98, "block: %.2f%% of masked patches lie in "
	    "blocks of at least 16", 100 * mean(&s.big16));
	versus("block_14", "count", &s.count);
	versus("block_14", "comps", &s.comps);
	versus("block_14", "big16", &s.big16);
	versus("block_14", "full", &s.full);
}

static void
test_random(void)
{
	enum { M = 8, N = 512, RECS = 500 };
	static uint8_t mask[M * N];
	static long pos[N];
	d2v_mask_config c;
	d2v_rng rng[M];
	d2v_err err = {0};
	int want = N - (int)(N * (1.0 - 0.48)), exact = 1, differ = 1;
	double p = (double)want / N, worst = 0;

	d2v_mask_config_default(&c, D2V_MASK_RANDOM);
	for (int i = 0; i < RECS; i++) {
		seed_rows(rng, M, 11, (uint64_t)i);
		d2v_mask_rows(&c, 1, N, M, rng, mask, &err);
		for (int m = 0; m < M; m++) {
			exact &= row_ones(mask + m * N, N) == want;
			for (int k = 0; k < N; k++)
				pos[k] += mask[m * N + k];
		}
		differ &= rows_differ(mask, M, N);
	}
	for (int k = 0; k < N; k++) {
		double z = fabs(pos[k] / (double)(RECS * M) - p) /
		    sqrt(p * (1 - p) / (RECS * M));

		worst = z > worst ? z : worst;
	}
	T_OK(want == 246 && exact, "random: every row masks exactly 246 of 512");
	T_OK(differ, "random: the copies of each record differ");
	T_OK(worst < 5.0, "random: every position is masked at the same rate "
	    "(largest z %.2f)", worst);
	for (int n = 2; n < 60; n++) {
		seed_rows(rng, 1, 11, (uint64_t)n);
		if (d2v_mask_check_size(&c, 1, n, &err) < 0)
			continue;
		d2v_mask_rows(&c, 1, n, 1, rng, mask, &err);
		exact &= row_ones(mask, n) == n - (int)(n * (1.0 - 0.48));
	}
	T_OK(exact, "random: exact counts for every length from 2 to 59");
}

static void
test_bert(void)
{
	enum { N = 512, RECS = 2500 };
	static int32_t x[N], xm[N];
	static uint8_t row[N];
	d2v_mask_vocab v = {.size = 1000, .mask = 999,
	    .special = {999, 0, 1, 2, 3}, .nspecial = 5};
	json_t *r = json_object_get(ref, "bert_512");
	d2v_mask_config c;
	d2v_rng rng;
	d2v_err err = {0};
	long sel = 0, tomask = 0, kept = 0, other = 0, special = 0, outside = 0;
	acc frac = {0}, frac4 = {0};
	double rp[3];
	const char *nm[3] = {"to <mask>", "kept", "random"};

	d2v_mask_config_default(&c, D2V_MASK_BERT);
	for (int i = 0; i < RECS; i++) {
		d2v_rng_seed(&rng, 13, (uint64_t)i, 100);
		x[0] = 0;
		for (int k = 1; k < N; k++)
			x[k] = 4 + (int32_t)d2v_rng_below(&rng, 995);
		d2v_rng_seed(&rng, 13, (uint64_t)i, 0);
		if (d2v_mask_bert(&c, &v, x, N, &rng, row, xm, &err) < 0) {
			T_OK(0, "bert: %s", err.msg);
			return;
		}
		add(&frac, row_ones(row, N) / (double)N);
		for (int k = 0; k < N; k++) {
			if (!row[k]) {
				outside += xm[k] != x[k];
				continue;
			}
			sel++;
			if (xm[k] == 999)
				tomask++;
			else if (xm[k] == x[k])
				kept++;
			else {
				other++;
				special += xm[k] < 4;
			}
		}
	}
	T_OK(outside == 0, "bert: tokens not selected are never changed");
	T_OK(special == 0, "bert: random replacements are never special ids");
	versus("bert_512", "frac", &frac);
	rp[0] = json_number_value(json_object_get(r, "to_mask"));
	rp[1] = json_number_value(json_object_get(r, "kept"));
	rp[2] = json_number_value(json_object_get(r, "random"));
	{
		double got[3] = {(double)tomask / sel, (double)kept / sel,
		    (double)other / sel};
		double want[3] = {0.8, 0.1, 0.1};

		for (int i = 0; i < 3; i++) {
			/* binomial standard errors of both proportions */
			double se = sqrt(want[i] * (1 - want[i]) / sel +
			    want[i] * (1 - want[i]) / json_number_value(
			    json_object_get(r, "selected")));

			T_OK(fabs(got[i] - want[i]) < 5 * sqrt(want[i] *
			    (1 - want[i]) / sel) && fabs(got[i] - rp[i]) < 5 * se,
			    "bert: %.2f%% of %ld selected tokens %s (80/10/10; "
			    "reference %.2f%%)", 100 * got[i], sel, nm[i],
			    100 * rp[i]);
		}
	}

	/* the released config: spans of 4 at 0.35, every token to <mask> */
	c.prob = 0.35;
	c.length = 4;
	c.leave_unmasked = c.random_token = 0.0;
	tomask = sel = 0;
	for (int i = 0; i < RECS; i++) {
		d2v_rng_seed(&rng, 13, (uint64_t)i, 100);
		for (int k = 0; k < N; k++)
			x[k] = 4 + (int32_t)d2v_rng_below(&rng, 995);
		d2v_rng_seed(&rng, 13, (uint64_t)i, 0);
		d2v_mask_bert(&c, &v, x, N, &rng, row, xm, &err);
		add(&frac4, row_ones(row, N) / (double)N);
		for (int k = 0; k < N; k++) {
			sel += row[k];
			tomask += row[k] && xm[k] == 999;
		}
	}
	versus("bert_span4_512", "frac", &frac4);
	T_OK(sel == tomask && sel > 0, "bert --span 4 --prob 0.35: every selected "
	    "token becomes <mask>");

	x[5] = 999;
	T_OK(d2v_mask_bert(&c, &v, x, N, &rng, row, xm, &err) == D2V_EINVAL &&
	    strstr(err.msg, "already the mask id"), "ids that hold the mask id "
	    "are refused: %s", err.msg);
	x[5] = 1000;
	T_OK(d2v_mask_bert(&c, &v, x, N, &rng, row, xm, &err) == D2V_EINVAL &&
	    strstr(err.msg, "outside the vocabulary"), "ids outside the "
	    "vocabulary are refused: %s", err.msg);
}

static void
test_determinism(void)
{
	enum { M = 4, N = 196 };
	uint8_t a[M * N], b[M * N], one[N];
	d2v_mask_config c;
	d2v_rng rng[M];
	d2v_err err = {0};
	int same = 1;

	for (int s = 0; s < D2V_MASK_COUNT; s++) {
		if (s == D2V_MASK_BERT)
			continue;
		d2v_mask_config_default(&c, s);
		seed_rows(rng, M, 77, 5);
		d2v_mask_rows(&c, 14, 14, M, rng, a, &err);
		seed_rows(rng, M, 77, 5);
		d2v_mask_rows(&c, 14, 14, M, rng, b, &err);
		same &= memcmp(a, b, sizeof a) == 0;
		if (s != D2V_MASK_SPAN) {
			/* a row depends on its own generator only: copy 2
			 * alone equals copy 2 of four */
			d2v_rng_seed(&rng[0], 77, 5, 2);
			d2v_mask_rows(&c, 14, 14, 1, rng, one, &err);
			same &= memcmp(one, a + 2 * N, N) == 0;
		}
		seed_rows(rng, M, 78, 5);
		d2v_mask_rows(&c, 14, 14, M, rng, b, &err);
		T_OK(memcmp(a, b, sizeof a) != 0, "%s: another seed gives other "
		    "masks", d2v_mask_strategy_name(s));
	}
	T_OK(same, "the same keys give the same masks, and a row depends only "
	    "on its own key");
}

/* A small header then a tensor bigger than half the write buffer: the
 * writer must send the buffered header first (it once did not). */
static void
test_writer_order(void)
{
	int fd = memfd_create("d2v-test", 0);
	json_t *h = d2v_header_new("audio");
	int64_t shape[1] = {160000};
	d2v_writer *w;
	d2v_reader *r;
	d2v_record rec;
	d2v_tensor t;
	d2v_err err = {0};
	int rc;

	d2v_record_init(&rec);
	d2v_record_set_id(&rec, "a", &err);
	d2v_tensor_init(&t, D2V_DTYPE_F32, 1, shape, &err);
	((float *)t.data)[159999] = 2.5f;
	d2v_record_set_tensor(&rec, "x", &t, &err);
	d2v_writer_open_fd(&w, fd, "memfd", &err);
	d2v_writer_header(w, h, &err);
	d2v_writer_record(w, &rec, &err);
	rc = d2v_writer_end(w, &err);
	d2v_writer_free(w);
	lseek(fd, 0, SEEK_SET);
	d2v_record_clear(&rec);
	d2v_reader_open_fd(&r, fd, "memfd", &err);
	rc |= d2v_reader_next(r, &rec, &err) != 1;
	T_OK(rc == 0 && d2v_record_tensor(&rec, "x") != NULL &&
	    ((float *)d2v_record_tensor(&rec, "x")->data)[159999] == 2.5f,
	    "a header then a 640 KB tensor reads back in order%s%s",
	    rc ? ": " : "", rc ? err.msg : "");
	d2v_reader_free(r);
	d2v_record_clear(&rec);
	json_decref(h);
	close(fd);
}

int
main(void)
{
	const char *root = getenv("D2V_ROOT");
	char path[4096];
	json_error_t je;

	snprintf(path, sizeof path, "%s/tests/ref/mask_ref.json",
	    root ? root : ".");
	ref = json_load_file(path, 0, &je);
	T_OK(ref != NULL, "read %s%s%s", path, ref ? "" : ": ",
	    ref ? "" : je.text);
	if (ref == NULL)
		return T_DONE();
	test_basics();
	test_inverse_block(0);
	test_inverse_block(1);
	test_inverse_block_counts();
	test_block1d(499, "block1d_499");
	test_block1d(40, "block1d_40");
	test_span(499, 1, "span_499_m1");
	test_span(499, 8, "span_499_m8");
	test_span(30, 1, "span_30_m1");
	test_block();
	test_random();
	test_bert();
	test_determinism();
	test_writer_order();
	json_decref(ref);
	return T_DONE();
}
