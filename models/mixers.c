/* mixers.c: the mixer table. One line per mixer. */
#include <string.h>

#include "mixer.h"

extern const ml_mixer mixer_softmax;
extern const ml_mixer mixer_linear;

const ml_mixer *const ml_mixers[] = {&mixer_softmax, &mixer_linear, NULL};

const ml_mixer *mixer_find(const char *name) {
    for (int i = 0; ml_mixers[i]; i++)
        if (!strcmp(ml_mixers[i]->name, name)) return ml_mixers[i];
    return NULL;
}
