"""`python -m catdog.data check|download|prepare ...`: the verbs live in catdog.data_cli (the
package itself is the library, imported once)."""

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
from catdog.data_cli import run

run()
