# memlab build.
#   make            release build (./memlab), installing Debian packages if missing
#   make debug      -O0 -g with asserts   (build/debug/)
#   make asan       address + undefined sanitizers (build/asan/)
#   make test       build and run every test; closing line "N passed, N failed"
#   make run        the main job: the default spec into results/memlab.db
#   make bench      training-step benchmark against PyTorch into results/bench.db and
#                   results/bench.md (BENCH_ARGS="..." adds memlab bench options)
#   make twin       check the timing twin (its chunk kernel and memory mixers against the
#                   correctness twins), regenerate the PyTorch twin fixtures (needs python3-torch)
#   make fuzz       the spec parser's libFuzzer target (clang): build/fuzz/fuzz_spec
#   make deps       install the Debian packages memlab needs
#   make figures    run what is missing of the paper sweeps (PRESET=quick, the
#                   default, or full) and draw every figure into plots/out/
#   make test-cluster  sweeps on real engines: tests/cli_cluster.sh (with mpirun)
#                   and tests/cluster_slurm.sh (a local Slurm; root, installs slurm-wlm)
# WERROR=1 (set automatically when CI=true) turns warnings into errors.

MODE ?= release
BUILD := build/$(MODE)
CC ?= cc

WARN := -Wall -Wextra -Wshadow -Wmissing-prototypes -Wstrict-prototypes -Wpointer-arith \
        -Wformat=2 -Wundef -Wcast-qual -Wvla -Wno-unused-parameter
ifneq ($(filter true 1,$(CI) $(WERROR)),)
WARN += -Werror
endif

ifeq ($(MODE),release)
# -O3: the element-wise loops of the kernels and the model vectorise (no fast-math:
# results stay IEEE)
OPT := -O3 -march=native -DNDEBUG
else ifeq ($(MODE),debug)
OPT := -O0 -g
else ifeq ($(MODE),asan)
OPT := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif

INC := -Imodels -Iharness -Itasks -I/usr/include/x86_64-linux-gnu
# OpenMP: the kernels share batch, heads and rows among memlab's threads
# (OpenBLAS's thread count, which --threads sets); BLAS runs single-threaded
# inside those regions.
OMP := -fopenmp
CFLAGS := -std=gnu11 $(OPT) $(OMP) $(WARN) $(INC) -MMD -MP
LDFLAGS := $(filter -fsanitize=%,$(OPT)) $(OMP)
LDLIBS := -lopenblas -lsqlite3 -lyaml -lm

CODE_VERSION := $(shell git describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)

LIB_SRC := $(wildcard models/*.c) $(wildcard tasks/*.c) $(filter-out harness/main.c,$(wildcard harness/*.c))
TEST_SRC := $(wildcard tests/*.c)

LIB_F := $(patsubst %.c,$(BUILD)/f/%.o,$(LIB_SRC))
LIB_D := $(patsubst %.c,$(BUILD)/d/%.o,$(LIB_SRC))
TEST_D := $(patsubst %.c,$(BUILD)/d/%.o,$(TEST_SRC))

.PHONY: all release debug asan binaries test test-cluster run bench twin fuzz deps deps-ok clean figures FORCE
all: release

release: deps-ok
	@$(MAKE) --no-print-directory MODE=release binaries
	@# by rename: a ./memlab that is running keeps its file
	@cp build/release/memlab ./memlab.new && mv -f ./memlab.new ./memlab
debug: deps-ok
	@$(MAKE) --no-print-directory MODE=debug binaries
asan: deps-ok
	@$(MAKE) --no-print-directory MODE=asan binaries

binaries: $(BUILD)/memlab $(BUILD)/test_units

$(BUILD)/memlab: $(BUILD)/f/harness/main.o $(LIB_F)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/test_units: $(TEST_D) $(LIB_D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Objects depend on the flags they were compiled with: changing OPT or OMP
# rebuilds them.
FLAGS_STAMP := $(BUILD)/.cflags
$(FLAGS_STAMP): FORCE
	@mkdir -p $(BUILD)
	@echo '$(CFLAGS) $(LDFLAGS)' | cmp -s - $@ || echo '$(CFLAGS) $(LDFLAGS)' >$@

$(BUILD)/f/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<
$(BUILD)/d/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DMEMLAB_DOUBLE -c -o $@ $<

# The code version is compiled in fresh on every build, so it never goes stale.
$(BUILD)/f/harness/version.o $(BUILD)/d/harness/version.o: harness/version.c FORCE
	@mkdir -p $(dir $@)
	@$(CC) $(CFLAGS) -DMEMLAB_CODE_VERSION='"$(CODE_VERSION)"' -c -o $@ $<
FORCE:

test: release
	@bash tests/run.sh build/release

# Not in `make test`: starts a Slurm controller and node daemon on this machine.
test-cluster: release
	@bash tests/cli_cluster.sh build/release/memlab && bash tests/cluster_slurm.sh build/release/memlab

run: release
	./memlab train sweeps/mqar_softmax.yaml --db results/memlab.db

# The figures (plots/figures.sh): each figure's sweep at PRESET into
# results/memlab.db (resumable), then gnuplot from the export. FIGS="1 3"
# draws some; FIGURE_ARGS="--no-run" draws from what the database holds.
PRESET ?= quick
FIGS ?=
FIGURE_ARGS ?=
figures: release
	bash plots/figures.sh --preset $(PRESET) --db results/memlab.db $(FIGURE_ARGS) $(FIGS)

# The default: softmax and linear attention over the whole grid (d 64,128,256 x
# L 64,256,1024 x 1,2 threads x both heads), the twin where torch imports, and the
# --jobs sweep. Every mixer: make bench BENCH_ARGS="--mixers all"; a smoke run:
# BENCH_ARGS=--quick.
BENCH_ARGS ?= --mixers softmax,linear
bench: release
	./memlab bench --db results/bench.db --report results/bench.md $(BENCH_ARGS)

# The spec parser's libFuzzer target (clang; address and undefined-behaviour
# sanitizers): build/fuzz/fuzz_spec CORPUS_DIR [SEED_DIRS...], e.g.
#   build/fuzz/fuzz_spec -max_total_time=60 -dict=tests/fuzz_spec.dict \
#       build/fuzz/corpus tests/bad tests/bad/sweep sweeps
FUZZ_CC ?= clang
fuzz: deps-ok
	@mkdir -p build/fuzz/corpus
	$(FUZZ_CC) -std=gnu11 -O1 -g -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=undefined -Wno-unknown-pragmas $(INC) \
	    -o build/fuzz/fuzz_spec tests/fuzz_spec.c $(LIB_SRC) $(LDLIBS)

twin:
	/usr/bin/python3 tests/twin/bench_torch.py --self-check
	/usr/bin/python3 tests/twin/twin.py tests/fixtures
	/usr/bin/python3 tests/twin/twin_slots.py tests/fixtures
	/usr/bin/python3 tests/twin/twin_memcache.py tests/fixtures

# deps-ok: a stamp so that the package check runs once per checkout.
deps-ok: build/.deps-ok
build/.deps-ok: .ci/deps.sh
	@bash .ci/deps.sh
	@mkdir -p build && touch $@
deps:
	@bash .ci/deps.sh

clean:
	rm -rf build memlab

-include $(shell find build -name '*.d' 2>/dev/null)
