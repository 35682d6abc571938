# The two commands of the README. Both install first (scripts/install.sh, idempotent,
# re-run only when pyproject.toml, constraints.txt or the script change).
VENV ?= .venv
STAMP := $(VENV)/.alterego-installed
PYTEST_ARGS ?=

.PHONY: run test install bench clean

run: $(STAMP)
	$(VENV)/bin/alterego run

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/alterego bench

$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
