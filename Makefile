# agent-warden: `make demo` runs the proxy in front of an example agent; `make test` passes the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install system-deps test lint typecheck demo bench conformance clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

system-deps:
	sh scripts/system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict proxy

test: system-deps lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

demo: $(STAMP)
	@sh examples/demo.sh

bench: $(STAMP) system-deps
	bash bench/install.sh
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/conformance/run.py

# The official MCP conformance suite, direct and through the proxy (needs npm; a report).
conformance: $(STAMP)
	$(BIN)/python bench/conformance/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
