/*
 * t.h - a tiny test harness: TAP-style "ok - ..." / "not ok - ..." lines,
 * counted by tests/run.  T_DONE() returns the exit status (1 on any failure).
 */
#ifndef D2V_T_H
#define D2V_T_H

#include <stdio.h>

static int t_fail, t_pass;

#define T_OK(cond, ...) do {                                              \
	if (cond) {                                                        \
		t_pass++;                                                  \
		printf("ok - ");                                           \
	} else {                                                           \
		t_fail++;                                                  \
		printf("not ok - %s:%d: ", __FILE__, __LINE__);            \
	}                                                                  \
	printf(__VA_ARGS__);                                               \
	printf("\n");                                                      \
	fflush(stdout);                                                    \
} while (0)

#define T_DONE() (t_fail ? 1 : 0)

#endif
