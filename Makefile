# Two entry points for a fresh machine: `make demo` and `make test`.
# Each bootstraps .venv from the package registries on first use.
SHELL := /bin/bash
PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck shellcheck pytest bench seal sysdeps clean

venv: $(STAMP)

# Dependencies are declared once, in pyproject.toml; the project itself is not
# installed as a package (packs are copied by the installer, not imported).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["dev"]))' > $(VENV)/requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(VENV)/requirements.txt
	touch $(STAMP)

# System packages the tests need (CI runs as root on a fresh machine).
sysdeps:
	@bash .ci/sysdeps

demo: $(STAMP)
	$(PY) scripts/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check . aurora
	$(VENV)/bin/ruff format --check . aurora

# Strict typing on the library code of the installer and of every pack.
TYPED := $(wildcard aurora_cli packs/pack01_common/aurora_common packs/pack01_common/aurora_boot.py \
	installer/aurora installer/aurora_installer.py \
	packs/pack05_plugin_api/core packs/pack05_plugin_api/plugins.py \
	packs/pack04_launcher/launcher packs/pack03_os_base/sandbox scripts/*.py)

typecheck: $(STAMP)
	$(VENV)/bin/mypy $(TYPED)

shellcheck: $(STAMP)
	git ls-files -z '*.sh' | xargs -0 --no-run-if-empty $(VENV)/bin/shellcheck

pytest: $(STAMP) sysdeps
	$(PY) -m pytest -q

# Ends with its own duration (the README quotes it from there, not by hand).
test:
	@start=$$(date +%s); $(MAKE) --no-print-directory lint typecheck shellcheck pytest && \
		echo "make test passed in $$(( $$(date +%s) - start )) s"

# Pin the sha256 of every artifact of every pack in this repository (after editing one;
# tests/test_sealed.py fails until then).
seal: $(STAMP)
	for manifest in packs/*/manifest.yaml; do \
		pack=$$(basename "$$(dirname "$$manifest")"); \
		$(PY) installer/aurora_installer.py seal --pack "$$pack" || exit 1; \
	done

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .aurora .pytest_cache .mypy_cache .ruff_cache
