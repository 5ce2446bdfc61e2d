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

# Retrains the four shipped models (about 70 minutes on 2 CPU cores); see models/README.md.
train-all:
	scripts/train_all.sh $(DATA) models
