# Two entry points for a fresh machine: `make demo` and `make test`.
# Both install what they need (Debian packages when run as root, then a venv).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_STAMP := .system-deps.stamp
DEMO_DIR ?= demo_output
HEADLESS ?=

DEBIAN_PACKAGES := relion ghostscript xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 \
	libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
	libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 \
	libfontconfig1 libdbus-1-3

.PHONY: all system-deps venv lint test demo bench clean

all: test

system-deps: $(SYSTEM_STAMP)

$(SYSTEM_STAMP):
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != "0" ]; then \
			echo "missing Debian packages (run as root or install them): $$missing" >&2; exit 1; \
		fi; \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	@touch $@

# ruff's rules, line length and format: [tool.ruff] in pyproject.toml
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: system-deps venv lint
	$(BIN)/python -m pytest tests

demo: system-deps venv
	$(BIN)/napari-dynamight demo --output-directory $(DEMO_DIR) $(if $(HEADLESS),--headless,)

bench: system-deps venv
	$(BIN)/python bench/bench_projection.py --output bench/results/projection.json
	$(BIN)/python bench/bench_training.py --output bench/results/training.json
	xvfb-run -a $(BIN)/python bench/bench_explorer.py --output bench/results/explorer.json

clean:
	rm -rf $(VENV) $(SYSTEM_STAMP) $(DEMO_DIR) build dist
