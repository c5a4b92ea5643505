/* tasks.c: the task table. One line per task. */
#include <string.h>

#include "task.h"

extern const ml_task task_mqar;

const ml_task *const ml_tasks[] = {&task_mqar, NULL};

const ml_task *task_find(const char *name) {
    for (int i = 0; ml_tasks[i]; i++)
        if (!strcmp(ml_tasks[i]->name, name)) return ml_tasks[i];
    return NULL;
}
