/* safetensors.c - see safetensors.h. */
#include "safetensors.h"
#include "atomic.h"

#include <openssl/evp.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_HEADER ((uint64_t)100 << 20)

static size_t
dtype_size(const char *dt)
{
	if (strcmp(dt, "F32") == 0 || strcmp(dt, "I32") == 0)
		return 4;
	if (strcmp(dt, "U8") == 0)
		return 1;
	if (strcmp(dt, "F16") == 0 || strcmp(dt, "BF16") == 0)
		return 2;
	if (strcmp(dt, "I64") == 0 || strcmp(dt, "F64") == 0)
		return 8;
	return 0;
}

/* The [a, b) byte range of tensor entry v in the data section. */
static void
span(const json_t *v, uint64_t *a, uint64_t *b)
{
	const json_t *off = json_object_get(v, "data_offsets");

	*a = (uint64_t)json_integer_value(json_array_get(off, 0));
	*b = (uint64_t)json_integer_value(json_array_get(off, 1));
}

/*
 * The format does not align tensors: a file with a u8 tensor of odd size
 * before an f32 one (as the PyTorch fixtures have) leaves the floats at
 * odd addresses.  When any tensor's offset is not a multiple of 8, the
 * data is laid out again, every tensor at a multiple of 8, and the
 * in-memory header's data_offsets say where.
 */
static int
realign(d2v_st *st, const char *path, d2v_err *err)
{
	const char *k;
	json_t *v;
	size_t total = 0, pos = 0;
	int odd = 0;
	unsigned char *nd;

	json_object_foreach(st->header, k, v) {
		uint64_t a, b;

		if (strcmp(k, "__metadata__") == 0)
			continue;
		span(v, &a, &b);
		odd |= a % 8 != 0;
		total += (size_t)(b - a + 7) / 8 * 8;
	}
	if (!odd)
		return 0;
	if ((nd = malloc(total ? total : 1)) == NULL) {
		d2v_st_free(st);
		return d2v_err_set(err, D2V_ENOMEM, "%s: out of memory", path);
	}
	json_object_foreach(st->header, k, v) {
		json_t *off = json_object_get(v, "data_offsets");
		uint64_t a, b;

		if (strcmp(k, "__metadata__") == 0)
			continue;
		span(v, &a, &b);
		memcpy(nd + pos, st->data + a, (size_t)(b - a));
		json_array_set_new(off, 0, json_integer((json_int_t)pos));
		json_array_set_new(off, 1, json_integer((json_int_t)(pos + (b - a))));
		pos += (size_t)(b - a + 7) / 8 * 8;
	}
	free(st->data);
	st->data = nd;
	st->datalen = total;
	return 0;
}

/* hex (65 bytes) = the SHA-256 of n parts; 0 or -1 */
static int
sha256_hex(char *hex, const void *const *part, const size_t *len, int n)
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	unsigned char md[32];
	unsigned int ml = 0;
	int ok = c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1;

	for (int i = 0; ok && i < n; i++)
		ok = EVP_DigestUpdate(c, part[i], len[i]) == 1;
	ok = ok && EVP_DigestFinal_ex(c, md, &ml) == 1 && ml == 32;
	EVP_MD_CTX_free(c);
	for (int i = 0; ok && i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	return ok ? 0 : -1;
}

