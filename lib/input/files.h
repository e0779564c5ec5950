/*
 * files.h - what the front ends share about files: reading one whole,
 * telling an image from an audio file, and listing a tree of class folders.
 *
 *     d2v_filelist l;
 *     d2v_filelist_scan(&l, "train", D2V_KIND_IMAGE, &err);
 *     for (int64_t i = 0; i < l.n; i++)
 *         ... l.paths[i], label l.labels[i], named l.classes[l.labels[i]]
 *     d2v_filelist_free(&l);
 *
 * The scan is torchvision's ImageFolder: the classes are the folders right
 * under the root in sorted (byte) order, label k for the k-th; under each,
 * every file of the wanted kind at any depth, sorted by folder, then name.
 */
#ifndef D2V_INPUT_FILES_H
#define D2V_INPUT_FILES_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* Reads the whole file into *buf (malloc'd, *len bytes).  A file larger
 * than limit is D2V_ELIMIT; a directory or unreadable file is D2V_EIO. */
int d2v_file_read(const char *path, size_t limit, unsigned char **buf,
    size_t *len, d2v_err *err);

enum d2v_kind {
	D2V_KIND_UNKNOWN,
	D2V_KIND_IMAGE,    /* JPEG */
	D2V_KIND_AUDIO,    /* WAV, FLAC, Ogg, Opus, MP3, AIFF... */
};

/* The kind by the name's extension (case-insensitive). */
int d2v_kind_of_name(const char *path);
/* The kind by the first bytes (magic numbers). */
int d2v_kind_of_bytes(const void *buf, size_t len);

typedef struct d2v_filelist {
	char **paths;        /* paths is (n), owned */
	int *labels;         /* labels is (n): class index */
	int64_t n, cap;
	char **classes;      /* classes is (nclasses), owned, sorted */
	int nclasses;
} d2v_filelist;

/* Lists root's class folders and their files of the given kind. */
int d2v_filelist_scan(d2v_filelist *l, const char *root, int kind,
    d2v_err *err);
void d2v_filelist_free(d2v_filelist *l);

#endif
