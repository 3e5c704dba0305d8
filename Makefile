# dmlviz — the two commands a newcomer needs:
#   make report   set up .venv and run the main job (execute the notebooks, write the report
#                 and the course book)
#   make test     set up .venv and run the test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROFILE ?= quick
DEVICE  ?= auto

.PHONY: setup browser test test-fast report lint clean

setup: $(STAMP)

# torch is pinned in constraints.txt and installed in the same pip command as everything
# else, so pip takes the CPU wheel instead of pulling a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (dmlviz)" >/dev/null
	touch $(STAMP)

# The report's browser test drives Debian's Chromium (never a downloaded browser). As root
# (CI) it is installed here; otherwise install it yourself or pass PYTEST_ARGS=--skip-browser.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else \
	    echo "Chromium is missing: 'sudo apt-get install chromium', or skip the browser tests" \
	         "explicitly with: make test PYTEST_ARGS=--skip-browser"; \
	  fi; }

test: setup browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# everything but the notebook executions (fast iteration)
test-fast: setup
	$(BIN)/python -m pytest -m "not notebook" $(PYTEST_ARGS)

report: setup
	$(BIN)/dmlviz run all --profile $(PROFILE) --device $(DEVICE) --figures figures --book

lint: setup
	$(BIN)/ruff check dmlviz tests benchmarks scripts

clean:
	rm -rf $(VENV) reports .pytest_cache
