/* tmpdir.c: fresh scratch directories under $TMPDIR (see tmpdir.h). */
#define _XOPEN_SOURCE 700 /* mkdtemp */
#include "tmpdir.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int temp_dir_make(char *dir, size_t cap, const char *prefix) {
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = P_tmpdir;
    int n = snprintf(dir, cap, "%s/%s-XXXXXX", base, prefix);
    if (n < 0 || (size_t)n >= cap) {
        if (cap) dir[0] = '\0';
        errno = ENAMETOOLONG;
        return -1;
    }
    return mkdtemp(dir) ? 0 : -1;
}
