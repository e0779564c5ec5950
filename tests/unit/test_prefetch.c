/*
 * test_prefetch.c - the read-ahead thread: the same records, in the same
 * order, as reading directly; a truncated stream's error after the same
 * records; a stop while the thread waits in a read.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "prefetch.h"
#include "stream.h"
#include "t.h"

/* the bytes of a stream of n records with tensors of growing size */
static unsigned char *
sample(int n, size_t *len)
{
	int fd = memfd_create("d2v-test", 0);
	d2v_err err = {0};
	json_t *h = d2v_header_new("image");
	d2v_writer *w;
	unsigned char *buf;

	d2v_writer_open_fd(&w, fd, "mem", &err);
	d2v_writer_header(w, h, &err);
	for (int i = 0; i < n; i++) {
		d2v_record rec;
		d2v_tensor t;
		int64_t shape[2] = {3, 5 + i * 7};
		char id[32];

		d2v_record_init(&rec);
		snprintf(id, sizeof id, "rec:%d", i);
		d2v_record_set_id(&rec, id, &err);
		d2v_tensor_init(&t, D2V_DTYPE_U8, 2, shape, &err);
		for (size_t k = 0; k < t.nbytes; k++)
			((unsigned char *)t.data)[k] = (unsigned char)(i * 13 + k);
		d2v_record_set_tensor(&rec, "x", &t, &err);
		d2v_writer_record(w, &rec, &err);
		d2v_record_clear(&rec);
	}
	d2v_writer_end(w, &err);
	d2v_writer_free(w);
	json_decref(h);
	*len = (size_t)lseek(fd, 0, SEEK_END);
	buf = malloc(*len);
	if (pread(fd, buf, *len, 0) != (ssize_t)*len)
		abort();
	close(fd);
	return buf;
}

/* reads buf (len) directly (depth 0) or ahead by depth; returns the last
 * code, *n records, *sum a checksum of their ids, indices and bytes */
static int
read_with(const unsigned char *buf, size_t len, int depth, long *n,
    unsigned long *sum, d2v_err *err)
{
	d2v_reader *r;
	d2v_prefetch *p = NULL;
	d2v_record rec;
	int rc;

	*n = 0;
	*sum = 0;
	d2v_record_init(&rec);
	if (d2v_reader_open_mem(&r, buf, len, "mem", err) < 0)
		return err->code;
	if (depth > 0 && d2v_prefetch_start(&p, r, depth, err) < 0)
		return -100;
	while ((rc = depth > 0 ? d2v_prefetch_next(p, &rec, err) :
	    d2v_reader_next(r, &rec, err)) > 0) {
		d2v_tensor *x = d2v_record_tensor(&rec, "x");

		(*n)++;
		*sum = *sum * 31 + (unsigned long)rec.index;
		for (const char *c = rec.id; *c; c++)
			*sum = *sum * 31 + (unsigned char)*c;
		for (size_t k = 0; x != NULL && k < x->nbytes; k++)
			*sum = *sum * 31 + ((unsigned char *)x->data)[k];
	}
	d2v_prefetch_stop(p);
	d2v_record_clear(&rec);
	d2v_reader_free(r);
	return rc;
}

static void
test_same(void)
{
	size_t len;
	unsigned char *buf = sample(40, &len);
	long n0, n;
	unsigned long s0, s;
	d2v_err e0 = {0}, e = {0};
	int rc0 = read_with(buf, len, 0, &n0, &s0, &e0), bad = 0;

	T_OK(rc0 == 0 && n0 == 40, "the direct read gives 40 records");
	for (int depth = 1; depth <= 64; depth *= 4) {
		int rc = read_with(buf, len, depth, &n, &s, &e);

		T_OK(rc == 0 && n == n0 && s == s0, "read ahead by %d: the same %ld "
		    "records in the same order", depth, n);
	}
	/* every prefix: the same whole records, then the same error */
	for (size_t cut = 1; cut < len; cut += 37) {
		int a = read_with(buf, cut, 0, &n0, &s0, &e0);
		int b = read_with(buf, cut, 3, &n, &s, &e);

		if (a != b || n != n0 || s != s0 || strcmp(e0.msg, e.msg) != 0)
			if (bad++ < 2)
				printf("# prefix %zu: %d, %ld records, \"%s\" against "
				    "%d, %ld records, \"%s\"\n", cut, b, n, e.msg, a,
				    n0, e0.msg);
	}
	T_OK(bad == 0, "every prefix read ahead: the same records and the same "
	    "error as reading directly (%d differ)", bad);
	free(buf);
}

static void
on_alarm(int sig)
{
	(void)sig;
	_exit(3);
}

/* a pipe half written and left open: the thread waits for room in a
 * queue of depth 1, or (depth 16) in a read of the rest; stop ends it */
static void
test_stop(int depth)
{
	size_t len;
	unsigned char *buf = sample(5, &len);
	int fds[2], rc1, rc2;
	d2v_reader *r;
	d2v_prefetch *p;
	d2v_record rec;
	d2v_err err = {0};

	if (pipe(fds) < 0 || write(fds[1], buf, len / 2) != (ssize_t)(len / 2))
		abort();
	d2v_record_init(&rec);
	d2v_reader_open_fd(&r, fds[0], "pipe", &err);
	signal(SIGALRM, on_alarm);
	alarm(10); /* a hang is a failure: status 3 */
	rc1 = d2v_prefetch_start(&p, r, depth, &err);
	rc2 = d2v_prefetch_next(p, &rec, &err);
	d2v_prefetch_stop(p);
	alarm(0);
	T_OK(rc1 == 0 && rc2 == 1, "a pipe half written, read ahead by %d: the "
	    "first record, then a stop while the thread waits %s returns", depth,
	    depth == 1 ? "for room" : "in a read");
	d2v_record_clear(&rec);
	d2v_reader_free(r);
	close(fds[0]);
	close(fds[1]);
	free(buf);
}

int
main(void)
{
	test_same();
	test_stop(1);
	test_stop(16);
	return T_DONE();
}
