/* test_linfam.c: placeholder until the suite lands. */
#include "test.h"

const test_case tests_linfam[] = {{NULL, NULL}};
