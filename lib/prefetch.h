/*
 * prefetch.h - a stream read ahead by a thread of its own.
 *
 * The thread runs d2v_reader_next into a queue of records while the
 * caller computes; the caller takes them in order with the same contract
 * as d2v_reader_next (an error comes after every record before it):
 *
 *     d2v_prefetch *p;
 *     if (d2v_prefetch_start(&p, r, 64, &err) < 0) ...
 *     while ((rc = d2v_prefetch_next(p, &rec, &err)) > 0)
 *         ...
 *     d2v_prefetch_stop(p);   // also stops a thread waiting for input
 *
 * Between start and stop the reader belongs to the thread.  The thread
 * blocks every signal, so that they reach the caller's threads.
 */
#ifndef D2V_PREFETCH_H
#define D2V_PREFETCH_H

#include "err.h"
#include "stream.h"

typedef struct d2v_prefetch d2v_prefetch;

/* Reads r ahead by up to depth records (at least 1). */
int d2v_prefetch_start(d2v_prefetch **p, d2v_reader *r, int depth,
    d2v_err *err);
/* 1 and the next record in *rec (its old buffers go back to the queue
 * for reuse), 0 at the end of the stream, the reader's negative code and
 * err at its error, as d2v_reader_next gives them. */
int d2v_prefetch_next(d2v_prefetch *p, d2v_record *rec, d2v_err *err);
/* Stops the thread, even one waiting for input, and frees the queue.  The
 * reader is the caller's again, at wherever the thread left it; if the
 * stop interrupted a read, it holds the error "reading stopped".  NULL
 * does nothing. */
void d2v_prefetch_stop(d2v_prefetch *p);

#endif
