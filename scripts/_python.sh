# Sourced by the scripts here: PY, the Python to use ($PYTHON, else .venv/bin/python when present, else python3),
# and da, the command line run from this checkout (da ARGS = python -m DiffusionAnomalyLib ARGS). Run from the
# repository root.
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
da() { PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m DiffusionAnomalyLib "$@"; }
