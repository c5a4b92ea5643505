/* tmpdir.h: fresh private directories for scratch files. */
#ifndef MEMLAB_TMPDIR_H
#define MEMLAB_TMPDIR_H

#include <stddef.h>

/* Create a fresh directory "$TMPDIR/PREFIX-" plus six random characters (TMPDIR unset or empty:
 * the system's temporary directory, /tmp) with mode 0700; its path goes to
 * dir[cap]. Returns 0, or -1 with errno set (ENAMETOOLONG when the path does
 * not fit). The caller removes it. */
int temp_dir_make(char *dir, size_t cap, const char *prefix);

#endif