int
d2v_st_load(d2v_st *st, const char *path, d2v_err *err)
{
	unsigned char len8[8];
	uint64_t hlen = 0;
	struct stat sb;
	char *hdr = NULL;
	json_error_t je;
	const char *k;
	json_t *v;
	int fd;

	memset(st, 0, sizeof *st);
	snprintf(st->path, sizeof st->path, "%s", path);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return d2v_err_set(err, D2V_EIO, "open %s: %s", path,
		    strerror(errno));
	if (fstat(fd, &sb) == 0 && S_ISDIR(sb.st_mode)) {
		close(fd);
		return d2v_err_set(err, D2V_EINVAL, "%s is a directory, not a "
		    "safetensors file", path);
	}
	if (fstat(fd, &sb) < 0 || read(fd, len8, 8) != 8) {
		close(fd);
		return d2v_err_set(err, D2V_EFORMAT, "%s: not a safetensors "
		    "file (shorter than 8 bytes)", path);
	}
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | len8[i];
	if (hlen == 0 || hlen > MAX_HEADER || hlen + 8 > (uint64_t)sb.st_size) {
		close(fd);
		return d2v_err_set(err, D2V_EFORMAT, "%s: bad safetensors header "
		    "length %llu for a file of %lld bytes", path,
		    (unsigned long long)hlen, (long long)sb.st_size);
	}
	st->datalen = (size_t)sb.st_size - 8 - (size_t)hlen;
	hdr = malloc((size_t)hlen);
	st->data = malloc(st->datalen ? st->datalen : 1);
	if (hdr == NULL || st->data == NULL ||
	    read(fd, hdr, (size_t)hlen) != (ssize_t)hlen ||
	    (st->datalen && read(fd, st->data, st->datalen) != (ssize_t)st->datalen)) {
		close(fd);
		free(hdr);
		d2v_st_free(st);
		return d2v_err_set(err, D2V_EIO, "%s: read error", path);
	}
	close(fd);
	st->header = json_loadb(hdr, (size_t)hlen, 0, &je);
	free(hdr);
	if (!json_is_object(st->header)) {
		d2v_st_free(st);
		return d2v_err_set(err, D2V_EFORMAT, "%s: header is not a JSON "
		    "object: %s", path, je.text);
	}
	json_object_foreach(st->header, k, v) {
		json_t *sh = json_object_get(v, "shape");
		json_t *off = json_object_get(v, "data_offsets");
		const char *dt = json_string_value(json_object_get(v, "dtype"));
		uint64_t n = 1, a, b;
		size_t i;
		json_t *d;

		if (strcmp(k, "__metadata__") == 0)
			continue;
		if (dt == NULL || dtype_size(dt) == 0 || !json_is_array(sh) ||
		    json_array_size(sh) > 8 || !json_is_array(off) ||
		    json_array_size(off) != 2) {
			int rc = d2v_err_set(err, D2V_EFORMAT, "%s: tensor %s has a "
			    "bad dtype, shape or data_offsets", path, k);

			d2v_st_free(st);
			return rc;
		}
		json_array_foreach(sh, i, d) {
			if (!json_is_integer(d) || json_integer_value(d) < 0 ||
			    __builtin_mul_overflow(n, (uint64_t)json_integer_value(d), &n)) {
				int rc = d2v_err_set(err, D2V_EFORMAT, "%s: tensor %s "
				    "has a bad shape", path, k);

				d2v_st_free(st);
				return rc;
			}
		}
		span(v, &a, &b);
		if (b < a || b > st->datalen || __builtin_mul_overflow(n,
		    (uint64_t)dtype_size(dt), &n) || b - a != n) {
			int rc = d2v_err_set(err, D2V_EFORMAT, "%s: tensor %s: "
			    "data_offsets [%llu, %llu] do not match its shape or "
			    "the file", path, k, (unsigned long long)a,
			    (unsigned long long)b);

			d2v_st_free(st);
			return rc;
		}
	}
	{
		const char *want = json_string_value(json_object_get(
		    json_object_get(st->header, "__metadata__"), "data_sha256"));
		const void *part = st->data;
		char got[65];

		if (want != NULL) {
			if (sha256_hex(got, &part, &st->datalen, 1) < 0) {
				d2v_st_free(st);
				return d2v_err_set(err, D2V_ENOMEM, "%s: cannot compute "
				    "SHA-256", path);
			}
			if (strcmp(got, want) != 0) {
				d2v_st_free(st);
				return d2v_err_set(err, D2V_EFORMAT, "%s: the data do not "
				    "match the SHA-256 in its metadata (data_sha256): the "
				    "file is damaged", path);
			}
			st->verified = 1;
		}
	}
	return realign(st, path, err);
}

void
d2v_st_free(d2v_st *st)
{
	json_decref(st->header);
	free(st->data);
	memset(st, 0, sizeof *st);
}

const char *
d2v_st_meta(const d2v_st *st, const char *key)
{
	return json_string_value(json_object_get(json_object_get(st->header,
	    "__metadata__"), key));
}

