"""Write a bundle's model card (``README.md``) from its ``model.json``.

    python scripts/model_card.py Resources/Models/kidney-demo [more bundles ...]   # writes <bundle>/README.md
    python scripts/model_card.py --check Resources/Models/*-demo                    # exit 1 if a card is stale

The card is generated so that it never disagrees with ``model.json``; edit the fields there (see
docs/model-bundles.md) and run this again. The card is not part of the bundle's SHA-256.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from DiffusionAnomalyLib.models.bundle import read_meta  # noqa: E402
from DiffusionAnomalyLib.models.modelcard import render  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", nargs="+")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when a card differs")
    args = p.parse_args(argv)
    stale = []
    for b in map(Path, args.bundles):
        text = render(read_meta(b))
        card = b / "README.md"
        if args.check:
            if not card.is_file() or card.read_text() != text:
                stale.append(str(card))
        else:
            card.write_text(text)
            print(f"wrote {card}")
    for c in stale:
        print(f"stale or missing: {c} (run scripts/model_card.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
