/* test_tokenize_text.c - the text front end: block packing in the three
 * break modes on known ids, UTF-8 checks, and a sentencepiece model trained
 * here with spm_train: specials, sha256, and ids that decode back. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "input/text.h"
#include "t.h"

/* ---- packing ------------------------------------------------------------ */

#define B 100  /* BOS in these tests */
#define E 200  /* EOS */

typedef struct got {
	char s[1024];     /* "[B 1 2 E](tag+offset) ..." */
} got;

/* Appends "[B 1 2 E](tag+offset)" for each block. */
static int
collect_ids(void *ctx, const int32_t *x, int64_t t, int64_t tag, int64_t off,
    d2v_err *err)
{
	got *g = ctx;
	size_t n = strlen(g->s);

	(void)err;
	n += (size_t)snprintf(g->s + n, sizeof g->s - n, "%s[", n ? " " : "");
	for (int64_t i = 0; i < t; i++) {
		if (x[i] == B || x[i] == E)
			n += (size_t)snprintf(g->s + n, sizeof g->s - n, "%s%c",
			    i ? " " : "", x[i] == B ? 'B' : 'E');
		else
			n += (size_t)snprintf(g->s + n, sizeof g->s - n, "%s%d",
			    i ? " " : "", (int)x[i]);
	}
	snprintf(g->s + n, sizeof g->s - n, "](%lld+%lld)", (long long)tag,
	    (long long)off);
	return 0;
}

typedef struct line {
	int n;
	int32_t ids[8];
} line;

static void
pack(int mode, int block, const line *lines, int nlines, got *g)
{
	d2v_vocab v = {.bos = B, .eos = E};
	d2v_packer p;

	memset(g, 0, sizeof *g);
	d2v_packer_init(&p, mode, block, &v, collect_ids, g, NULL);
	for (int i = 0; i < nlines; i++)
		d2v_packer_add(&p, lines[i].ids, lines[i].n, lines[i].n == 0,
		    i, NULL);
	d2v_packer_finish(&p, NULL);
	d2v_packer_free(&p);
}

static void
test_packing(void)
{
	const line none[] = {{3, {1, 2, 3}}, {2, {4, 5}}, {0, {0}}, {1, {6}}};
	const line doc[] = {{2, {1, 2}}, {1, {3}}, {3, {4, 5, 6}}, {0, {0}},
	    {7, {7, 8, 9, 10, 11, 12, 13}}, {1, {14}}, {0, {0}}, {0, {0}},
	    {1, {15}}};
	const line ln[] = {{5, {1, 2, 3, 4, 5}}, {0, {0}}, {1, {6}}};
	const char *want;
	got g;

	pack(D2V_BREAK_NONE, 5, none, 4, &g);
	want = "[B 1 2 3 E](0+0) [B 4 5 E E](1+0) [B 6 E](3+0)";
	T_OK(strcmp(g.s, want) == 0, "none: blocks of 4 after BOS, an empty "
	    "line is an EOS, the last block short: %s", g.s);
	pack(D2V_BREAK_COMPLETE_DOC, 6, doc, 9, &g);
	want = "[B 1 2 E 3 E](0+0) [B 4 5 6 E](2+0) [B 7 8 9 10 11](4+0) "
	    "[B 12 13 E 14 E](4+5) [B 15 E](8+0)";
	T_OK(strcmp(g.s, want) == 0, "complete_doc: whole lines, never "
	    "across an empty line, long lines cut: %s", g.s);
	pack(D2V_BREAK_LINE, 4, ln, 3, &g);
	want = "[B 1 2 E](0+0) [B 6 E](2+0)";
	T_OK(strcmp(g.s, want) == 0, "line: BOS ids EOS per line, cut to the "
	    "block, empty lines skipped: %s", g.s);
	pack(D2V_BREAK_NONE, 5, none, 0, &g);
	T_OK(g.s[0] == '\0', "no lines, no blocks");
}

static void
test_utf8(void)
{
	static const struct { const char *s; int ok; } cs[] = {
		{"plain ascii", 1}, {"caf\xc3\xa9", 1}, {"\xe2\x82\xac 5", 1},
		{"\xf0\x9f\x98\x80", 1}, {"\xc3", 0}, {"\xc0\xaf", 0},
		{"\xed\xa0\x80", 0}, {"\xff", 0}, {"\xe2\x82", 0},
		{"\xf4\x90\x80\x80", 0}, {"a\x80z", 0},
	};
	int bad = 0;

	for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
		if (d2v_utf8_valid(cs[i].s, strlen(cs[i].s)) != cs[i].ok) {
			printf("# wrong for case %zu\n", i);
			bad++;
		}
	T_OK(bad == 0, "UTF-8 check: valid text passes, truncated, overlong, "
	    "surrogate and stray bytes fail");
}

