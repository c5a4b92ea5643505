/* config.h: the fully resolved configuration of one run.
 *
 * A run_config is plain data (copyable with =): the task and the mixer keep
 * their own config structs inside fixed buffers, described by the schema
 * tables of the task and mixer tables. The spec parser fills it; the JSON
 * writer serialises it; its hash identifies the run. */
#ifndef MEMLAB_CONFIG_H
#define MEMLAB_CONFIG_H

#include "schema.h"

/* Storage for a task's or a mixer's own config struct. */
typedef union ml_cfgbuf {
    double align_d;
    long align_l;
    unsigned char bytes[2048];
} ml_cfgbuf;

enum { NORM_LAYER = 0, NORM_RMS = 1 };
enum { POS_NONE = 0, POS_LEARNED = 1 };

typedef struct model_config {
    char mixer[64];      /* name in the mixer table */
    int d_model;         /* C */
    int n_layers;
    int mlp;             /* bool: MLP sub-block after the mixer */
    int mlp_ratio;       /* MLP hidden width = mlp_ratio * d_model */
    int norm;            /* NORM_LAYER | NORM_RMS */
    double norm_eps;
    int conv;            /* short causal depthwise conv before the mixer: taps, 0 = off */
    int tie_embeddings;  /* LM head shares the embedding matrix */
    int position;        /* POS_NONE | POS_LEARNED */
    double init_std;     /* std of normal-initialised weights */
    ml_cfgbuf mixer_cfg; /* the mixer's own struct */
} model_config;

typedef struct train_config {
    long steps;
    int batch_size;
    double lr, lr_min;   /* peak and final learning rate (cosine) */
    int warmup;          /* warmup steps */
    double weight_decay, beta1, beta2, adam_eps;
    double grad_clip;    /* max global norm, 0 = off */
    long train_examples; /* size of the training set, 0 = fresh examples forever */
    long seed;
    int full_head;       /* LM head at every position instead of supervised only */
    int matmul;          /* MATMUL_FP32 | MATMUL_BF16: precision of the matrix products */
} train_config;

enum { MATMUL_FP32 = 0, MATMUL_BF16 = 1 };

typedef struct eval_config {
    int every;    /* evaluate every this many steps (0 = only at the end) */
    int examples; /* test examples per evaluation */
    int batch_size;
} eval_config;

typedef struct run_config {
    char name[ML_STR];         /* label of the spec */
    char description[ML_STR];
    char task[64];             /* name in the task table */
    ml_cfgbuf task_cfg;        /* the task's own struct */
    model_config model;
    train_config train;
    eval_config eval;
} run_config;

/* Schema tables of the fixed sections (config.c). The task and mixer sections
 * add their own tables from the task and mixer tables. */
extern const ml_field model_fields[];
extern const ml_field train_fields[];
extern const ml_field eval_fields[];

#endif
