"""``python -m bastion.cli``: the ``bastion`` command."""

from bastion.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
