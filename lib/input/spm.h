/*
 * spm.h - sentencepiece behind a small C interface.  spm.cc implements it
 * with the C++ API; it is the only C++ in the tree, and no exception ever
 * crosses into C: every failure becomes a D2V_E* code and a message.
 *
 *     d2v_spm *m;
 *     d2v_spm_load(&m, model_bytes, model_len, &err);
 *     d2v_spm_encode(m, "Hello world", 11, &ids, &n, &err);  // ids is (N)
 *     d2v_spm_decode(m, ids, n, &text, &err);                // "Hello world"
 *
 * Encoding is const in sentencepiece, so one loaded model serves every
 * thread.
 */
#ifndef D2V_INPUT_SPM_H
#define D2V_INPUT_SPM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "err.h"

typedef struct d2v_spm d2v_spm;

/* Loads a model from its serialized bytes (the .model file's contents). */
int d2v_spm_load(d2v_spm **m, const void *buf, size_t len, d2v_err *err);
void d2v_spm_free(d2v_spm *m);

/* The number of pieces. */
int d2v_spm_size(const d2v_spm *m);
/* The model's special ids; -1 when the model has none. */
int d2v_spm_bos(const d2v_spm *m);
int d2v_spm_eos(const d2v_spm *m);
int d2v_spm_pad(const d2v_spm *m);
int d2v_spm_unk(const d2v_spm *m);
/* The id of a piece ("<mask>"), or -1 when it is not in the vocabulary. */
int d2v_spm_piece_id(const d2v_spm *m, const char *piece);

/* Encodes len bytes of UTF-8 text to ids (*ids malloc'd, (N); no BOS/EOS). */
int d2v_spm_encode(const d2v_spm *m, const char *text, size_t len,
    int32_t **ids, int64_t *n, d2v_err *err);
/* Decodes n ids to text (*text malloc'd, NUL-terminated). */
int d2v_spm_decode(const d2v_spm *m, const int32_t *ids, int64_t n,
    char **text, d2v_err *err);

#ifdef __cplusplus
}
#endif

#endif
