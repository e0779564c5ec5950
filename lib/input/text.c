/* text.c - sentencepiece vocabularies and block packing; see text.h. */
#include "input/text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "input/files.h"

#define MODEL_LIMIT ((size_t)1 << 30)

/* ---- the model ------------------------------------------------------ */

static int
sha256_hex(const unsigned char *buf, size_t len, char hex[65], d2v_err *err)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	if (EVP_Digest(buf, len, md, &n, EVP_sha256(), NULL) != 1 || n != 32)
		return d2v_err_set(err, D2V_EINVAL, "sha256 failed");
	for (unsigned i = 0; i < n; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	return 0;
}

/* Reads a protobuf varint at *p (below end); 0, or -1 when it runs off. */
static int
varint(const unsigned char **p, const unsigned char *end, uint64_t *v)
{
	*v = 0;
	for (int shift = 0; *p < end && shift < 64; shift += 7) {
		unsigned char b = *(*p)++;

		*v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return 0;
	}
	return -1;
}

/*
 * A truncated model can still parse: protobuf has no end marker, so a cut
 * between two pieces leaves a smaller valid message.  A whole model holds
 * its pieces (field 1), then trainer_spec (2) and normalizer_spec (3); this
 * walks the top-level fields and checks they are all there and whole.
 */
static int
spm_whole(const unsigned char *buf, size_t len, d2v_err *err)
{
	const unsigned char *p = buf, *end = buf + len;
	unsigned seen = 0;

	while (p < end) {
		uint64_t tag, n = 0;

		if (varint(&p, end, &tag) < 0)
			break;
		if ((tag & 7) == 0 && varint(&p, end, &n) == 0)
			n = 0;
		else if ((tag & 7) == 2 && varint(&p, end, &n) < 0)
			break;
		else if ((tag & 7) == 1 || (tag & 7) == 5)
			n = (tag & 7) == 1 ? 8 : 4;
		else if ((tag & 7) != 2)
			break;
		if (n > (uint64_t)(end - p))
			break;
		p += n;
		if ((tag >> 3) < 32)
			seen |= 1u << (tag >> 3);
	}
	if (p != end || (seen & 0xe) != 0xe)
		return d2v_err_set(err, D2V_ETRUNC, "not a whole sentencepiece "
		    "model (truncated or corrupt at byte %zu of %zu)",
		    (size_t)(p - buf), len);
	return 0;
}

/* The model's id for a special, else its piece, else the next free id. */
static int
special(const d2v_spm *m, int id, const char *piece, int *next)
{
	if (id >= 0)
		return id;
	if (piece != NULL && (id = d2v_spm_piece_id(m, piece)) >= 0)
		return id;
	return (*next)++;
}

static void
vocab_init(d2v_vocab *v, const d2v_spm *m)
{
	int next = d2v_spm_size(m);

	v->spm_size = next;
	v->unk = special(m, d2v_spm_unk(m), "<unk>", &next);
	v->bos = special(m, d2v_spm_bos(m), "<s>", &next);
	v->eos = special(m, d2v_spm_eos(m), "</s>", &next);
	v->pad = special(m, d2v_spm_pad(m), "<pad>", &next);
	v->mask = special(m, -1, "<mask>", &next);
	v->size = next;
}

int
d2v_text_load(d2v_text *t, const char *path, d2v_err *err)
{
	unsigned char *buf;
	size_t len;
	int rc;

	memset(t, 0, sizeof *t);
	if ((rc = d2v_file_read(path, MODEL_LIMIT, &buf, &len, err)) < 0 ||
	    (rc = spm_whole(buf, len, err)) < 0 ||
	    (rc = sha256_hex(buf, len, t->vocab.sha256, err)) < 0 ||
	    (rc = d2v_spm_load(&t->spm, buf, len, err)) < 0) {
		free(buf);
		d2v_err_prefix(err, "%s", path);
		return rc;
	}
	free(buf);
	vocab_init(&t->vocab, t->spm);
	return 0;
}

void
d2v_text_free(d2v_text *t)
{
	d2v_spm_free(t->spm);
	memset(t, 0, sizeof *t);
}

