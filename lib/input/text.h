/*
 * text.h - the text front end: a sentencepiece model with the special ids
 * the model needs, and the packing of lines into blocks the way fairseq's
 * masked_lm task does (TokenBlockDataset, then a prepended BOS).
 *
 * Letters: N ids of one line; B the block size (tokens per record, the
 * leading BOS included); T the tokens of one record, T <= B.
 *
 *     d2v_text tx;
 *     d2v_text_load(&tx, "spm.model", &err);       // vocab, specials, sha256
 *     d2v_text_encode(&tx, line, len, &ids, &n, &err);   // ids is (N)
 *
 *     d2v_packer p;
 *     d2v_packer_init(&p, D2V_BREAK_NONE, 512, &tx.vocab, emit, ctx);
 *     d2v_packer_add(&p, ids, n, line_no, &err);    // emit(ctx, x, T, ...)
 *     d2v_packer_finish(&p, &err);                  // the last short block
 *     d2v_packer_free(&p);
 *
 * Every line becomes its ids followed by EOS (fairseq's binarised corpus).
 * An empty line is a document boundary.  The break modes:
 *   none          the token stream cut into blocks of B - 1, each after BOS;
 *                 the last block may be shorter
 *   complete_doc  whole lines packed up to B - 1 tokens, never across an
 *                 empty line; a line longer than B - 1 is cut (fairseq would
 *                 make one oversized block of it)
 *   line          one record per non-empty line: BOS, ids, EOS, cut to B
 */
#ifndef D2V_INPUT_TEXT_H
#define D2V_INPUT_TEXT_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "input/spm.h"

/* The ids a model of this vocabulary uses.  Specials the sentencepiece
 * model lacks (pad, mask, and bos/eos when disabled) are appended after its
 * pieces, as fairseq appends <mask> to its dictionary. */
typedef struct d2v_vocab {
	int spm_size;        /* pieces in the sentencepiece model */
	int size;            /* embedding rows: spm_size + appended specials */
	int bos, eos, pad, unk, mask;
	char sha256[65];     /* of the model file, lowercase hex */
} d2v_vocab;

typedef struct d2v_text {
	d2v_spm *spm;
	d2v_vocab vocab;
} d2v_text;

/* Reads and hashes a model file and works out the vocabulary. */
int d2v_text_load(d2v_text *t, const char *path, d2v_err *err);
void d2v_text_free(d2v_text *t);

/* Encodes one line (no newline) to ids, no BOS or EOS; *ids is (N),
 * malloc'd.  Text that is not valid UTF-8 is an error (D2V_EFORMAT). */
int d2v_text_encode(const d2v_text *t, const char *line, size_t len,
    int32_t **ids, int64_t *n, d2v_err *err);

/* 1 when s[0..len) is valid UTF-8 (no overlongs, no surrogates). */
int d2v_utf8_valid(const char *s, size_t len);

/* ---- packing ------------------------------------------------------------ */

enum d2v_break {
	D2V_BREAK_NONE,
	D2V_BREAK_COMPLETE_DOC,
	D2V_BREAK_LINE,
};

/* Receives one block: x is (T), BOS first.  tag and offset say where its
 * first token after BOS came from: the tag given with that line, and the
 * token's position in the line.  A negative return stops the packer. */
typedef int (*d2v_block_fn)(void *ctx, const int32_t *x, int64_t t,
    int64_t tag, int64_t offset, d2v_err *err);

typedef struct d2v_packer {
	int mode;            /* enum d2v_break */
	int block;           /* B */
	int bos, eos;
	d2v_block_fn emit;
	void *ctx;
	int32_t *buf;        /* buf is (cap): BOS, then len pending tokens */
	int64_t len, cap;
	int64_t tag, offset; /* origin of the first pending token */
} d2v_packer;

int d2v_packer_init(d2v_packer *p, int mode, int block, const d2v_vocab *v,
    d2v_block_fn emit, void *ctx, d2v_err *err);
void d2v_packer_free(d2v_packer *p);
/* Adds one line's ids (N; EOS is appended here); n == 0 with empty set is
 * an empty line (a document boundary). */
int d2v_packer_add(d2v_packer *p, const int32_t *ids, int64_t n, int empty,
    int64_t tag, d2v_err *err);
/* Emits what is pending (end of input). */
int d2v_packer_finish(d2v_packer *p, d2v_err *err);

#endif
