/* test_slots.c: placeholder until the suite lands. */
#include "test.h"

const test_case tests_slots[] = {{NULL, NULL}};
