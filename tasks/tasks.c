/* tasks.c: the task table (one line per task) and the helpers every caller
 * of a task shares: data open/close, the longest sequence over evaluation
 * slices, and scoring with its defaults. What each task generates lives in
 * its own file. */
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "task.h"

extern const ml_task task_mqar;
extern const ml_task task_joint_recall;
extern const ml_task task_in_context_recall;
extern const ml_task task_noisy_recall;
extern const ml_task task_fuzzy_recall;
extern const ml_task task_selective_copy;
extern const ml_task task_lm;
extern const ml_task task_probe;

const ml_task *const ml_tasks[] = {&task_mqar,         &task_joint_recall, &task_in_context_recall,
                                   &task_noisy_recall, &task_fuzzy_recall, &task_selective_copy,
                                   &task_lm,           &task_probe,        NULL};

const ml_task *task_find(const char *name) {
    for (int i = 0; ml_tasks[i]; i++)
        if (!strcmp(ml_tasks[i]->name, name)) return ml_tasks[i];
    return NULL;
}

int task_open(const ml_task *t, const void *cfg, void **data, ml_error *e) {
    *data = NULL;
    return t->open ? t->open(cfg, data, e) : 0;
}

void task_close(const ml_task *t, void *data) {
    if (t->close && data) t->close(data);
}

int task_max_seq_len(const ml_task *t, const void *cfg) {
    int T = t->seq_len(cfg);
    int n = t->n_slices ? t->n_slices(cfg) : 0;
    for (int i = 0; i < n; i++) {
        ml_cfgbuf s;
        char label[64];
        if (t->cfg_size > sizeof s.bytes) break;
        t->slice(cfg, i, s.bytes, label, sizeof label);
        int Ti = t->seq_len(s.bytes);
        if (Ti > T) T = Ti;
    }
    return T;
}

long task_eval_examples(const ml_task *t, const void *cfg, const void *data, int split,
                        long want) {
    long have = t->split_size ? t->split_size(cfg, data, split) : 0;
    return have > 0 && have < want ? have : want;
}

void task_metric(ml_metric *out, const char *split, const char *name, double value) {
    snprintf(out->split, sizeof out->split, "%s", split);
    snprintf(out->name, sizeof out->name, "%s", name);
    out->value = value;
}

double task_accuracy_micro(const ml_eval_totals *t) {
    return t->positions > 0 ? (double)t->right / (double)t->positions : 0.0;
}

double task_accuracy_macro(const ml_eval_totals *t) {
    if (!t->class_count || !t->class_right) return 0.0;
    double sum = 0.0;
    int classes = 0;
    for (int c = 0; c < t->n_classes; c++) {
        if (t->class_count[c] == 0) continue;
        sum += (double)t->class_right[c] / (double)t->class_count[c];
        classes++;
    }
    return classes ? sum / classes : 0.0;
}

int task_score_macro(const void *cfg, const ml_eval_totals *t, ml_metric *out, int cap) {
    (void)cfg;
    int n = 0;
    if (n < cap) task_metric(&out[n++], "test", "accuracy", task_accuracy_micro(t));
    if (n < cap) task_metric(&out[n++], "test", "accuracy_macro", task_accuracy_macro(t));
    return n;
}

int task_score(const ml_task *t, const void *cfg, const ml_eval_totals *tot, ml_metric *out,
               int cap) {
    if (cap < 1) return 0;
    if (t->score) return t->score(cfg, tot, out, cap);
    task_metric(&out[0], "test", "accuracy", task_accuracy_micro(tot));
    return 1;
}
