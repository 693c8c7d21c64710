# Sourced by the test and demo scripts (run from the repository root):
#   install_env VENV NAME PIP-INSTALL-ARGS...
# installs into VENV with the committed constraints scripts/constraints/NAME.txt, for the packages and for the
# setuptools that builds ptqflow, after bringing pip to the version pinned there. The constraints are resolved
# as of a recorded instant (`make locks`, containers/locks.py), so a release published later cannot change
# what a fresh machine installs.
install_env() {
  local venv=$1 constraints="scripts/constraints/$2.txt"
  shift 2
  if [ ! -f "$constraints" ]; then
    echo "install_env: no $constraints; expected one of: $(ls scripts/constraints)" >&2
    return 1
  fi
  local version
  version=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ "$version" != 3.11 ]; then
    echo "warning: $constraints was resolved for CPython 3.11; $venv runs Python $version" >&2
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$constraints" -U pip
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$constraints" \
    --build-constraint "$constraints" "$@"
}
