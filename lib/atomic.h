/*
 * atomic.h - writing a file so that readers see the old one or the whole
 * new one, never a part, and nothing the user named is damaged.
 *
 *   - A symbolic link is written through: the new file replaces the
 *     link's target (next to it), and the link stays a link.
 *   - A device, FIFO or socket (-o /dev/null, a named pipe) is written in
 *     place: renaming a file over it would replace it.
 *   - A directory is refused.
 *   - Otherwise the data goes to an unnamed temporary file (O_TMPFILE) in
 *     the target's directory, which cannot outlive the process; at commit
 *     it gets a name (<target>.tmp.<pid>) and is renamed over the target.
 *     Where the file system has no O_TMPFILE the temporary is named from
 *     the start.  Either way, temporaries of the same target left by
 *     writers that no longer run (SIGKILL, power loss) are removed when
 *     the next writer opens it.
 */
#ifndef D2V_ATOMIC_H
#define D2V_ATOMIC_H

#include <sys/types.h>

#include "err.h"

typedef struct d2v_atomic {
	int fd;         /* write here */
	int in_place;   /* a device or FIFO, written directly */
	int unnamed;    /* fd is an O_TMPFILE */
	char *target;   /* the file written (symbolic links resolved) */
	char *tmp;      /* the temporary's name (named, or at commit) */
} d2v_atomic;

/* Opens path for an atomic write (mode for a new file, before the umask):
 * 0, or a negative code with the reason in err. */
int d2v_atomic_open(d2v_atomic *a, const char *path, mode_t mode,
    d2v_err *err);

/* Makes the written data the file: fsync, rename, fsync of the directory;
 * closes fd.  0, or a negative code (the target then is as it was). */
int d2v_atomic_commit(d2v_atomic *a, d2v_err *err);

/* Drops what was written; closes fd.  The target is as it was. */
void d2v_atomic_abort(d2v_atomic *a);

/* Whether path could be written atomically, without writing it: the
 * reason in err when not (a directory, a missing or unwritable
 * directory). */
int d2v_atomic_check(const char *path, d2v_err *err);

/* The file path names after its symbolic links (malloc'd; path itself
 * when it is no link, or a copy of the last link's target when that does
 * not exist); NULL when out of memory or in a loop of links. */
char *d2v_path_resolve(const char *path);

/* 1 when a and b are the same existing file (after links), else 0. */
int d2v_same_file(const char *a, const char *b);

#endif
