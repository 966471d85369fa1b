# Sourced by scripts/setup.sh and scripts/test.sh: sets PY, the interpreter tinyclap is installed into and run
# with, by one rule:
#   1. PYTHON=/path/to/python if given (used as it is);
#   2. else the active virtual environment's python (VIRTUAL_ENV, or a conda environment's CONDA_PREFIX);
#   3. else the project's own `.venv` at the repository root, made here when missing (`python3 -m venv
#      --system-site-packages`): a stock Debian/Ubuntu python refuses `pip install` outside a virtual
#      environment (PEP 668, "externally-managed-environment"). The system packages stay visible so that a
#      torch installed beforehand (a CUDA build) is kept and pip installs only what is missing; whatever pip
#      installs goes into .venv, never into the system. Activate it with `source .venv/bin/activate`.
# Expects the current folder to be the repository root.
if [[ -n "${PYTHON:-}" ]]; then
  PY=$PYTHON
elif [[ -n "${VIRTUAL_ENV:-}" && -x "${VIRTUAL_ENV}/bin/python" ]]; then
  PY="$VIRTUAL_ENV/bin/python"
elif [[ -n "${CONDA_PREFIX:-}" && -x "${CONDA_PREFIX}/bin/python" ]]; then
  PY="$CONDA_PREFIX/bin/python"
else
  if [[ ! -x .venv/bin/python ]]; then
    base=$(command -v python3 || true)
    [[ -n "$base" ]] || { echo "setup: no python3 found (install Python >= 3.10)" >&2; exit 1; }
    echo "setup: making the project's virtual environment .venv (from $base)" >&2
    existed=$([[ -e .venv ]] && echo 1 || true)
    if ! "$base" -m venv --system-site-packages .venv; then
      [[ -n "$existed" ]] || rm -rf .venv  # only what this run made (Debian without python3-venv half-makes it)
      echo "setup: cannot make .venv with $base -m venv; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2
      exit 1
    fi
  fi
  # a .venv made by another tool (uv) may lack pip: add it rather than replace the environment
  .venv/bin/python -m pip --version >/dev/null 2>&1 || .venv/bin/python -m ensurepip -q \
    || { echo "setup: .venv has no pip and ensurepip failed; remove .venv to start again" >&2; exit 1; }
  PY="$PWD/.venv/bin/python"
fi
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
  || { echo "setup: $PY is not Python >= 3.10" >&2; exit 1; }
