/* pool.c - see pool.h.  Items are numbered as they are submitted; item k
 * lives in slot k % depth until it is handed back, oldest first. */
#include "pool.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct slot {
	void *item;
	int done;
} slot;

struct d2v_pool {
	d2v_pool_work_fn work;
	void *ctx;
	int threads, depth;
	slot *slots;               /* slots is (depth) */
	uint64_t submitted;        /* items queued so far */
	uint64_t taken;            /* items a worker has started */
	uint64_t returned;         /* items handed back to the caller */
	int stop;
	pthread_mutex_t mu;
	pthread_cond_t work_cv;    /* a new item, or stop */
	pthread_cond_t done_cv;    /* an item finished */
	pthread_t *tids;           /* tids is (threads) */
	int started;
};

typedef struct worker_arg {
	d2v_pool *p;
	int id;
} worker_arg;

static void *
worker_main(void *arg)
{
	worker_arg *a = arg;
	d2v_pool *p = a->p;
	int id = a->id;

	free(a);
	pthread_mutex_lock(&p->mu);
	for (;;) {
		uint64_t k;
		slot *s;

		while (!p->stop && p->taken == p->submitted)
			pthread_cond_wait(&p->work_cv, &p->mu);
		if (p->stop)
			break;
		k = p->taken++;
		s = &p->slots[k % (uint64_t)p->depth];
		pthread_mutex_unlock(&p->mu);
		p->work(p->ctx, s->item, id);
		pthread_mutex_lock(&p->mu);
		s->done = 1;
		pthread_cond_broadcast(&p->done_cv);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int
d2v_pool_new(d2v_pool **pp, int threads, int depth, d2v_pool_work_fn work,
    void *ctx, d2v_err *err)
{
	d2v_pool *p;

	*pp = NULL;
	if (threads < 1 || depth < threads)
		return d2v_err_set(err, D2V_EINVAL, "pool: %d threads, depth "
		    "%d", threads, depth);
	if ((p = calloc(1, sizeof *p)) == NULL)
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	p->work = work;
	p->ctx = ctx;
	p->threads = threads;
	p->depth = depth;
	*pp = p;
	if (threads == 1)
		return 0;
	p->slots = calloc((size_t)depth, sizeof *p->slots);
	p->tids = calloc((size_t)threads, sizeof *p->tids);
	if (p->slots == NULL || p->tids == NULL) {
		d2v_pool_free(p);
		*pp = NULL;
		return d2v_err_set(err, D2V_ENOMEM, "out of memory");
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->work_cv, NULL);
	pthread_cond_init(&p->done_cv, NULL);
	for (int i = 0; i < threads; i++) {
		worker_arg *a = malloc(sizeof *a);

		if (a != NULL) {
			a->p = p;
			a->id = i;
		}
		if (a == NULL || pthread_create(&p->tids[i], NULL,
		    worker_main, a) != 0) {
			free(a);
			d2v_pool_free(p);
			*pp = NULL;
			return d2v_err_set(err, D2V_ENOMEM, "pool: cannot "
			    "start thread %d of %d", i + 1, threads);
		}
		p->started++;
	}
	return 0;
}

/* Called with the lock held and at least one item in flight. */
static void *
take_oldest(d2v_pool *p)
{
	slot *s = &p->slots[p->returned % (uint64_t)p->depth];

	while (!s->done)
		pthread_cond_wait(&p->done_cv, &p->mu);
	p->returned++;
	return s->item;
}

void *
d2v_pool_submit(d2v_pool *p, void *item)
{
	void *out = NULL;
	slot *s;

	if (p->threads == 1) {
		p->work(p->ctx, item, 0);
		return item;
	}
	pthread_mutex_lock(&p->mu);
	if (p->submitted - p->returned == (uint64_t)p->depth)
		out = take_oldest(p);
	s = &p->slots[p->submitted % (uint64_t)p->depth];
	s->item = item;
	s->done = 0;
	p->submitted++;
	pthread_cond_signal(&p->work_cv);
	pthread_mutex_unlock(&p->mu);
	return out;
}

void *
d2v_pool_drain(d2v_pool *p)
{
	void *out = NULL;

	if (p->threads == 1)
		return NULL;
	pthread_mutex_lock(&p->mu);
	if (p->returned < p->submitted)
		out = take_oldest(p);
	pthread_mutex_unlock(&p->mu);
	return out;
}

void
d2v_pool_free(d2v_pool *p)
{
	if (p == NULL)
		return;
	if (p->threads > 1 && p->slots != NULL && p->tids != NULL) {
		pthread_mutex_lock(&p->mu);
		p->stop = 1;
		pthread_cond_broadcast(&p->work_cv);
		pthread_mutex_unlock(&p->mu);
		for (int i = 0; i < p->started; i++)
			pthread_join(p->tids[i], NULL);
		pthread_mutex_destroy(&p->mu);
		pthread_cond_destroy(&p->work_cv);
		pthread_cond_destroy(&p->done_cv);
	}
	free(p->slots);
	free(p->tids);
	free(p);
}
