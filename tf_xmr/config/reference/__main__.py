"""``python -m tf_xmr.config.reference``: print the README's config reference, or rewrite / check the copies in
README.md and docs/config.md (see :mod:`tf_xmr.config.reference`)."""

from __future__ import annotations

import argparse
import sys

from tf_xmr.cli import run
from tf_xmr.config import reference


def method_config_classes() -> dict[str, type]:
    """Registered method name -> its config dataclass (the ``model:`` section), in name order."""
    from tf_xmr.methods.registry import get_method, registered_methods

    return {name: get_method(name).config_class for name in registered_methods()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tf_xmr.config.reference",
                                     description=reference.__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="update README.md and docs/config.md in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if README.md or docs/config.md is out of date")
    parser.add_argument("--root", default=".", help="repository root (default: the working directory)")
    args = parser.parse_args(argv)
    if args.check:
        stale = reference.stale_files(args.root, method_config_classes())
        for path in stale:
            print(f"{path} differs from the generated config reference; run python -m tf_xmr.config.reference "
                  "--write", file=sys.stderr)
        return 1 if stale else 0
    if args.write:
        for path in reference.write_files(args.root, method_config_classes()):
            print(f"wrote {path}")
        return 0
    sys.stdout.write(reference.readme_block())
    return 0


if __name__ == "__main__":
    run(main)
