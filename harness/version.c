/* version.c: the code version string (see version.h). The Makefile rebuilds
 * this file on every build so the string never goes stale. */
#include "version.h"

#ifndef MEMLAB_CODE_VERSION
#define MEMLAB_CODE_VERSION "unknown"
#endif

const char *memlab_code_version(void) { return MEMLAB_CODE_VERSION; }
