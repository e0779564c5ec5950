/* err.c - see err.h. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int
d2v_err_set(d2v_err *err, int code, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL)
		return code;
	err->code = code;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof err->msg, fmt, ap);
	va_end(ap);
	return code;
}

void
d2v_err_prefix(d2v_err *err, const char *fmt, ...)
{
	char pre[D2V_ERR_MSG], old[D2V_ERR_MSG];
	va_list ap;

	if (err == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(pre, sizeof pre, fmt, ap);
	va_end(ap);
	memcpy(old, err->msg, sizeof old);
	size_t n = strlen(pre);

	if (n > sizeof err->msg - 3)
		n = sizeof err->msg - 3;
	memcpy(err->msg, pre, n);
	memcpy(err->msg + n, ": ", 2);
	n += 2;
	memcpy(err->msg + n, old, strnlen(old, sizeof err->msg - n - 1));
	err->msg[n + strnlen(old, sizeof err->msg - n - 1)] = '\0';
}

int
d2v_err_copy(d2v_err *dst, const d2v_err *src)
{
	if (dst != NULL && dst != src)
		*dst = *src;
	return src->code;
}

const char *
d2v_err_name(int code)
{
	switch (code) {
	case D2V_OK: return "ok";
	case D2V_EIO: return "io";
	case D2V_ENOMEM: return "nomem";
	case D2V_EFORMAT: return "format";
	case D2V_ETRUNC: return "truncated";
	case D2V_ELIMIT: return "limit";
	case D2V_EINVAL: return "invalid";
	case D2V_EMISMATCH: return "mismatch";
	case D2V_EEMPTY: return "empty";
	}
	return "unknown";
}
