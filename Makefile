# batchstore: `make demo` and `make test` each set up a fresh machine first (system packages, the package).
PYTHON ?= python3
STAMP := .setup.stamp
DEMO_DIR ?= demo-out

.PHONY: setup demo test lint perf clean

$(STAMP): pyproject.toml setup.py batchstore/dicom/_walkfast.c batchstore/dicom/_bytes.h batchstore/receiver/_onemessage.c \
		batchstore/receiver/_sibling.c
	@if [ ! -x /usr/bin/storescp ] || [ ! -x /usr/sbin/Orthanc ] || [ ! -x /usr/bin/openssl ] \
	    || [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	    echo "installing dcmtk, orthanc, openssl, chromium and chromium-driver (Debian packages)"; \
	    $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq dcmtk orthanc openssl chromium chromium-driver >/dev/null; \
	fi
	$(PYTHON) -m pip install -q -e '.[test,cluster]'
	@# bytecode caches, as an installed copy has them (also where PYTHONDONTWRITEBYTECODE is set)
	$(PYTHON) -m compileall -q batchstore
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PYTHON) scripts/demo.py --dir $(DEMO_DIR)

test: setup
	$(PYTHON) -m pytest -q

lint: setup
	$(PYTHON) -m ruff check batchstore tests scripts perf
	$(PYTHON) -m mypy batchstore

perf: setup
	$(PYTHON) perf/run_all.py

clean:
	rm -rf $(DEMO_DIR) $(STAMP) perf/results .pytest_cache .mypy_cache .ruff_cache
