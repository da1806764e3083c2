"""``make screenshots``: refresh the README pictures in Resources/Screenshots/ from Testing/Artifacts/.

Tests and benchmarks write their pictures to Testing/Artifacts/ only (issue 12, item 11: ``make test`` and
``make bench`` never change tracked files). The Makefile target first runs what makes them, then this copies
each into place; a missing picture is reported and the rest are still copied.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "Testing" / "Artifacts"
SCREENSHOTS = REPO / "Resources" / "Screenshots"
# artifact -> README picture
PICTURES = {
    "xraysegsim_slice_view.png": "XraySegSim-slice-view.png",
    "xraysegsim_3d_view.png": "XraySegSim-3d-view.png",
    "xrayseginfer_slice_view.png": "XraySegInfer-slice-view.png",
    "xrayseginfer_chest_bundled.png": "XraySegInfer-chest.png",
    "physics.png": "physics.png",
}


def main() -> int:
    missing = []
    for artifact, picture in PICTURES.items():
        source = ARTIFACTS / artifact
        if not source.is_file():
            missing.append(artifact)
            continue
        shutil.copyfile(source, SCREENSHOTS / picture)
        print(f"{SCREENSHOTS.relative_to(REPO) / picture} <- {source.relative_to(REPO)}")
    for artifact in missing:
        print(f"missing {ARTIFACTS.relative_to(REPO) / artifact}: its README picture was left as it is",
              file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
