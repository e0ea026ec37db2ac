"""Print one of README.md's install recipes: the ```bash block that follows the line `<!-- recipe: NAME -->`.

    python3 .ci/recipe.py cpu|gpu|neuralop

.ci/run builds its environments by running these blocks, so CI installs exactly what README.md tells a user
(tests/test_readme.py checks what each recipe holds). Standard library only: it runs before any venv exists.
"""

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def recipes(text: str) -> dict[str, str]:
    """{name: the bash code of its block} for every `<!-- recipe: NAME -->` in `text`."""
    return dict(re.findall(r"^<!-- recipe: (\S+) -->\n```bash\n(.*?)^```", text, flags=re.S | re.M))


if __name__ == "__main__":
    found = recipes(README.read_text())
    if len(sys.argv) != 2 or sys.argv[1] not in found:
        sys.exit(f"usage: python3 .ci/recipe.py {'|'.join(found)}")
    sys.stdout.write(found[sys.argv[1]])
