/* files.c - whole-file reads, file kinds, class-folder scans; see files.h. */
#include "input/files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_DEPTH 32

int
d2v_file_read(const char *path, size_t limit, unsigned char **buf,
    size_t *len, d2v_err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	unsigned char *p = NULL;
	size_t n = 0, cap;

	*buf = NULL;
	*len = 0;
	if (fd < 0)
		return d2v_err_set(err, D2V_EIO, "open: %s", strerror(errno));
	if (fstat(fd, &st) != 0) {
		int e = errno;

		close(fd);
		return d2v_err_set(err, D2V_EIO, "read: %s", strerror(e));
	}
	if (S_ISDIR(st.st_mode)) {
		close(fd);
		return d2v_err_set(err, D2V_EINVAL, "a directory, not a file "
		    "(give the files in it, or d2v-tokenize --label-from dir)");
	}
	if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > limit) {
		close(fd);
		return d2v_err_set(err, D2V_ELIMIT, "%lld bytes is over the "
		    "limit of %zu", (long long)st.st_size, limit);
	}
	cap = S_ISREG(st.st_mode) ? (size_t)st.st_size + 1 : 65536;
	for (;;) {
		ssize_t r;

		if (n == cap || p == NULL) {
			unsigned char *q;

			cap = p == NULL ? cap : cap * 2;
			if (n >= limit || (q = realloc(p, cap)) == NULL) {
				free(p);
				close(fd);
				return d2v_err_set(err, n >= limit ?
				    D2V_ELIMIT : D2V_ENOMEM, "file too large");
			}
			p = q;
		}
		r = read(fd, p + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;

			free(p);
			close(fd);
			return d2v_err_set(err, D2V_EIO, "read: %s",
			    strerror(e));
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	*buf = p;
	*len = n;
	return 0;
}

/* ---- kinds ------------------------------------------------------------ */

int
d2v_kind_of_name(const char *path)
{
	static const char *const image[] = {"jpg", "jpeg", "jpe", "jfif",
	    NULL};
	static const char *const audio[] = {"wav", "wave", "flac", "ogg",
	    "oga", "opus", "mp3", "aif", "aiff", "au", "w64", NULL};
	const char *dot = strrchr(path, '.'), *slash = strrchr(path, '/');

	if (dot == NULL || (slash != NULL && dot < slash))
		return D2V_KIND_UNKNOWN;
	for (int i = 0; image[i] != NULL; i++)
		if (strcasecmp(dot + 1, image[i]) == 0)
			return D2V_KIND_IMAGE;
	for (int i = 0; audio[i] != NULL; i++)
		if (strcasecmp(dot + 1, audio[i]) == 0)
			return D2V_KIND_AUDIO;
	return D2V_KIND_UNKNOWN;
}

int
d2v_kind_of_bytes(const void *buf, size_t len)
{
	const unsigned char *b = buf;

	if (len >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff)
		return D2V_KIND_IMAGE;
	if ((len >= 12 && memcmp(b, "RIFF", 4) == 0 &&
	    memcmp(b + 8, "WAVE", 4) == 0) ||
	    (len >= 12 && memcmp(b, "FORM", 4) == 0 &&
	    (memcmp(b + 8, "AIFF", 4) == 0 || memcmp(b + 8, "AIFC", 4) == 0)) ||
	    (len >= 4 && (memcmp(b, "fLaC", 4) == 0 ||
	    memcmp(b, "OggS", 4) == 0 || memcmp(b, ".snd", 4) == 0)) ||
	    (len >= 3 && memcmp(b, "ID3", 3) == 0) ||
	    (len >= 2 && b[0] == 0xff && (b[1] & 0xe0) == 0xe0))
		return D2V_KIND_AUDIO;
	return D2V_KIND_UNKNOWN;
}

/* ---- class folders ---------------------------------------------------- */

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of dir's entries; dirs selects folders (1) or files (0). */
static int
list_dir(const char *dir, int dirs, char ***names, int *n, d2v_err *err)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int cap = 0;

	*names = NULL;
	*n = 0;
	if (d == NULL)
		return d2v_err_set(err, D2V_EIO, "%s: %s", dir, strerror(errno));
	while ((e = readdir(d)) != NULL) {
		char *full;
		struct stat st;
		int isdir;

		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (asprintf(&full, "%s/%s", dir, e->d_name) < 0)
			break;
		isdir = stat(full, &st) == 0 && S_ISDIR(st.st_mode);
		free(full);
		if (isdir != dirs)
			continue;
		if (*n == cap) {
			char **p = realloc(*names, (size_t)(cap = cap ? 2 *
			    cap : 16) * sizeof *p);

			if (p == NULL)
				break;
			*names = p;
		}
		if (((*names)[*n] = strdup(e->d_name)) == NULL)
			break;
		(*n)++;
	}
	closedir(d);
	if (e != NULL) {
		for (int i = 0; i < *n; i++)
			free((*names)[i]);
		free(*names);
		*names = NULL;
		*n = 0;
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	}
	if (*n > 1)
		qsort(*names, (size_t)*n, sizeof **names, cmp_str);
	return 0;
}

