/* test_perf.c: placeholder until the suite lands. */
#include "test.h"

const test_case tests_perf[] = {{NULL, NULL}};
