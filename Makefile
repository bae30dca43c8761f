# The README's commands. `make test` and `make demo` set the environment up first if needed.
PY := .venv/bin/python
COMPAT_PY := .venv-compat/bin/python
# pytest-xdist workers of `make test` (each takes its share of the cores: tests/conftest.py)
TEST_WORKERS ?= 2
# what `make test-compat` runs on the older stack: install, backbone, loading, configs, runs
COMPAT_TESTS := tests/test_install.py tests/test_inception_next.py tests/test_checkpoint.py \
	tests/test_configs.py tests/test_guest.py tests/test_runner_e2e.py
.PHONY: setup setup-compat test test-fast test-long test-compat lint demo demo-det demo-data clean \
	wheelhouse wheelhouse-check gpu-check gpu-check-dry

setup:
	bash scripts/setup_env.sh

setup-compat:
	VENV=.venv-compat LOCK=requirements/compat.txt EXTRAS=mmdet,mmseg,dev bash scripts/setup_env.sh

lint: setup
	$(PY) -m ruff check backbones configs tools scripts tests

test: setup lint
	$(PY) -m pytest tests -q -n $(TEST_WORKERS) --dist loadfile --durations=15

test-fast: setup lint
	$(PY) -m pytest tests -q -m "not slow"

# the property tests' many-example runs (tests marked long; make test runs their seeded short form)
test-long: setup
	$(PY) -m pytest tests -q -m long -n $(TEST_WORKERS) --dist loadfile

test-compat: setup-compat
	$(COMPAT_PY) -m pytest $(COMPAT_TESTS) -q

demo: setup
	$(PY) tools/demo.py seg

demo-det: setup
	$(PY) tools/demo.py det

demo-data: setup
	$(PY) tools/make_demo_data.py

# Air-gapped machines (README: "Wheelhouse and GPU check"). PYTHON, TORCH, TARGET, OUT, WITH_TORCH
# and MMCV given to make reach scripts/wheelhouse.sh.
wheelhouse:
	bash scripts/wheelhouse.sh

wheelhouse-check: wheelhouse
	bash scripts/wheelhouse_check.sh

gpu-check:
	bash scripts/gpu_check.sh

gpu-check-dry: setup
	PYTHON=$(PY) bash scripts/gpu_check.sh --device cpu --no-install --out work_dirs/gpu_check_cpu

clean:
	rm -rf work_dirs/* .pytest_cache .ruff_cache
