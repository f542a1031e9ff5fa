# The two commands: `make demo` runs the hub on a local control plane; `make test` runs the tests.
# `make screenshots` refreshes docs/screenshots/ from the browser tests (tests write theirs to
# the ignored test-artifacts/).
.PHONY: setup test test-floors lint format demo screenshots

setup:
	scripts/setup.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

test: setup lint test-floors
	.venv/bin/python -m pytest -p no:cacheprovider

# The declared lower bounds of the runtime requirements, installed into .venv-floors: the unit
# tier and the spawner's hub tests against them (scripts/test-floors.sh).
test-floors: setup
	scripts/test-floors.sh

screenshots: setup
	AICOE_SCREENSHOTS_DIR=docs/screenshots .venv/bin/python -m pytest -p no:cacheprovider \
		tests/integration/test_form_browser.py tests/integration/test_builder_page.py

demo: setup
	.venv/bin/python -m aicoe_devcluster.demo
