"""The static kernel report (sacd_fast.kernels.report), written to disk; no GPU needed.

    python bench/kernel_report.py [OUTPUT_DIR] [--no-compile]

Writes OUTPUT_DIR/kernel_report.json and kernel_report.md (default
bench/results) and prints the Markdown. The sm_90 compilation of every
autotuning config takes a few minutes on two cores; ``--no-compile`` leaves
the register, spill, shared-memory and occupancy columns out. Run it without
TRITON_INTERPRET. ``sacd-fast profile --kernels`` prints the same report.
"""

import argparse
import json
from pathlib import Path

from sacd_fast.kernels import report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--no-compile", action="store_true", help="skip the sm_90 compilation")
    args = parser.parse_args()
    data = report.build(compile=not args.no_compile)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernel_report.json").write_text(json.dumps(data, indent=1) + "\n")
    text = report.markdown(data)
    (out / "kernel_report.md").write_text(text + "\n")
    print(text)
    print(f"wrote {out / 'kernel_report.json'} and {out / 'kernel_report.md'}")


if __name__ == "__main__":
    main()
