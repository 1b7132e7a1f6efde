# A fresh machine needs two commands (README): `make serve` runs the main job, `make test` the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= embedded:stt

.PHONY: system setup reference test test-all serve demo models clean

## system: the Debian packages the synthetic-data tests and `antiphon talk` use (train/apt-packages.txt,
## libportaudio2), installed with apt-get when missing; without apt-get or root, a warning (their tests skip)
system:
	@missing=$$(for p in $$(cat train/apt-packages.txt) libportaudio2; do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "installing $$missing"; \
		( $$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$missing >/dev/null ) \
			|| echo "warning: could not install $$missing; the tests that need them skip"; \
	fi

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
test: system setup reference
	$(BIN)/python -m pytest -q

## test-all: every test, the slow ones included
test-all: system setup reference
	$(BIN)/python -m pytest -q -m ''

## serve: the main job: the WebSocket server on the embedded speech-to-text model (MODEL=repo-id-or-path for another)
serve: setup
	$(BIN)/antiphon serve --model $(MODEL)

## demo: the embedded models at work: speak a question, transcribe it, a codec round trip of the bundled sample, translate the question,
## and talk to the dialogue model through a server with the sample as the voice (demo-answer.wav)
demo: setup
	$(BIN)/antiphon speak "What is the capital of Italy?" -o demo-question.wav
	$(BIN)/antiphon transcribe demo-question.wav
	$(BIN)/antiphon codec roundtrip demos/sample.wav sample-roundtrip.wav
	$(BIN)/antiphon translate demo-question.wav -o demo-question-fr.wav
	@$(BIN)/antiphon serve --model embedded:dialogue --port 8999 & server=$$!; \
	until $(BIN)/python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8999/api/health')" 2>/dev/null; do \
		kill -0 $$server 2>/dev/null || exit 1; sleep 0.5; done; \
	$(BIN)/antiphon talk --url ws://127.0.0.1:8999 --input demos/sample.wav --output demo-answer.wav; status=$$?; \
	kill $$server; exit $$status

## models: retrain the embedded models from scratch with the recipe (hours on 2 CPU cores; resumable: run again after a stop)
models: system setup
	PATH=$(BIN):$$PATH train/make_models.sh data runs

clean:
	rm -rf $(VENV) sample-roundtrip.wav demo-question.wav
