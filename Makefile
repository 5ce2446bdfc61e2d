.PHONY: install serve test lint train-all
DATA ?= ../shared/datasets

install:
	python -m pip install -e ".[dev]"

serve:
	python -m service --host 0.0.0.0 --port 8000

test:
	python -m pytest -q

lint:
	ruff check . && ruff format --check .

# Retrains the shipped models (about 2.5 hours on 2 CPU cores, from the cards' wall times); see models/README.md.
train-all:
	scripts/train_all.sh $(DATA) models
