/* test_sweep.c: placeholder until the suite lands. */
#include "test.h"

const test_case tests_sweep[] = {{NULL, NULL}};
