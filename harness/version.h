/* version.h: the code version compiled into this binary (git describe at
 * build time, "-dirty" when the tree had uncommitted changes). */
#ifndef MEMLAB_VERSION_H
#define MEMLAB_VERSION_H
const char *memlab_code_version(void);
#endif
