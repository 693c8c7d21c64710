# Container images, their lock files and the test environments' constraints. Image names and tags come from
# ptqflow.orchestration.images (tag = package version), the same place the Airflow DAG and the KFP components take them from.
#   make images         build the cpu, gpu (CUDA) and npu images with scripts/build_image.sh: a Docker engine with
#                       BuildKit, or buildah where none answers (BUILDER=docker|buildah to choose); its header lists
#                       the rest (PYTHON_IMAGE, CA_BUNDLE, PIP_CONF; BUILD_OPTS go to the builder, e.g.
#                       BUILD_OPTS="--build-arg NPU_DRIVER_URL=")
#   make image-gpu      build one of them
#   make locks          re-resolve containers/*/requirements.lock and scripts/constraints/*.txt from pyproject.toml,
#                       each as of the instant it records and keeping its pins where they still fit (needs uv and
#                       the index)
#   make upgrade-locks  resolve them all from scratch as of now (takes newer releases)
#   make check-locks    fail if a file no longer matches pyproject.toml or was edited by hand; list newer releases
#                       on the index (never a failure)
#   make lint           hadolint on the Dockerfiles
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
DOCKER ?= docker
BUILDER ?=
BUILD_OPTS ?=
HADOLINT ?= $(if $(wildcard .venv/bin/hadolint),.venv/bin/hadolint,hadolint)
IMAGES := cpu gpu npu

.PHONY: images $(addprefix image-,$(IMAGES)) locks upgrade-locks check-locks lint

images: $(addprefix image-,$(IMAGES))

$(addprefix image-,$(IMAGES)): image-%: containers/%/Dockerfile containers/%/requirements.lock
	IMAGE="$$($(PYTHON) -m ptqflow.orchestration.images --device $*)" PYTHON="$(PYTHON)" DOCKER="$(DOCKER)" \
		BUILDER="$(BUILDER)" scripts/build_image.sh $* $(BUILD_OPTS)

locks:
	$(PYTHON) containers/locks.py compile

upgrade-locks:
	$(PYTHON) containers/locks.py compile --upgrade

check-locks:
	$(PYTHON) containers/locks.py check

lint:
	$(HADOLINT) containers/*/Dockerfile
