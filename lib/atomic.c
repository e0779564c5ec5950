/* atomic.c - atomic file writes (atomic.h). */
#include "atomic.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *
d2v_path_resolve(const char *path)
{
	char *p = strdup(path);

	for (int hops = 0; p != NULL; hops++) {
		struct stat st;
		char buf[PATH_MAX], *dirc, *q;
		ssize_t n;

		if (lstat(p, &st) != 0 || !S_ISLNK(st.st_mode))
			return p;
		if (hops == 40 || (n = readlink(p, buf, sizeof buf - 1)) < 0) {
			free(p);
			return NULL;
		}
		buf[n] = '\0';
		if (buf[0] == '/') {
			q = strdup(buf);
		} else {
			if ((dirc = strdup(p)) == NULL ||
			    asprintf(&q, "%s/%s", dirname(dirc), buf) < 0)
				q = NULL;
			free(dirc);
		}
		free(p);
		p = q;
	}
	return NULL;
}

int
d2v_same_file(const char *a, const char *b)
{
	struct stat sa, sb;

	return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
	    sa.st_ino == sb.st_ino;
}

/* Removes <dir>/<base>.tmp.<pid> whose writer no longer runs. */
static void
remove_stale(const char *dir, const char *base)
{
	DIR *d = opendir(dir);
	size_t k = strlen(base);
	struct dirent *e;

	if (d == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		const char *s = e->d_name;
		char *end, *full;
		long pid;

		if (strncmp(s, base, k) != 0 || strncmp(s + k, ".tmp.", 5) != 0)
			continue;
		errno = 0;
		pid = strtol(s + k + 5, &end, 10);
		if (errno || end == s + k + 5 || *end != '\0' || pid <= 0 ||
		    pid == (long)getpid())
			continue;
		if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
			continue; /* running, or not ours to know */
		if (asprintf(&full, "%s/%s", dir, s) >= 0) {
			unlink(full);
			free(full);
		}
	}
	closedir(d);
}

/* the target's directory and base name (malloc'd) */
static int
split(const char *target, char **dir, char **base)
{
	char *a = strdup(target), *b = strdup(target);

	*dir = *base = NULL;
	if (a != NULL && b != NULL) {
		*dir = strdup(dirname(a));
		*base = strdup(basename(b));
	}
	free(a);
	free(b);
	if (*dir == NULL || *base == NULL) {
		free(*dir);
		free(*base);
		return -1;
	}
	return 0;
}

int
d2v_atomic_check(const char *path, d2v_err *err)
{
	char *t = d2v_path_resolve(path), *dir = NULL, *base = NULL;
	struct stat st;
	int rc = 0;

	if (t == NULL)
		return d2v_err_set(err, D2V_EINVAL, "%s: too many levels of "
		    "symbolic links, or out of memory", path);
	if (stat(t, &st) == 0 && S_ISDIR(st.st_mode)) {
		rc = d2v_err_set(err, D2V_EINVAL, "%s is a directory: name a "
		    "file in it", path);
	} else if (stat(t, &st) == 0 && !S_ISREG(st.st_mode)) {
		if (access(t, W_OK) != 0) /* written in place */
			rc = d2v_err_set(err, D2V_EIO, "%s: %s", path,
			    strerror(errno));
	} else if (split(t, &dir, &base) < 0) {
		rc = d2v_err_set(err, D2V_ENOMEM, "out of memory");
	} else if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
		rc = d2v_err_set(err, D2V_EIO, "%s: no directory %s", path, dir);
	} else if (access(dir, W_OK | X_OK) != 0) {
		rc = d2v_err_set(err, D2V_EIO, "%s: cannot write in %s: %s", path,
		    dir, strerror(errno));
	}
	free(t);
	free(dir);
	free(base);
	return rc;
}

