# The two commands: `make demo` runs the hub on a local control plane; `make test` runs the tests.
.PHONY: setup test lint format demo

setup:
	scripts/setup.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

test: setup lint
	.venv/bin/python -m pytest -p no:cacheprovider

demo: setup
	.venv/bin/python -m aicoe_spawner.demo