int
d2v_utf8_valid(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;

	for (size_t i = 0; i < len;) {
		unsigned c = s[i];
		uint32_t cp, min;
		int n;

		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			n = 1, cp = c & 0x1f, min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			n = 2, cp = c & 0x0f, min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			n = 3, cp = c & 0x07, min = 0x10000;
		} else {
			return 0;
		}
		if (len - i <= (size_t)n)
			return 0;
		for (int k = 1; k <= n; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (s[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += (size_t)n + 1;
	}
	return 1;
}

int
d2v_text_encode(const d2v_text *t, const char *line, size_t len,
    int32_t **ids, int64_t *n, d2v_err *err)
{
	*ids = NULL;
	*n = 0;
	if (!d2v_utf8_valid(line, len))
		return d2v_err_set(err, D2V_EFORMAT, "not valid UTF-8");
	return d2v_spm_encode(t->spm, line, len, ids, n, err);
}

/* ---- packing -------------------------------------------------------- */

int
d2v_packer_init(d2v_packer *p, int mode, int block, const d2v_vocab *v,
    d2v_block_fn emit, void *ctx, d2v_err *err)
{
	memset(p, 0, sizeof *p);
	if (block < 2 || mode < D2V_BREAK_NONE || mode > D2V_BREAK_LINE)
		return d2v_err_set(err, D2V_EINVAL, "block of %d tokens", block);
	p->mode = mode;
	p->block = block;
	p->bos = v->bos;
	p->eos = v->eos;
	p->emit = emit;
	p->ctx = ctx;
	p->cap = block;
	if ((p->buf = malloc((size_t)block * sizeof *p->buf)) == NULL)
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	p->buf[0] = p->bos;
	return 0;
}

void
d2v_packer_free(d2v_packer *p)
{
	free(p->buf);
	memset(p, 0, sizeof *p);
}

/* Token k of a line of n ids with its EOS. */
static int32_t
line_token(const int32_t *ids, int64_t n, int64_t k, int eos)
{
	return k < n ? ids[k] : eos;
}

static int
flush(d2v_packer *p, d2v_err *err)
{
	int rc = p->emit(p->ctx, p->buf, p->len + 1, p->tag, p->offset, err);

	p->len = 0;
	return rc;
}

/* Appends tokens pos.. of a line (n ids + EOS), emitting every block that
 * fills; with whole, only whole blocks are cut from the line. */
static int
append(d2v_packer *p, const int32_t *ids, int64_t n, int64_t pos,
    int64_t tag, d2v_err *err)
{
	int64_t total = n + 1, room = p->block - 1;

	while (pos < total) {
		int64_t take;

		if (p->len == 0) {
			p->tag = tag;
			p->offset = pos;
		}
		take = total - pos < room - p->len ? total - pos : room - p->len;
		for (int64_t k = 0; k < take; k++)
			p->buf[1 + p->len + k] = line_token(ids, n, pos + k,
			    p->eos);
		p->len += take;
		pos += take;
		if (p->len == room) {
			int rc = flush(p, err);

			if (rc < 0)
				return rc;
		}
	}
	return 0;
}

static int
add_line(d2v_packer *p, const int32_t *ids, int64_t n, int64_t tag,
    d2v_err *err)
{
	int64_t keep = n < p->block - 2 ? n : p->block - 2;

	for (int64_t k = 0; k < keep; k++)
		p->buf[1 + k] = ids[k];
	p->buf[1 + keep] = p->eos;
	p->len = keep + 1;
	p->tag = tag;
	p->offset = 0;
	return flush(p, err);
}

int
d2v_packer_add(d2v_packer *p, const int32_t *ids, int64_t n, int empty,
    int64_t tag, d2v_err *err)
{
	int64_t room = p->block - 1;

	switch (p->mode) {
	case D2V_BREAK_NONE:
		return append(p, ids, empty ? 0 : n, 0, tag, err);
	case D2V_BREAK_LINE:
		return empty || n == 0 ? 0 : add_line(p, ids, n, tag, err);
	default:  /* complete_doc: fairseq's loop, with long lines cut */
		if (empty) {
			int rc = p->len > 1 ? flush(p, err) : 0;

			p->len = 0;
			return rc;
		}
		if (p->len > 0 && p->len + n + 1 > room) {
			int rc = p->len > 1 ? flush(p, err) : 0;

			p->len = 0;
			if (rc < 0)
				return rc;
		}
		return append(p, ids, n, 0, tag, err);
	}
}

int
d2v_packer_finish(d2v_packer *p, d2v_err *err)
{
	int rc = 0;

	if (p->mode == D2V_BREAK_NONE && p->len > 0)
		rc = flush(p, err);
	else if (p->mode == D2V_BREAK_COMPLETE_DOC && p->len > 1)
		rc = flush(p, err);
	p->len = 0;
	return rc;
}
