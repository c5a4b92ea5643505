/* mixers.c: the mixer table. One line per mixer. */
#include <string.h>

#include "mixer.h"

extern const ml_mixer mixer_softmax;
extern const ml_mixer mixer_linear;
extern const ml_mixer mixer_deltanet;
extern const ml_mixer mixer_gated_deltanet;
extern const ml_mixer mixer_mamba2;
extern const ml_mixer mixer_based;
extern const ml_mixer mixer_mom;
extern const ml_mixer mixer_slots;
extern const ml_mixer mixer_memcache;

const ml_mixer *const ml_mixers[] = {&mixer_softmax, &mixer_linear, &mixer_deltanet,
                                     &mixer_gated_deltanet, &mixer_mamba2, &mixer_based,
                                     &mixer_mom, &mixer_slots, &mixer_memcache, NULL};

const ml_mixer *mixer_find(const char *name) {
    for (int i = 0; ml_mixers[i]; i++)
        if (!strcmp(ml_mixers[i]->name, name)) return ml_mixers[i];
    return NULL;
}
