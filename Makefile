# The two commands: `make run` (the main job on its default data) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check sfbd jobs tests
	$(BIN)/ruff format --check sfbd jobs tests

# Until the Ray loop lands, `make run` prepares the default data set (Fashion-MNIST, 4% clean,
# tau = 0.59) into runs/default/data and prints its manifest.
run: $(STAMP)
	$(BIN)/python jobs/prepare_data.py --dataset fashion-mnist --clean-fraction 0.04 \
	    --sigma 0.59 --seed 0 --out runs/default/data

clean:
	rm -rf $(VENV) runs
