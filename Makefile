# The two commands: `make run` (the main job on its default data) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: run test lint clean fashion-mnist

# The tested versions (requirements.lock) as constraints on pyproject.toml's ranges: the same
# set on every machine, and a no-op apart from the editable build when .venv already has it.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c requirements.lock --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

# Debian's Fashion-MNIST (the default data); without it torchvision tries a download.
fashion-mnist:
	@test -f $(FMNIST) || (command -v apt-get >/dev/null && \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	     dataset-fashion-mnist) || echo "note: dataset-fashion-mnist not installed; torchvision will try to download")

test: $(STAMP) fashion-mnist
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check sfbd jobs tests tuning
	$(BIN)/ruff format --check sfbd jobs tests tuning

# The default job: SFBD on Fashion-MNIST on local Ray: every item observed noisy (tau = 0.59),
# pretrained on clothes without shoes and bags, 2 iterations and the clean-only baseline (about
# 20 minutes on 2 CPU cores, the classifier that scores it included). Rerunning resumes (or
# returns at once when finished): runs/fashion-mnist-cpu.
run: $(STAMP) fashion-mnist
	$(BIN)/python jobs/sfbd.py --config fashion-mnist-cpu $(ARGS)

clean:
	rm -rf $(VENV) runs
