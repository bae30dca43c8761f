# The README's commands. `make test` and `make demo` set the environment up first if needed.
PY := .venv/bin/python
.PHONY: setup test test-fast lint demo demo-det demo-data clean

setup:
	bash tools/setup_env.sh

lint: setup
	$(PY) -m ruff check backbones configs tools tests

test: setup lint
	$(PY) -m pytest tests -q

test-fast: setup lint
	$(PY) -m pytest tests -q -m "not slow"

demo: setup
	$(PY) tools/demo.py seg

demo-det: setup
	$(PY) tools/demo.py det

demo-data: setup
	$(PY) tools/make_demo_data.py

clean:
	rm -rf work_dirs/* .pytest_cache .ruff_cache