int
d2v_atomic_open(d2v_atomic *a, const char *path, mode_t mode, d2v_err *err)
{
	struct stat st;
	char *dir = NULL, *base = NULL;
	int e;

	memset(a, 0, sizeof *a);
	a->fd = -1;
	if ((a->target = d2v_path_resolve(path)) == NULL)
		return d2v_err_set(err, D2V_EINVAL, "%s: too many levels of "
		    "symbolic links, or out of memory", path);
	if (stat(a->target, &st) == 0 && !S_ISREG(st.st_mode)) {
		if (S_ISDIR(st.st_mode)) {
			d2v_atomic_abort(a);
			return d2v_err_set(err, D2V_EINVAL, "%s is a directory: "
			    "name a file in it", path);
		}
		a->in_place = 1;
		if ((a->fd = open(a->target, O_WRONLY | O_CLOEXEC)) < 0) {
			e = errno;
			d2v_atomic_abort(a);
			return d2v_err_set(err, D2V_EIO, "open %s: %s", path,
			    strerror(e));
		}
		return 0;
	}
	if (split(a->target, &dir, &base) < 0) {
		d2v_atomic_abort(a);
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	}
	remove_stale(dir, base);
#ifdef O_TMPFILE
	a->fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, mode);
	a->unnamed = a->fd >= 0;
#endif
	if (a->fd < 0) {
		if (asprintf(&a->tmp, "%s.tmp.%ld", a->target, (long)getpid()) < 0)
			a->tmp = NULL;
		else
			a->fd = open(a->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
			    mode);
		if (a->fd < 0) {
			e = a->tmp ? errno : ENOMEM;
			free(a->tmp);
			a->tmp = NULL;
			d2v_atomic_abort(a);
			free(dir);
			free(base);
			return d2v_err_set(err, D2V_EIO, "create %s: %s", path,
			    strerror(e));
		}
	}
	free(dir);
	free(base);
	return 0;
}

int
d2v_atomic_commit(d2v_atomic *a, d2v_err *err)
{
	char *dir = NULL, *base = NULL;
	int rc = 0, e = 0;

	if (a->in_place) {
		if (close(a->fd) != 0 && errno != EINTR)
			rc = d2v_err_set(err, D2V_EIO, "write %s: %s", a->target,
			    strerror(errno));
		a->fd = -1;
		free(a->target);
		a->target = NULL;
		return rc;
	}
	if (fsync(a->fd) != 0)
		goto fail;
	if (a->unnamed) {
		char proc[64];

		if (asprintf(&a->tmp, "%s.tmp.%ld", a->target, (long)getpid()) < 0) {
			a->tmp = NULL;
			errno = ENOMEM;
			goto fail;
		}
		unlink(a->tmp);
		snprintf(proc, sizeof proc, "/proc/self/fd/%d", a->fd);
		if (linkat(AT_FDCWD, proc, AT_FDCWD, a->tmp, AT_SYMLINK_FOLLOW) != 0) {
			e = errno;
			free(a->tmp);
			a->tmp = NULL;
			errno = e;
			goto fail;
		}
	}
	if (close(a->fd) != 0) {
		a->fd = -1;
		goto fail;
	}
	a->fd = -1;
	if (rename(a->tmp, a->target) != 0)
		goto fail;
	free(a->tmp);
	a->tmp = NULL;
	if (split(a->target, &dir, &base) == 0) {
		int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

		if (dfd >= 0) {
			fsync(dfd);
			close(dfd);
		}
	}
	free(dir);
	free(base);
	free(a->target);
	a->target = NULL;
	return 0;
fail:
	e = errno;
	rc = d2v_err_set(err, D2V_EIO, "write %s: %s", a->target, strerror(e));
	d2v_atomic_abort(a);
	return rc;
}

void
d2v_atomic_abort(d2v_atomic *a)
{
	if (a->fd >= 0)
		close(a->fd);
	a->fd = -1;
	if (a->tmp != NULL) {
		unlink(a->tmp);
		free(a->tmp);
		a->tmp = NULL;
	}
	free(a->target);
	a->target = NULL;
}
