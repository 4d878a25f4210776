# Set-up is part of every target: the first run creates .venv and installs qwen-edge with its test extra.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The main job on the built-in default (the `tiny` preset, random weights): export both formats,
# validate them against the reference, and generate with each backend.
DEMO := out/demo-bundle
demo: $(STAMP)
	$(BIN)/qwen-edge export tiny --out $(DEMO) --max-seq-len 256 --prefill-chunk 32 --force
	$(BIN)/qwen-edge validate $(DEMO) --backend all
	$(BIN)/qwen-edge run $(DEMO) --prompt-ids 1,2,3,4,5 --max-new-tokens 12 --backend pte
	$(BIN)/qwen-edge run $(DEMO) --prompt-ids 1,2,3,4,5 --max-new-tokens 12 --backend onnx
	$(BIN)/qwen-edge run $(DEMO) --prompt-ids 1,2,3,4,5 --max-new-tokens 12 --backend reference

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) build *.egg-info
