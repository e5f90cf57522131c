"""``python -m stabcheck``: the same as the ``stabcheck`` command."""

from stabcheck.cli import main

if __name__ == "__main__":
    main()
