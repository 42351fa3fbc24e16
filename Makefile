# Two entry points on a fresh Debian machine: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= data/bible
RUN    ?= runs/demo
DEMO_MINUTES ?= 30
# torch 2.13.0, the CPU build, wherever this runs: on Linux, PyPI's torch is the CUDA build (several
# GB). It comes from PyTorch's CPU index when that answers; else from the default index, without its
# dependencies at first, so that check-cpu-torch refuses a CUDA build before its nvidia-* packages
# are fetched. README.md ("GPU") says how to get the CUDA build instead.
TORCH  ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup check-cpu-torch demo test test-slow bench bench-quality bench-load bench-attack bench-memory clean

$(STAMP): pyproject.toml
	@# Debian's python3 lacks ensurepip (and so venv) until python3-venv is installed.
	@$(PYTHON) -c "import ensurepip" 2>/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --timeout 20 --retries 1 --index-url $(TORCH_INDEX) $(TORCH) 2>/dev/null || $(BIN)/pip install -q --no-deps $(TORCH)
	@$(MAKE) --no-print-directory check-cpu-torch
	$(BIN)/pip install -q $(TORCH) -e '.[test,tensorboard]'
	@touch $@

# Fails, saying what to do, unless the venv's torch is a CPU build (no CUDA, no ROCm).
check-cpu-torch:
	@$(BIN)/python -c 'import sys, torch; sys.exit(None if torch.version.cuda is None and torch.version.hip is None else \
		f"make: .venv holds torch {torch.__version__}, a GPU build, where make test and make demo install the CPU build: " \
		"rm -rf .venv and run make again where $(TORCH_INDEX) answers (or set TORCH_INDEX to a mirror of it); " \
		"for the GPU build, see README.md (GPU)")'

setup: $(STAMP)

# The Bible quickstart: corpus, time-boxed training of the small preset, checkpoint
# averaging kept only if it helps on valid, beam and length penalty chosen on
# valid, famous verses side by side, sacreBLEU on the test split.
demo: $(STAMP)
	$(BIN)/aiayn prepare bible --out $(DATA) --apt-update
	@if [ -d $(RUN)/checkpoints ]; then echo "$(RUN) is already trained: reusing it (rm -rf $(RUN) to train again)"; \
	else $(BIN)/aiayn train --data $(DATA) --out $(RUN) --preset small max_minutes=$(DEMO_MINUTES) $(TRAIN_ARGS); fi
	$(BIN)/aiayn average $(RUN) --last 5
	$(BIN)/aiayn tune-decoding --model $(RUN)
	$(BIN)/aiayn showcase --model $(RUN) --data $(DATA)
	$(BIN)/aiayn evaluate --model $(RUN) --data $(DATA) --split test --out $(RUN)/eval
	@echo "run folder: $(RUN)  (metrics.csv, checkpoints/, averaged.pt, eval/)"

# Formatting and lint first (ruff, settings in pyproject.toml), then the suite.
test: $(STAMP) check-cpu-torch
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
	@# A skipped test fails here (tests/strict_skips.py): a missing corpus or package must not pass quietly.
	AIAYN_STRICT_TESTS=1 $(BIN)/pytest -q

# Tests marked @pytest.mark.slow (none yet: the whole suite runs in about 2 minutes on 2 cores).
test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow || [ $$? -eq 5 ]

# CPU benchmarks, 2 threads, each figure a ratio measured in one run (docs/performance.md):
# aiayn vs torch.nn.Transformer (training), Hugging Face Marian and CTranslate2 (decoding).
BENCH_OUT ?= runs/bench
bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	@[ -f $(DATA)/meta.json ] || $(BIN)/aiayn prepare bible --out $(DATA) --apt-update
	@mkdir -p $(BENCH_OUT)
	$(BIN)/python -m bench.train --data $(DATA) --presets small,base --profile > $(BENCH_OUT)/train.jsonl
	$(BIN)/python -m bench.decode --data $(DATA) --presets small --profile > $(BENCH_OUT)/decode.jsonl
	@echo "JSON lines: $(BENCH_OUT)/train.jsonl $(BENCH_OUT)/decode.jsonl"

# Quality per CPU minute: aiayn small vs a stock Hugging Face Marian of the same shape, each
# trained QUALITY_MINUTES on DATA, one after the other (docs/quality.md). About 2 x 22 minutes.
QUALITY_MINUTES ?= 20
bench-quality: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	@[ -f $(DATA)/meta.json ] || $(BIN)/aiayn prepare bible --out $(DATA) --apt-update
	@mkdir -p $(BENCH_OUT) && rm -rf $(BENCH_OUT)/quality
	$(BIN)/python -m bench.quality --data $(DATA) --minutes $(QUALITY_MINUTES) --work $(BENCH_OUT)/quality \
		$(QUALITY_ARGS) > $(BENCH_OUT)/quality.jsonl
	@echo "JSON lines: $(BENCH_OUT)/quality.jsonl"

# Load on `aiayn serve` (loopback only): 50 clients x 100 requests, a fifth of them malformed;
# requests/s, latency, errors (must be 0), 5xx (must be 0), server RSS. A random tiny model unless
# LOAD_ARGS names one, e.g. LOAD_ARGS="--model runs/demo".
bench-load: $(STAMP)
	@mkdir -p $(BENCH_OUT)
	$(BIN)/python -m bench.load $(LOAD_ARGS) > $(BENCH_OUT)/load.jsonl
	@echo "JSON lines: $(BENCH_OUT)/load.jsonl"

# An attack on `aiayn serve` (loopback only) while a well-behaved client asks /health and /translate
# once a second: 100 idle sockets, 20 clients that never read their answers, the longest decoding the
# limits allow, a half-closed client, the malformed requests. The client's p50/p99 quiet and attacked
# and its errors (must be 0), the longest request past its limit, the server's RSS (docs/performance.md,
# "The service under attack"). About 2 minutes; ATTACK_ARGS="--model runs/demo" loads a trained model.
bench-attack: $(STAMP)
	@mkdir -p $(BENCH_OUT)
	$(BIN)/python -m bench.attack $(ATTACK_ARGS) > $(BENCH_OUT)/attack.jsonl
	@echo "JSON lines: $(BENCH_OUT)/attack.jsonl"

# Resident memory of `aiayn train --preset small max_minutes=MEMORY_MINUTES`, sampled every 5 s, in
# fp32 then bf16, one run after the other (docs/performance.md, "Training memory"). About
# 2 x (MEMORY_MINUTES + 5) minutes: the end of each run translates the valid split.
MEMORY_MINUTES ?= 30
bench-memory: $(STAMP)
	@[ -f $(DATA)/meta.json ] || $(BIN)/aiayn prepare bible --out $(DATA) --apt-update
	@mkdir -p $(BENCH_OUT)
	$(BIN)/python -m bench.memory --data $(DATA) --minutes $(MEMORY_MINUTES) --precisions fp32,bf16 \
		$(MEMORY_ARGS) > $(BENCH_OUT)/memory.jsonl
	@echo "JSON lines: $(BENCH_OUT)/memory.jsonl"

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
