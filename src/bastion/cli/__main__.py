"""``python -m bastion.cli``: the ``bastion`` command."""

from bastion.cli import main

raise SystemExit(main())
