#!/usr/bin/env bash
# Build one of ptqflow's container images from the repository root, with a Docker engine or, where none
# answers, with buildah (no daemon; chroot isolation, so no runc/crun either). `make image-cpu` calls this.
#
#   scripts/build_image.sh DEVICE [BUILD OPTION...]
#     DEVICE        cpu, gpu (or cuda) or npu: containers/<DEVICE>/Dockerfile
#     BUILD OPTION  passed on to `docker build` / `buildah bud`, e.g. --build-arg NPU_DRIVER_URL=
#
# Environment (all optional):
#   IMAGE         tag to build (default: python -m ptqflow.orchestration.images --device DEVICE)
#   BUILDER       docker or buildah (default: docker when `$DOCKER info` answers, else buildah)
#   DOCKER        the Docker client (default: docker)
#   PYTHON_IMAGE  base image, any whose `python` is CPython 3.11 (default: python:3.11-slim-trixie; when that
#                 cannot be pulled, localhost/ptqflow-base:bookworm, made once from Debian's mirror with
#                 mmdebstrap and kept; remove it to refresh)
#   CA_BUNDLE     PEM bundle the build trusts for TLS, as a build secret (default: the host's
#                 /etc/ssl/certs/ca-certificates.crt when present; set it empty to pass none)
#   PIP_CONF      pip.conf the build's pip reads, as a build secret: index-url, extra-index-url, ... (default:
#                 the host's /etc/pip.conf when present; set it empty to pass none)
#   DEBIAN_MIRROR mirror mmdebstrap uses for the fallback base (default: its own, deb.debian.org)
#   PYTHON        the Python that has ptqflow installed (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${1:?usage: scripts/build_image.sh cpu|gpu|npu [BUILD OPTION...]}
shift
[ "$DEVICE" = cuda ] && DEVICE=gpu
DOCKERFILE=containers/$DEVICE/Dockerfile
[ -f "$DOCKERFILE" ] || { echo "build_image.sh: no $DOCKERFILE (devices: cpu, gpu, npu)" >&2; exit 2; }
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
DOCKER=${DOCKER:-docker}
DEFAULT_BASE=docker.io/library/python:3.11-slim-trixie
FALLBACK_BASE=localhost/ptqflow-base:bookworm
VERSION=$("$PYTHON" -c 'import ptqflow; print(ptqflow.__version__)')
IMAGE=${IMAGE:-$("$PYTHON" -m ptqflow.orchestration.images --device "$DEVICE")}

if [ -z "${BUILDER:-}" ]; then
  if command -v "$DOCKER" >/dev/null && "$DOCKER" info >/dev/null 2>&1; then
    BUILDER=docker
  elif command -v buildah >/dev/null; then
    BUILDER=buildah
  else
    echo "build_image.sh: no Docker engine answers ($DOCKER info failed) and buildah is not installed;" \
         "on Debian: apt-get install podman buildah mmdebstrap" >&2
    exit 1
  fi
fi
case "$BUILDER" in
  docker) have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
          pull() { "$DOCKER" pull -q "$1" >/dev/null; }
          import_tar() { "$DOCKER" import "${@:3}" "$1" "$2" >/dev/null; } ;;
  buildah) have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }
           pull() { buildah pull -q "$1" >/dev/null; }
           import_tar() { podman import -q "${@:3}" "$1" "$2" >/dev/null; } ;;
  *) echo "build_image.sh: BUILDER=$BUILDER: expected docker or buildah" >&2; exit 2 ;;
esac

# The fallback base: Debian bookworm's CPython 3.11 (3.11.2) from Debian's mirror, imported as an image with the
# environment the python images set. Made under a lock so that parallel builds on one machine make it once.
fallback_base() {
  exec 9>"${TMPDIR:-/tmp}/ptqflow-base-image.lock"
  flock 9
  if ! have_image "$FALLBACK_BASE"; then
    command -v mmdebstrap >/dev/null || {
      echo "build_image.sh: $DEFAULT_BASE cannot be pulled and mmdebstrap is missing to make $FALLBACK_BASE" \
           "(apt-get install mmdebstrap podman)" >&2; return 1; }
    local tmp
    tmp=$(mktemp -d)
    echo "build_image.sh: $DEFAULT_BASE cannot be pulled; making $FALLBACK_BASE with mmdebstrap" >&2
    mmdebstrap --quiet --variant=apt --include=python3,python3-venv,python-is-python3,ca-certificates \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      bookworm "$tmp/base.tar" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"}
    import_tar "$tmp/base.tar" "$FALLBACK_BASE" \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]'
    rm -rf "$tmp"
  fi
  exec 9>&-
}

if [ -z "${PYTHON_IMAGE:-}" ]; then
  if have_image "$DEFAULT_BASE" || pull "$DEFAULT_BASE" 2>/dev/null; then
    PYTHON_IMAGE=$DEFAULT_BASE
  else
    fallback_base
    PYTHON_IMAGE=$FALLBACK_BASE
  fi
fi

args=(-f "$DOCKERFILE" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" --build-arg "PTQFLOW_VERSION=$VERSION" -t "$IMAGE")
CA_BUNDLE=${CA_BUNDLE-$([ -f /etc/ssl/certs/ca-certificates.crt ] && echo /etc/ssl/certs/ca-certificates.crt)}
PIP_CONF=${PIP_CONF-$([ -f /etc/pip.conf ] && echo /etc/pip.conf)}
[ -n "$CA_BUNDLE" ] && args+=(--secret "id=ca_bundle,src=$CA_BUNDLE")
[ -n "$PIP_CONF" ] && args+=(--secret "id=pip_conf,src=$PIP_CONF")
echo "build_image.sh: $BUILDER builds $IMAGE from $DOCKERFILE on $PYTHON_IMAGE" >&2
if [ "$BUILDER" = docker ]; then
  DOCKER_BUILDKIT=1 "$DOCKER" build "${args[@]}" "$@" .
else
  buildah bud --isolation chroot --layers=false "${args[@]}" "$@" .
fi
