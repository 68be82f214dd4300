# The two commands of the README.  Both do all the set-up they need on a fresh
# Debian 12 machine (as root): packages, a virtualenv, the Zabbix caches.
VENV ?= .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test lint bench

setup:
	bash scripts/setup-debian.sh $(VENV)

demo: setup
	python3 -m devtools.demo

lint: setup
	ruff check .
	mypy -p trapline -p devtools -p bench

test: lint
	python -m pytest -q --durations=20

bench: setup
	sh bench/run_all.sh
