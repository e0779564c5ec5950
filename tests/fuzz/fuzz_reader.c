/*
 * fuzz_reader.c - libFuzzer target for the stream reader (make fuzz).
 *
 * Reads the input as a stream with a small tensor limit, rewrites every
 * record it accepts with the writer and reads that back: the reader must
 * never crash, hang or leak, and whatever it accepts must round-trip.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "stream.h"

int
LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	d2v_reader *r;
	d2v_record rec;
	d2v_err err;
	int rc, fd = -1;
	d2v_writer *w = NULL;

	setenv("D2V_MAX_TENSOR", "1M", 1);
	d2v_record_init(&rec);
	if (d2v_reader_open_mem(&r, data, size, "fuzz", &err) < 0)
		return 0;
	while ((rc = d2v_reader_next(r, &rec, &err)) > 0) {
		if (w == NULL) {
			fd = memfd_create("fuzz", 0);
			if (fd < 0 || d2v_writer_open_fd(&w, fd, "out", &err) < 0)
				abort();
			if (d2v_writer_header(w, d2v_reader_header(r), &err) < 0)
				abort();
		}
		if (d2v_writer_record(w, &rec, &err) < 0)
			abort();
	}
	if (w != NULL) {
		d2v_reader *r2;
		d2v_record rec2;
		off_t n;
		unsigned char *buf;
		int64_t k = 0;

		if (d2v_writer_end(w, &err) < 0)
			abort();
		n = lseek(fd, 0, SEEK_END);
		buf = malloc((size_t)n);
		if (pread(fd, buf, (size_t)n, 0) != n)
			abort();
		d2v_record_init(&rec2);
		d2v_reader_open_mem(&r2, buf, (size_t)n, "again", &err);
		while (d2v_reader_next(r2, &rec2, &err) > 0)
			k++;
		/* what was accepted once is accepted again, all of it */
		if (err.code != 0 && d2v_reader_records(r2) != d2v_writer_records(w))
			abort();
		if (k != d2v_writer_records(w))
			abort();
		d2v_record_clear(&rec2);
		d2v_reader_free(r2);
		free(buf);
		d2v_writer_free(w);
		close(fd);
	}
	d2v_record_clear(&rec);
	d2v_reader_free(r);
	return 0;
}
