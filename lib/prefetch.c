/*
 * prefetch.c - a stream read ahead by a thread of its own (prefetch.h).
 *
 * One mutex and one condition variable guard a ring of depth records:
 * slots [head, head + count) hold records read and not yet taken; the
 * thread reads into the slot after them, which nobody else touches, so it
 * reads without the lock.  Stopping sets quit (for a thread waiting for
 * room) and writes a byte to a pipe that the reader's reads also wait on
 * (for a thread waiting for input): no thread is ever cancelled.
 */
#include "prefetch.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct d2v_prefetch {
	d2v_reader *r;
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	d2v_record *q;   /* (depth) the ring */
	int depth, head, count;
	int end;         /* 0 reading; 1 at the end; -1 after an error */
	int code;        /* the reader's code, when end is -1 */
	int quit;        /* set by stop */
	int wake[2];     /* the stop pipe: stop writes, the reads wait on it */
	d2v_err err;     /* the reader's error, when end is -1 */
};

static void *
reader_main(void *arg)
{
	d2v_prefetch *p = arg;

	for (;;) {
		d2v_err e = {0};
		int slot, rc;

		pthread_mutex_lock(&p->mu);
		while (p->count == p->depth && !p->quit)
			pthread_cond_wait(&p->cv, &p->mu);
		slot = (p->head + p->count) % p->depth;
		rc = p->quit;
		pthread_mutex_unlock(&p->mu);
		if (rc)
			return NULL;
		rc = d2v_reader_next(p->r, &p->q[slot], &e);
		pthread_mutex_lock(&p->mu);
		if (rc > 0) {
			p->count++;
		} else if (!p->quit) { /* a stopped read is no error */
			p->end = rc < 0 ? -1 : 1;
			p->code = rc;
			p->err = e;
		}
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
		if (rc <= 0)
			return NULL;
	}
}

int
d2v_prefetch_start(d2v_prefetch **pp, d2v_reader *r, int depth, d2v_err *err)
{
	d2v_prefetch *p = calloc(1, sizeof *p);
	sigset_t all, old;
	int rc;

	*pp = NULL;
	if (depth < 1)
		depth = 1;
	if (p == NULL || (p->q = calloc((size_t)depth, sizeof *p->q)) == NULL) {
		free(p);
		return d2v_err_set(err, D2V_ENOMEM, "out of memory for a read-ahead "
		    "of %d records", depth);
	}
	if (pipe2(p->wake, O_CLOEXEC) < 0) {
		free(p->q);
		free(p);
		return d2v_err_set(err, D2V_EIO, "cannot start the reading thread: "
		    "pipe: %s", strerror(errno));
	}
	for (int i = 0; i < depth; i++)
		d2v_record_init(&p->q[i]);
	p->r = r;
	p->depth = depth;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	d2v_reader_set_wake(r, p->wake[0]);
	/* the thread starts with every signal blocked */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&p->th, NULL, reader_main, p);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		d2v_reader_set_wake(r, -1);
		close(p->wake[0]);
		close(p->wake[1]);
		pthread_mutex_destroy(&p->mu);
		pthread_cond_destroy(&p->cv);
		free(p->q);
		free(p);
		return d2v_err_set(err, D2V_EIO, "cannot start the reading "
		    "thread: %s", strerror(rc));
	}
	*pp = p;
	return 0;
}

int
d2v_prefetch_next(d2v_prefetch *p, d2v_record *rec, d2v_err *err)
{
	int rc;

	pthread_mutex_lock(&p->mu);
	while (p->count == 0 && p->end == 0)
		pthread_cond_wait(&p->cv, &p->mu);
	if (p->count > 0) {
		d2v_record t = *rec;

		*rec = p->q[p->head];
		p->q[p->head] = t; /* its buffers, for the thread to reuse */
		p->head = (p->head + 1) % p->depth;
		p->count--;
		pthread_cond_broadcast(&p->cv);
		rc = 1;
	} else if (p->end < 0) {
		*err = p->err;
		rc = p->code;
	} else {
		rc = 0;
	}
	pthread_mutex_unlock(&p->mu);
	return rc;
}

void
d2v_prefetch_stop(d2v_prefetch *p)
{
	char c = 1;

	if (p == NULL)
		return;
	pthread_mutex_lock(&p->mu);
	p->quit = 1;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	while (write(p->wake[1], &c, 1) < 0 && errno == EINTR)
		;
	pthread_join(p->th, NULL);
	d2v_reader_set_wake(p->r, -1);
	close(p->wake[0]);
	close(p->wake[1]);
	for (int i = 0; i < p->depth; i++)
		d2v_record_clear(&p->q[i]);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p->q);
	free(p);
}
