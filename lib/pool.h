/*
 * pool.h - an ordered parallel map: items go in one order, are worked on by
 * N threads in any order, and come back out in the order they went in.
 *
 * The caller owns the items; the pool only hands pointers around.  Output
 * order, and so the output bytes, never depend on the number of threads.
 *
 *     d2v_pool *p;
 *     d2v_pool_new(&p, jobs, 4 * jobs, work, ctx, &err);
 *     while ((it = next_input()) != NULL)
 *         if ((done = d2v_pool_submit(p, it)) != NULL)
 *             emit(done);                 // oldest item, finished
 *     while ((done = d2v_pool_drain(p)) != NULL)
 *         emit(done);
 *     d2v_pool_free(p);
 *
 * work(ctx, item, worker) runs on a worker thread; worker is 0..threads-1, an
 * index for per-thread state (decoders, scratch buffers).  With threads == 1
 * there is no thread at all: submit runs work inline and returns the item.
 */
#ifndef D2V_POOL_H
#define D2V_POOL_H

#include "err.h"

typedef void (*d2v_pool_work_fn)(void *ctx, void *item, int worker);

typedef struct d2v_pool d2v_pool;

/* threads >= 1 workers, at most depth items in flight (depth >= threads). */
int d2v_pool_new(d2v_pool **p, int threads, int depth, d2v_pool_work_fn work,
    void *ctx, d2v_err *err);
/* Queues item.  When depth items are already in flight, waits for the
 * oldest and returns it (finished); otherwise returns NULL. */
void *d2v_pool_submit(d2v_pool *p, void *item);
/* Waits for the oldest item in flight and returns it; NULL when none. */
void *d2v_pool_drain(d2v_pool *p);
/* Stops the workers (each finishes the item it is on; queued items are
 * dropped, not worked on) and frees the pool.  Safe on NULL. */
void d2v_pool_free(d2v_pool *p);

#endif