/* ---- a real model ------------------------------------------------------- */

static const char *const corpus[] = {
	"the quick brown fox jumps over the lazy dog",
	"a data2vec model predicts contextual targets from a teacher",
	"students learn from masked views of images audio and text",
	"the teacher is an exponential moving average of the student",
	"small unix commands pass tensor streams over pipes",
};

static int
train(const char *dir)
{
	char cmd[2048], path[512];
	FILE *f;

	snprintf(path, sizeof path, "%s/corpus.txt", dir);
	if ((f = fopen(path, "w")) == NULL)
		return -1;
	for (int r = 0; r < 40; r++)
		for (size_t i = 0; i < sizeof corpus / sizeof corpus[0]; i++)
			fprintf(f, "%s\n", corpus[i]);
	fclose(f);
	snprintf(cmd, sizeof cmd, "spm_train --input=%s --model_prefix=%s/m "
	    "--vocab_size=80 --model_type=unigram --character_coverage=1.0 "
	    "--bos_id=0 --pad_id=1 --eos_id=2 --unk_id=3 "
	    "--user_defined_symbols='<mask>' --minloglevel=2 "
	    ">/dev/null 2>&1", path, dir);
	return system(cmd);
}

static void
test_model(void)
{
	char dir[] = "/tmp/d2v-text-XXXXXX", path[512], cmd[600], sum[65] = "";
	d2v_text tx;
	d2v_err err = {0};
	FILE *p;
	int ok = 1;

	if (mkdtemp(dir) == NULL || train(dir) != 0) {
		printf("skip - spm_train is not installed or failed "
		    "(make deps installs sentencepiece)\n");
		return;
	}
	snprintf(path, sizeof path, "%s/m.model", dir);
	T_OK(d2v_text_load(&tx, path, &err) == 0, "a trained model loads");
	T_OK(tx.vocab.spm_size == 80 && tx.vocab.size == 80 &&
	    tx.vocab.bos == 0 && tx.vocab.pad == 1 && tx.vocab.eos == 2 &&
	    tx.vocab.unk == 3 && tx.vocab.mask == 4, "specials in fairseq's "
	    "order, <mask> from the model: size %d bos %d pad %d eos %d unk %d "
	    "mask %d", tx.vocab.size, tx.vocab.bos, tx.vocab.pad, tx.vocab.eos,
	    tx.vocab.unk, tx.vocab.mask);
	snprintf(cmd, sizeof cmd, "sha256sum %s", path);
	if ((p = popen(cmd, "r")) != NULL) {
		if (fscanf(p, "%64s", sum) != 1)
			sum[0] = '\0';
		pclose(p);
	}
	T_OK(strcmp(sum, tx.vocab.sha256) == 0, "sha256 is the model file's "
	    "(%s)", tx.vocab.sha256);
	for (size_t i = 0; i < sizeof corpus / sizeof corpus[0]; i++) {
		int32_t *ids;
		int64_t n;
		char *back = NULL;

		ok &= d2v_text_encode(&tx, corpus[i], strlen(corpus[i]), &ids,
		    &n, &err) == 0 && n > 0;
		ok &= d2v_spm_decode(tx.spm, ids, n, &back, &err) == 0 &&
		    strcmp(back, corpus[i]) == 0;
		free(ids);
		free(back);
	}
	T_OK(ok, "every corpus line encodes and decodes back to itself");
	{
		int32_t *ids = NULL;
		int64_t n;

		T_OK(d2v_text_encode(&tx, "bad \xff byte", 10, &ids, &n,
		    &err) == D2V_EFORMAT && ids == NULL, "text that is not "
		    "UTF-8 is refused: %s", err.msg);
	}
	d2v_text_free(&tx);
	{
		FILE *f = fopen(path, "r+b");

		if (f != NULL) {  /* keep the first 100 bytes only */
			if (ftruncate(fileno(f), 100) != 0)
				perror("ftruncate");
			fclose(f);
		}
		T_OK(d2v_text_load(&tx, path, &err) < 0 && tx.spm == NULL,
		    "a truncated model is refused: %s", err.msg);
	}
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	if (system(cmd) != 0)
		perror(cmd);
}

int
main(void)
{
	test_packing();
	test_utf8();
	test_model();
	return T_DONE();
}