const void *
d2v_st_get(const d2v_st *st, const char *name, const char *dtype, int *rank,
    int64_t *shape, size_t *nbytes, d2v_err *err)
{
	json_t *v = json_object_get(st->header, name), *sh, *d;
	const char *dt;
	size_t i;
	uint64_t a, b;

	if (v == NULL || strcmp(name, "__metadata__") == 0)
		return NULL;
	dt = json_string_value(json_object_get(v, "dtype"));
	if (strcmp(dt, dtype) != 0) {
		d2v_err_set(err, D2V_EFORMAT, "%s: tensor %s is %s, expected %s",
		    st->path, name, dt, dtype);
		return NULL;
	}
	sh = json_object_get(v, "shape");
	if (rank)
		*rank = (int)json_array_size(sh);
	json_array_foreach(sh, i, d)
		if (shape)
			shape[i] = json_integer_value(d);
	span(v, &a, &b);
	if (nbytes)
		*nbytes = (size_t)(b - a);
	return st->data + a;
}

static int
cmp_entry(const void *a, const void *b)
{
	return strcmp(((const d2v_st_entry *)a)->name,
	    ((const d2v_st_entry *)b)->name);
}

static int
write_all(int fd, const void *p, size_t n)
{
	const char *c = p;

	while (n > 0) {
		ssize_t k = write(fd, c, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -1;
		c += k;
		n -= (size_t)k;
	}
	return 0;
}

int
d2v_st_save(const char *path, const json_t *meta, const d2v_st_entry *e,
    int n, d2v_err *err)
{
	d2v_st_entry *s = malloc(sizeof *s * (size_t)(n ? n : 1));
	json_t *h = json_object();
	char *txt = NULL;
	size_t off = 0, hlen, pad;
	unsigned char len8[8];
	int rc = 0, e_no = 0;
	d2v_atomic at;

	if (s == NULL || h == NULL)
		goto nomem;
	memcpy(s, e, sizeof *s * (size_t)n);
	qsort(s, (size_t)n, sizeof *s, cmp_entry);
	{
		/* the metadata with the data's SHA-256 */
		json_t *m = meta != NULL ? json_deep_copy(meta) : json_object();
		const void **part = malloc(sizeof *part * (size_t)(n ? n : 1));
		size_t *len = malloc(sizeof *len * (size_t)(n ? n : 1));
		char hex[65];
		int bad = m == NULL || part == NULL || len == NULL;

		for (int i = 0; !bad && i < n; i++) {
			part[i] = s[i].data;
			len[i] = s[i].nbytes;
		}
		bad = bad || sha256_hex(hex, part, len, n) < 0 ||
		    json_object_set_new(m, "data_sha256", json_string(hex)) < 0 ||
		    json_object_set_new(h, "__metadata__", m) < 0;
		free(part);
		free(len);
		if (bad)
			goto nomem;
	}
	for (int i = 0; i < n; i++) {
		json_t *shape = json_array();

		for (int d = 0; d < s[i].rank; d++)
			json_array_append_new(shape, json_integer(s[i].shape[d]));
		json_object_set_new(h, s[i].name, json_pack("{s:s,s:o,s:[I,I]}",
		    "dtype", s[i].dtype, "shape", shape, "data_offsets",
		    (json_int_t)off, (json_int_t)(off + s[i].nbytes)));
		off += s[i].nbytes;
	}
	txt = json_dumps(h, JSON_COMPACT | JSON_SORT_KEYS);
	if (txt == NULL)
		goto nomem;
	hlen = strlen(txt);
	pad = (8 - hlen % 8) % 8;
	for (int i = 0; i < 8; i++)
		len8[i] = (unsigned char)((uint64_t)(hlen + pad) >> (8 * i));
	if ((rc = d2v_atomic_open(&at, path, 0644, err)) < 0)
		goto out;
	if (write_all(at.fd, len8, 8) < 0 || write_all(at.fd, txt, hlen) < 0 ||
	    write_all(at.fd, "        ", pad) < 0)
		goto ioerr;
	for (int i = 0; i < n; i++)
		if (s[i].nbytes && write_all(at.fd, s[i].data, s[i].nbytes) < 0)
			goto ioerr;
	rc = d2v_atomic_commit(&at, err);
	goto out;
ioerr:
	e_no = errno;
	d2v_atomic_abort(&at);
	rc = d2v_err_set(err, D2V_EIO, "write %s: %s", path, strerror(e_no));
	goto out;
nomem:
	rc = d2v_err_set(err, D2V_ENOMEM, "out of memory writing %s", path);
out:
	free(txt);
	free(s);
	json_decref(h);
	return rc;
}
