# A fresh machine needs two commands (README): `make demo` runs the main job, `make test` the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= kyutai/moshiko-pytorch-bf16

.PHONY: setup reference test test-all demo clean

## setup: create .venv with torch 2.13.0 and antiphon (editable, with test extras); reruns only when pyproject.toml changes
setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[test]'
	touch $@

## reference: install the reference implementation (moshi), the oracle of the parity tests
reference: $(VENV)/.reference-done

$(VENV)/.reference-done: $(VENV)/.setup-done
	$(BIN)/pip install --no-deps moshi==0.2.13 einops sentencepiece
	touch $@

## test: the default suite, parity tests against the reference included
test: setup reference
	$(BIN)/python -m pytest -q

## test-all: every test, the slow ones included
test-all: setup reference
	$(BIN)/python -m pytest -q -m ''

## demo: a codec round trip of the bundled sample (MODEL=repo-id-or-path)
demo: setup
	$(BIN)/antiphon codec roundtrip demos/sample.wav sample-roundtrip.wav --model $(MODEL)

clean:
	rm -rf $(VENV) sample-roundtrip.wav