static void
free_names(char **names, int n)
{
	for (int i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

static int
list_add(d2v_filelist *l, const char *dir, const char *name, int label,
    d2v_err *err)
{
	char *path;

	if (l->n == l->cap) {
		int64_t cap = l->cap ? 2 * l->cap : 256;
		char **p = realloc(l->paths, (size_t)cap * sizeof *p);
		int *q;

		if (p != NULL)
			l->paths = p;
		q = p ? realloc(l->labels, (size_t)cap * sizeof *q) : NULL;
		if (q == NULL)
			return d2v_err_set(err, D2V_ENOMEM, "out of memory");
		l->labels = q;
		l->cap = cap;
	}
	if (asprintf(&path, "%s/%s", dir, name) < 0)
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	l->paths[l->n] = path;
	l->labels[l->n++] = label;
	return 0;
}

/* Adds dir's files of the kind (sorted), then walks its folders in sorted
 * order: the order of sorted(os.walk(dir)) for trees without odd names. */
static int
walk(d2v_filelist *l, const char *dir, int kind, int label, int depth,
    d2v_err *err)
{
	char **names;
	int n, rc;

	if (depth > MAX_DEPTH)
		return d2v_err_set(err, D2V_ELIMIT, "%s: folders nested more "
		    "than %d deep (a link loop?)", dir, MAX_DEPTH);
	if ((rc = list_dir(dir, 0, &names, &n, err)) < 0)
		return rc;
	for (int i = 0; i < n && rc == 0; i++)
		if (d2v_kind_of_name(names[i]) == kind)
			rc = list_add(l, dir, names[i], label, err);
	free_names(names, n);
	if (rc < 0 || (rc = list_dir(dir, 1, &names, &n, err)) < 0)
		return rc;
	for (int i = 0; i < n && rc == 0; i++) {
		char *sub;

		if (asprintf(&sub, "%s/%s", dir, names[i]) < 0) {
			rc = d2v_err_set(err, D2V_ENOMEM, "out of memory");
			break;
		}
		rc = walk(l, sub, kind, label, depth + 1, err);
		free(sub);
	}
	free_names(names, n);
	return rc;
}

int
d2v_filelist_scan(d2v_filelist *l, const char *root, int kind, d2v_err *err)
{
	int rc;

	memset(l, 0, sizeof *l);
	if ((rc = list_dir(root, 1, &l->classes, &l->nclasses, err)) < 0)
		return rc;
	if (l->nclasses == 0)
		return d2v_err_set(err, D2V_EFORMAT, "%s: no class folders",
		    root);
	for (int k = 0; k < l->nclasses && rc == 0; k++) {
		char *dir;

		if (asprintf(&dir, "%s/%s", root, l->classes[k]) < 0)
			return d2v_err_set(err, D2V_ENOMEM, "out of memory");
		rc = walk(l, dir, kind, k, 0, err);
		free(dir);
	}
	if (rc < 0)
		d2v_filelist_free(l);
	return rc;
}

void
d2v_filelist_free(d2v_filelist *l)
{
	for (int64_t i = 0; i < l->n; i++)
		free(l->paths[i]);
	free(l->paths);
	free(l->labels);
	free_names(l->classes, l->nclasses);
	memset(l, 0, sizeof *l);
}
