# Sourced by quickstart.sh and test.sh (run from the checkout's root). Nothing is ever installed
# into the system Python (Debian and Ubuntu refuse that: PEP 668, "externally-managed-
# environment"): gpunn goes into the virtual environment that is active ($VIRTUAL_ENV), else
# into .venv in the checkout, created on first use from $PYTHON or python3 and reused after.
# Needs only python3 >= 3.10 with its venv module (Debian/Ubuntu: apt-get install python3-venv).
#
#   gpunn_venv            sets PY (the environment's python) and puts its bin/ first on PATH
#   gpunn_install EXTRA   pip install -e ".[EXTRA]" (or "." for none) unless this pyproject.toml
#                         with this extra is already installed there (a stamp file says so)

gpunn_venv() {
  if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    PY="$VIRTUAL_ENV/bin/python"
    echo "gpunn: using the active virtual environment $VIRTUAL_ENV"
  else
    local base=${PYTHON:-python3}
    if ! command -v "$base" >/dev/null 2>&1; then
      echo "gpunn: needs Python >= 3.10: sudo apt-get install python3 python3-venv" >&2
      exit 1
    fi
    if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
      echo "gpunn: needs Python >= 3.10; $base is $("$base" -V 2>&1)" >&2
      exit 1
    fi
    if [ -e .venv ] && ! .venv/bin/python -c 'import pip' >/dev/null 2>&1; then
      echo "gpunn: .venv in $(pwd) is not a working virtual environment (no python or pip);" \
           "remove it (rm -rf .venv) and run this again" >&2
      exit 1
    fi
    if [ ! -e .venv ]; then
      echo "gpunn: creating the virtual environment .venv with $("$base" -V 2>&1)"
      if ! "$base" -m venv .venv >/dev/null 2>.venv-error; then
        cat .venv-error >&2
        rm -rf .venv .venv-error
        echo "gpunn: could not create .venv: install the venv module" \
             "(Debian/Ubuntu: sudo apt-get install python3-venv) and run this again" >&2
        exit 1
      fi
      rm -f .venv-error
    else
      echo "gpunn: reusing the virtual environment .venv"
    fi
    PY="$(pwd)/.venv/bin/python"
  fi
  PATH="$(dirname "$PY"):$PATH"
  export PATH
}

gpunn_install() {
  local extra=$1 spec=. stamp
  [ -n "$extra" ] && spec=".[$extra]"
  stamp="$("$PY" -c 'import sys; print(sys.prefix)')/.gpunn-installed${extra:+-$extra}"
  local want
  want="$(pwd) $(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && (cd / && "$PY" -c 'import gpunn') 2>/dev/null; then
    echo "gpunn: $spec is installed already"
    return
  fi
  echo "gpunn: installing $spec into $("$PY" -c 'import sys; print(sys.prefix)')"
  "$PY" -m pip install -q --disable-pip-version-check -e "$spec"
  echo "$want" > "$stamp"
}
