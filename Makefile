# memlab build.
#   make            release build (./memlab), installing Debian packages if missing
#   make debug      -O0 -g with asserts   (build/debug/)
#   make asan       address + undefined sanitizers (build/asan/)
#   make test       build and run every test; closing line "N passed, N failed"
#   make run        the main job: the default spec into results/memlab.db
#   make bench      tokens/s benchmark into results/bench.db and results/bench.md
#   make twin       regenerate the PyTorch twin fixtures (needs python3-torch)
#   make deps       install the Debian packages memlab needs
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
OPT := -O2 -march=native -DNDEBUG
else ifeq ($(MODE),debug)
OPT := -O0 -g
else ifeq ($(MODE),asan)
OPT := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif

INC := -Imodels -Iharness -Itasks -I/usr/include/x86_64-linux-gnu
CFLAGS := -std=gnu11 $(OPT) $(WARN) $(INC) -MMD -MP
LDFLAGS := $(filter -fsanitize=%,$(OPT))
LDLIBS := -lopenblas -lsqlite3 -lyaml -lm

CODE_VERSION := $(shell git describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)

LIB_SRC := $(wildcard models/*.c) $(wildcard tasks/*.c) $(filter-out harness/main.c,$(wildcard harness/*.c))
TEST_SRC := $(wildcard tests/*.c)

LIB_F := $(patsubst %.c,$(BUILD)/f/%.o,$(LIB_SRC))
LIB_D := $(patsubst %.c,$(BUILD)/d/%.o,$(LIB_SRC))
TEST_D := $(patsubst %.c,$(BUILD)/d/%.o,$(TEST_SRC))

.PHONY: all release debug asan binaries test run bench twin deps deps-ok clean FORCE
all: release

release: deps-ok
	@$(MAKE) --no-print-directory MODE=release binaries
	@cp build/release/memlab ./memlab
debug: deps-ok
	@$(MAKE) --no-print-directory MODE=debug binaries
asan: deps-ok
	@$(MAKE) --no-print-directory MODE=asan binaries

binaries: $(BUILD)/memlab $(BUILD)/test_units

$(BUILD)/memlab: $(BUILD)/f/harness/main.o $(LIB_F)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/test_units: $(TEST_D) $(LIB_D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/f/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<
$(BUILD)/d/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DMEMLAB_DOUBLE -c -o $@ $<

# The code version is compiled in fresh on every build, so it never goes stale.
$(BUILD)/f/harness/version.o $(BUILD)/d/harness/version.o: harness/version.c FORCE
	@mkdir -p $(dir $@)
	@$(CC) $(CFLAGS) -DMEMLAB_CODE_VERSION='"$(CODE_VERSION)"' -c -o $@ $<
FORCE:

test: release
	@bash tests/run.sh build/release

run: release
	./memlab train sweeps/mqar_softmax.yaml --db results/memlab.db

bench: release
	./memlab bench --db results/bench.db --report results/bench.md

twin:
	/usr/bin/python3 tests/twin/twin.py tests/fixtures

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
